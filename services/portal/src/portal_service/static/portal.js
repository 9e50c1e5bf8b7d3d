// The customer portal's only script (CSP: script-src 'self'). Without it every form still works
// as a plain form post; with it the upload shows progress and the server's message.
"use strict";

(function () {
  function problemText(xhr) {
    try {
      const body = JSON.parse(xhr.responseText);
      if (body && (body.detail || body.title)) {
        return body.detail || body.title;
      }
    } catch (e) {
      /* not JSON */
    }
    return "The upload failed (HTTP " + xhr.status + ").";
  }

  function setupUpload(form) {
    const input = form.querySelector("input[type=file]");
    const button = form.querySelector("button[type=submit]");
    const progress = document.getElementById("upload-progress");
    const status = document.getElementById("upload-status");
    const error = document.getElementById("upload-error");
    const csrf = form.querySelector("input[name=csrf]").value;

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!input.files.length) {
        return;
      }
      error.hidden = true;
      status.hidden = false;
      status.textContent = "Uploading and checking for viruses …";
      progress.hidden = false;
      progress.value = 0;
      button.disabled = true;

      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          progress.value = Math.round((e.loaded / e.total) * 100);
        }
      });
      xhr.addEventListener("load", function () {
        button.disabled = false;
        progress.hidden = true;
        if (xhr.status === 201) {
          const files = JSON.parse(xhr.responseText).files;
          const url = new URL(window.location.href);
          url.searchParams.set("uploaded", String(files.length));
          window.location.replace(url.toString());
          return;
        }
        status.hidden = true;
        error.hidden = false;
        error.textContent = problemText(xhr);
      });
      xhr.addEventListener("error", function () {
        button.disabled = false;
        progress.hidden = true;
        status.hidden = true;
        error.hidden = false;
        error.textContent = "The connection failed during the upload. Please try again.";
      });
      xhr.send(new FormData(form));
    });
  }

  function setupPasswordForm(form) {
    const first = document.getElementById("password");
    const second = document.getElementById("password_confirm");
    const warning = document.getElementById("password-mismatch");
    form.addEventListener("submit", function (event) {
      if (first.value !== second.value) {
        event.preventDefault();
        warning.hidden = false;
        second.focus();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const upload = document.getElementById("upload-form");
    if (upload) {
      setupUpload(upload);
    }
    const password = document.getElementById("password-form");
    if (password) {
      setupPasswordForm(password);
    }
  });
})();
