// edumesh ops dashboard (/admin). Plain JavaScript, no build step, no third-party code.
//
// Reads go to the gateway's fan-out endpoints (/admin/api/tasks, /admin/api/executions);
// execution details, record logs and every action (run now, retry failed, cancel, pause) go
// through the ordinary proxy to /api/<service>/tasks/..., so each service checks the caller's
// roles itself. The bearer token lives in sessionStorage of this tab only and is sent only to
// this origin. All text is inserted with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "edumesh.admin.token";
  const REFRESH_MS = 5000;
  const ITEMS_PAGE = 100;
  const FINAL = new Set(["succeeded", "partially_succeeded", "failed", "cancelled"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    overview: null,
    detail: null, // {service, id, execution, items, outcome, more}
    refreshing: null,
    timer: null,
  };

  // ------------------------------------------------------------------ helpers

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const enc = encodeURIComponent;
  const words = (status) => String(status || "").replace(/_/g, " ");
  const relFormat = new Intl.RelativeTimeFormat("en", { numeric: "auto" });

  function relative(iso) {
    if (!iso) return "";
    const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    if (abs < 60) return relFormat.format(seconds, "second");
    if (abs < 3600) return relFormat.format(Math.round(seconds / 60), "minute");
    if (abs < 86400) return relFormat.format(Math.round(seconds / 3600), "hour");
    return relFormat.format(Math.round(seconds / 86400), "day");
  }

  function absolute(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function time(iso) {
    if (!iso) return h("span", { class: "muted" }, "—");
    return h("time", { datetime: iso, title: absolute(iso) }, relative(iso));
  }

  function duration(startIso, endIso) {
    if (!startIso) return "";
    const end = endIso ? new Date(endIso).getTime() : Date.now();
    const ms = Math.max(0, end - new Date(startIso).getTime());
    if (ms < 1000) return `${ms} ms`;
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function every(seconds) {
    const s = Number(seconds);
    if (!Number.isFinite(s)) return `every ${seconds}`;
    if (s % 86400 === 0) return `every ${s / 86400} d`;
    if (s % 3600 === 0) return `every ${s / 3600} h`;
    if (s % 60 === 0) return `every ${s / 60} min`;
    return `every ${s} s`;
  }

  function badge(status, extraClass) {
    return h("span", { class: `badge st-${status} ${extraClass || ""}`.trim() }, words(status));
  }

  function claimsOf(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
    } catch {
      return null;
    }
  }

  // ------------------------------------------------------------------ HTTP

  class ApiError extends Error {
    constructor(status, problem, requestId) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
      this.requestId = requestId;
    }
  }

  async function api(method, url, body) {
    const headers = { Accept: "application/json, application/problem+json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, { title: "Network error", detail: `The gateway could not be reached (${err.message}).` }, null);
    }
    const requestId = response.headers.get("x-request-id");
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const problem = data && typeof data === "object" && !Array.isArray(data)
        ? data
        : { title: response.statusText || "Error", detail: text.slice(0, 300) };
      throw new ApiError(response.status, problem, requestId);
    }
    return data;
  }

  // ------------------------------------------------------------------ messages

  function showError(err, doing) {
    const box = $("error");
    box.replaceChildren();
    const problem = err instanceof ApiError ? err.problem : { title: "Error", detail: String(err) };
    const status = err instanceof ApiError && err.status ? ` (HTTP ${err.status})` : "";
    box.append(
      h("p", { class: "error-title" }, `Could not ${doing}: ${problem.title || "Error"}${status}`),
      problem.detail ? h("p", {}, problem.detail) : null,
    );
    const meta = [];
    if (problem.code) meta.push(`code ${problem.code}`);
    const rid = (err instanceof ApiError && err.requestId) || problem.request_id;
    if (rid) meta.push(`request id ${rid}`);
    if (meta.length) box.append(h("p", { class: "muted" }, meta.join(" · ")));
    if (Array.isArray(problem.errors)) {
      box.append(h("ul", {}, problem.errors.slice(0, 5).map((e) => h("li", {}, JSON.stringify(e)))));
    }
    box.append(h("button", { type: "button", class: "secondary", onclick: clearError }, "Dismiss"));
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").replaceChildren();
  }

  function announce(text) {
    $("status").textContent = text;
  }

  // Re-rendering replaces buttons; keep keyboard focus on the "same" button afterwards.
  function focusKey() {
    const el = document.activeElement;
    return el && el.dataset ? el.dataset.focus : undefined;
  }

  function restoreFocus(key) {
    if (!key) return;
    const el = document.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (el && document.activeElement !== el) el.focus();
  }

  // ------------------------------------------------------------------ session

  function takeTokenFromFragment() {
    if (!location.hash || location.hash.length < 2) return;
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("token")) return;
    const token = (params.get("token") || "").trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    // Once only: drop the token from the address bar and the history entry.
    history.replaceState(null, "", location.pathname + location.search);
  }

  function showSignIn(message) {
    stopTimer();
    $("dashboard").hidden = true;
    $("session-bar").hidden = true;
    $("sign-in").hidden = false;
    if (message) announce(message);
    $("token-input").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.overview = null;
    state.detail = null;
    $("detail").hidden = true;
    $("columns").classList.remove("with-detail");
    $("token-input").value = "";
    showSignIn(message || "Signed out.");
  }

  function signIn(token) {
    const claims = claimsOf(token);
    if (claims && typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("That token has expired; paste a fresh one.");
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    const roles = claims && Array.isArray(claims.roles) ? claims.roles.join(", ") : "";
    $("who").textContent = claims && claims.sub ? `Signed in as ${claims.sub}${roles ? ` (${roles})` : ""}` : "Signed in";
    $("sign-in").hidden = true;
    $("dashboard").hidden = false;
    $("session-bar").hidden = false;
    clearError();
    refreshAll().then(() => startTimer());
  }

  // Any 401 means the token is gone or bad: back to the sign-in form with the reason.
  function handle(err, doing) {
    if (err instanceof ApiError && err.status === 401) {
      signOut();
      showError(err, doing);
      return;
    }
    showError(err, doing);
  }

  // ------------------------------------------------------------------ tasks

  async function loadTasks() {
    const overview = await api("GET", "/admin/api/tasks");
    state.overview = overview;
    renderTasks(overview);
    renderTaskFilter();
  }

  function scheduleText(task) {
    if (!task.schedule) return "manual only";
    if (task.schedule.type === "interval") return every(task.schedule.value);
    return `cron ${task.schedule.value}`;
  }

  function nextDue(task) {
    if (!task.schedule) return h("span", { class: "muted" }, "—");
    if (!task.enabled) return h("span", { class: "badge st-paused" }, "paused");
    if (!task.next_run_at) return h("span", { class: "muted" }, "—");
    if (new Date(task.next_run_at).getTime() <= Date.now()) {
      return h("time", { datetime: task.next_run_at, title: absolute(task.next_run_at) }, "due now");
    }
    return time(task.next_run_at);
  }

  function lastRun(service, task) {
    const last = task.last_execution;
    if (!last) return h("span", { class: "muted" }, "never");
    return h(
      "span",
      { class: "last-run" },
      badge(last.status),
      " ",
      h(
        "button",
        {
          type: "button",
          class: "link",
          dataset: { focus: `last:${service}:${task.name}` },
          "aria-label": `Open the last execution of ${task.name}`,
          onclick: () => openDetail(service, last.id, true),
        },
        relative(last.started_at),
      ),
    );
  }

  function taskRow(service, task) {
    const label = `${task.name} on ${service}`;
    // The lease that makes a task "running" is released just after its execution ends; trust
    // the newest execution when there is one.
    const last = task.last_execution;
    const running = last ? task.running && last.status === "running" : task.running;
    return h(
      "tr",
      {},
      h(
        "th",
        { scope: "row" },
        h("span", { class: "task-name" }, task.name),
        running ? [" ", badge("running")] : null,
        task.description ? h("span", { class: "description" }, task.description) : null,
      ),
      h("td", {}, scheduleText(task)),
      h("td", {}, lastRun(service, task)),
      h("td", {}, nextDue(task)),
      h(
        "td",
        { class: "row-actions" },
        h(
          "button",
          {
            type: "button",
            dataset: { focus: `run:${service}:${task.name}` },
            "aria-label": `Run ${label} now`,
            disabled: running,
            onclick: (ev) => runTask(service, task.name, false, ev.currentTarget),
          },
          "Run now",
        ),
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            dataset: { focus: `dry:${service}:${task.name}` },
            "aria-label": `Dry run of ${label}`,
            disabled: running,
            onclick: (ev) => runTask(service, task.name, true, ev.currentTarget),
          },
          "Dry run",
        ),
        task.schedule
          ? h(
              "button",
              {
                type: "button",
                class: "secondary",
                dataset: { focus: `pause:${service}:${task.name}` },
                "aria-label": `${task.enabled ? "Pause" : "Resume"} the schedule of ${label}`,
                onclick: (ev) => setEnabled(service, task.name, !task.enabled, ev.currentTarget),
              },
              task.enabled ? "Pause" : "Resume",
            )
          : null,
      ),
    );
  }

  function serviceCard(report) {
    const id = `svc-${report.service}`;
    const head = h("h3", { id }, report.service, " ", badge(report.status === "ok" ? "reachable" : report.status));
    if (report.status !== "ok") {
      const why = [report.detail || words(report.status)];
      if (report.http) why.push(`HTTP ${report.http}`);
      if (report.code) why.push(`code ${report.code}`);
      return h("article", { class: `service service-${report.status}`, "aria-labelledby": id }, head, h("p", { class: "state-msg" }, why.join(" · ")));
    }
    if (!report.tasks.length) {
      return h("article", { class: "service", "aria-labelledby": id }, head, h("p", { class: "muted" }, "No tasks."));
    }
    return h(
      "article",
      { class: "service", "aria-labelledby": id },
      head,
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "tasks" },
          h("caption", { class: "visually-hidden" }, `Tasks of ${report.service}`),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "col" }, "Task"),
              h("th", { scope: "col" }, "Schedule"),
              h("th", { scope: "col" }, "Last execution"),
              h("th", { scope: "col" }, "Next due"),
              h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
            ),
          ),
          h("tbody", {}, report.tasks.map((t) => taskRow(report.service, t))),
        ),
      ),
    );
  }

  function renderTasks(overview) {
    const key = focusKey();
    const container = $("services");
    const withTasks = overview.services.filter((s) => s.status !== "no-tasks");
    const without = overview.services.filter((s) => s.status === "no-tasks").map((s) => s.service);
    container.replaceChildren(
      ...withTasks.map(serviceCard),
      without.length ? h("p", { class: "muted no-tasks" }, `Without a task API: ${without.join(", ")}`) : "",
    );
    if (!withTasks.length) container.prepend(h("p", { class: "muted" }, "No service offers tasks."));
    container.setAttribute("aria-busy", "false");
    $("tasks-updated").textContent = `Updated ${new Date(overview.generated_at).toLocaleTimeString()}`;
    restoreFocus(key);
  }

  function renderTaskFilter() {
    const services = state.overview ? state.overview.services : [];
    const svcSelect = $("filter-service");
    const wantedSvc = svcSelect.value;
    const svcNames = services.map((s) => s.service);
    svcSelect.replaceChildren(
      h("option", { value: "" }, "All services"),
      ...svcNames.map((n) => h("option", { value: n }, n)),
    );
    svcSelect.value = svcNames.includes(wantedSvc) ? wantedSvc : "";

    const taskSelect = $("filter-task");
    const wantedTask = taskSelect.value;
    const names = new Set();
    for (const s of services) {
      if (svcSelect.value && s.service !== svcSelect.value) continue;
      for (const t of s.tasks || []) names.add(t.name);
    }
    const sorted = [...names].sort();
    taskSelect.replaceChildren(
      h("option", { value: "" }, "All tasks"),
      ...sorted.map((n) => h("option", { value: n }, n)),
    );
    taskSelect.value = sorted.includes(wantedTask) ? wantedTask : "";
  }

  async function runTask(service, task, dryRun, button) {
    button.disabled = true;
    try {
      const res = await api("POST", `/api/${enc(service)}/tasks/${enc(task)}/run`, { params: {}, dry_run: dryRun });
      announce(`Started ${dryRun ? "a dry run of " : ""}${task} on ${service}: execution ${res.execution_id}.`);
      clearError();
      await openDetail(service, res.execution_id, false);
      await refreshAll();
    } catch (err) {
      handle(err, `run ${task} on ${service}`);
    } finally {
      button.disabled = false;
    }
  }

  async function setEnabled(service, task, enabled, button) {
    button.disabled = true;
    try {
      await api("PATCH", `/api/${enc(service)}/tasks/${enc(task)}`, { enabled });
      announce(`${enabled ? "Resumed" : "Paused"} the schedule of ${task} on ${service}.`);
      clearError();
      await refreshAll();
    } catch (err) {
      handle(err, `${enabled ? "resume" : "pause"} ${task} on ${service}`);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ executions

  async function loadExecutions() {
    const query = new URLSearchParams({ limit: "50" });
    const service = $("filter-service").value;
    const task = $("filter-task").value;
    const status = $("filter-status").value;
    if (service) query.set("service", service);
    if (task) query.set("task", task);
    if (status) query.set("status", status);
    const page = await api("GET", `/admin/api/executions?${query}`);
    renderExecutions(page);
  }

  function renderExecutions(page) {
    const key = focusKey();
    const selected = state.detail ? `${state.detail.service}/${state.detail.id}` : null;
    const rows = page.executions.map((e) => {
      const counts = e.counts || {};
      const current = selected === `${e.service}/${e.id}`;
      return h(
        "tr",
        { class: current ? "selected" : null, "aria-current": current ? "true" : null, dataset: { execution: e.id } },
        h("td", { class: "nowrap" }, time(e.started_at)),
        h("td", {}, h("span", { class: "task-name" }, e.task), h("span", { class: "description" }, e.service)),
        h(
          "td",
          {},
          badge(e.status),
          e.cancel_requested && e.status === "running" ? " cancelling" : null,
          h("span", { class: "description" }, e.trigger, e.dry_run ? [" ", h("span", { class: "tag" }, "dry run")] : null),
        ),
        h(
          "td",
          { class: "num" },
          String(counts.processed ?? 0),
          counts.failed ? h("span", { class: "description bad" }, `${counts.failed} failed`) : null,
        ),
        h("td", { class: "nowrap" }, duration(e.started_at, e.finished_at)),
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              class: "secondary",
              dataset: { focus: `details:${e.service}:${e.id}` },
              "aria-label": `Details of execution ${e.id} (${e.task} on ${e.service})`,
              onclick: () => openDetail(e.service, e.id, true),
            },
            "Details",
          ),
        ),
      );
    });
    $("executions").tBodies[0].replaceChildren(...rows);
    $("executions-empty").hidden = rows.length > 0;
    const down = page.services.filter((s) => s.status !== "ok" && s.status !== "no-tasks");
    $("executions-services").textContent = down.length
      ? `Not included: ${down.map((s) => `${s.service} (${words(s.status)})`).join(", ")}`
      : "";
    restoreFocus(key);
  }

  // ------------------------------------------------------------------ execution detail

  async function openDetail(service, id, focus) {
    state.detail = { service, id, execution: null, items: [], outcome: "", more: false };
    $("filter-outcome").value = "";
    $("detail").hidden = false;
    $("columns").classList.add("with-detail");
    await loadDetail(true);
    if (focus) $("detail-title").focus();
    for (const row of $("executions").tBodies[0].rows) {
      const current = row.dataset.execution === id;
      row.classList.toggle("selected", current);
      if (current) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
  }

  async function loadDetail(reloadItems) {
    const d = state.detail;
    if (!d) return;
    const base = `/api/${enc(d.service)}/tasks/executions/${enc(d.id)}`;
    try {
      const wasRunning = d.execution && !FINAL.has(d.execution.status);
      const execution = await api("GET", base);
      if (state.detail !== d) return;
      d.execution = execution;
      // Records only change while the execution runs (and once more when it ends).
      if (reloadItems || wasRunning || !FINAL.has(execution.status)) {
        const limit = Math.min(1000, Math.max(ITEMS_PAGE, d.items.length));
        const query = new URLSearchParams({ limit: String(limit + 1), offset: "0" });
        if (d.outcome) query.set("outcome", d.outcome);
        const items = await api("GET", `${base}/items?${query}`);
        if (state.detail !== d) return;
        d.more = items.length > limit;
        d.items = items.slice(0, limit);
        renderItems();
      }
      renderDetail();
    } catch (err) {
      handle(err, `load execution ${d.id} of ${d.service}`);
    }
  }

  async function loadMoreItems() {
    const d = state.detail;
    if (!d) return;
    const query = new URLSearchParams({ limit: String(ITEMS_PAGE + 1), offset: String(d.items.length) });
    if (d.outcome) query.set("outcome", d.outcome);
    try {
      const items = await api("GET", `/api/${enc(d.service)}/tasks/executions/${enc(d.id)}/items?${query}`);
      if (state.detail !== d) return;
      d.more = items.length > ITEMS_PAGE;
      d.items = d.items.concat(items.slice(0, ITEMS_PAGE));
      renderItems();
    } catch (err) {
      handle(err, "load more records");
    }
  }

  function field(name, ...value) {
    return [h("dt", {}, name), h("dd", {}, ...value)];
  }

  function renderDetail() {
    const d = state.detail;
    const e = d.execution;
    const key = focusKey();
    $("detail-title").textContent = `Execution of ${e.task} on ${d.service}`;
    const fields = [
      field("Status", badge(e.status), e.cancel_requested && e.status === "running" ? " (cancel requested)" : ""),
      field("Execution id", h("code", {}, e.id)),
      field("Trigger", e.trigger, e.dry_run ? [" ", h("span", { class: "tag" }, "dry run")] : ""),
      field("Started", time(e.started_at), h("span", { class: "muted" }, ` ${absolute(e.started_at)}`)),
      field("Finished", e.finished_at ? time(e.finished_at) : h("span", { class: "muted" }, "not yet")),
      field("Duration", duration(e.started_at, e.finished_at)),
    ];
    if (e.scheduled_for) fields.push(field("Scheduled for", time(e.scheduled_for)));
    if (e.params && Object.keys(e.params).length) fields.push(field("Params", h("code", {}, JSON.stringify(e.params))));
    if (e.parent_id) {
      fields.push(
        field(
          "Retry of",
          h(
            "button",
            { type: "button", class: "link", dataset: { focus: "parent" }, onclick: () => openDetail(d.service, e.parent_id, true) },
            e.parent_id,
          ),
        ),
      );
    }
    if (e.error) fields.push(field("Error", h("span", { class: "bad" }, e.error)));
    $("detail-fields").replaceChildren(...fields.flat());

    const c = e.counts || {};
    $("detail-counts").replaceChildren(
      ...["processed", "succeeded", "failed", "skipped", "unchanged"].flatMap((k) => [
        h("dt", {}, k),
        h("dd", { class: k === "failed" && c[k] ? "bad" : null }, String(c[k] ?? 0)),
      ]),
    );

    const final = FINAL.has(e.status);
    const retry = $("detail-retry");
    retry.disabled = !(final && (c.failed || 0) > 0);
    retry.title = retry.disabled ? (final ? "No failed records to retry" : "Wait until the execution ends") : "Run the task again for the failed records only";
    const cancel = $("detail-cancel");
    cancel.disabled = final || e.cancel_requested;
    cancel.title = final ? "The execution has ended" : (e.cancel_requested ? "Cancel already requested" : "Ask the execution to stop");
    restoreFocus(key);
  }

  function renderItems() {
    const d = state.detail;
    const rows = d.items.map((it) =>
      h(
        "tr",
        {},
        h("td", {}, h("code", {}, it.record_key)),
        h("td", {}, it.action),
        h("td", {}, h("span", { class: `badge out-${it.outcome}` }, it.outcome)),
        h("td", { class: it.error ? "bad" : null }, it.error || ""),
        h(
          "td",
          {},
          it.detail && Object.keys(it.detail).length
            ? h("details", {}, h("summary", {}, "show"), h("pre", {}, JSON.stringify(it.detail, null, 2)))
            : "",
        ),
        h("td", {}, time(it.created_at)),
      ),
    );
    $("items").tBodies[0].replaceChildren(...rows);
    $("items-empty").hidden = rows.length > 0;
    $("items-more").hidden = !d.more;
  }

  async function retryFailed() {
    const d = state.detail;
    if (!d) return;
    const button = $("detail-retry");
    button.disabled = true;
    try {
      const res = await api("POST", `/api/${enc(d.service)}/tasks/executions/${enc(d.id)}/retry`, { dry_run: false });
      announce(`Retrying the failed records of ${d.id}: execution ${res.execution_id}.`);
      clearError();
      await openDetail(d.service, res.execution_id, false);
      await refreshAll();
    } catch (err) {
      handle(err, "retry the failed records");
      button.disabled = false;
    }
  }

  async function cancelExecution() {
    const d = state.detail;
    if (!d) return;
    const button = $("detail-cancel");
    button.disabled = true;
    try {
      await api("POST", `/api/${enc(d.service)}/tasks/executions/${enc(d.id)}/cancel`);
      announce(`Cancel requested for execution ${d.id}.`);
      clearError();
      await refreshAll();
    } catch (err) {
      handle(err, "cancel the execution");
      button.disabled = false;
    }
  }

  function closeDetail() {
    state.detail = null;
    $("detail").hidden = true;
    $("columns").classList.remove("with-detail");
    for (const row of $("executions").tBodies[0].rows) {
      row.classList.remove("selected");
      row.removeAttribute("aria-current");
    }
  }

  // ------------------------------------------------------------------ refresh

  function refreshAll() {
    if (state.refreshing) return state.refreshing;
    const run = async () => {
      const results = await Promise.allSettled([loadTasks(), loadExecutions()]);
      const failed = results.find((r) => r.status === "rejected");
      if (failed) {
        const err = failed.reason;
        if (err instanceof ApiError && (err.status === 401 || err.status === 403) && state.token) {
          signOut();
          showError(err, "load the dashboard");
          return;
        }
        showError(err, "refresh the dashboard");
        return;
      }
      if (state.detail) await loadDetail(false);
    };
    state.refreshing = run().finally(() => {
      state.refreshing = null;
    });
    return state.refreshing;
  }

  function startTimer() {
    stopTimer();
    if (!$("auto-refresh").checked || !state.token) return;
    state.timer = setInterval(() => {
      if (!document.hidden) refreshAll();
    }, REFRESH_MS);
  }

  function stopTimer() {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("sign-in-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const raw = $("token-input").value.trim().replace(/^bearer\s+/i, "");
      if (!raw) {
        announce("Paste a token first.");
        $("token-input").focus();
        return;
      }
      $("token-input").value = "";
      signIn(raw);
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("refresh").addEventListener("click", () => refreshAll());
    $("auto-refresh").addEventListener("change", startTimer);
    $("execution-filters").addEventListener("submit", (ev) => ev.preventDefault());
    $("filter-service").addEventListener("change", () => {
      renderTaskFilter();
      loadExecutions().catch((err) => handle(err, "load executions"));
    });
    for (const id of ["filter-task", "filter-status"]) {
      $(id).addEventListener("change", () => loadExecutions().catch((err) => handle(err, "load executions")));
    }
    $("filter-outcome").addEventListener("change", () => {
      if (!state.detail) return;
      state.detail.outcome = $("filter-outcome").value;
      state.detail.items = [];
      loadDetail(true);
    });
    $("items-more").addEventListener("click", loadMoreItems);
    $("detail-retry").addEventListener("click", retryFailed);
    $("detail-cancel").addEventListener("click", cancelExecution);
    $("detail-close").addEventListener("click", closeDetail);

    takeTokenFromFragment();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
    else showSignIn();
  }

  init();
})();
