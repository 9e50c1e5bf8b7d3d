"""A portal customer the way a real one gets there: the job system registers a job (service
token), the portal mails the access with its activation link (read from the local mail capture),
the customer chooses a password and signs in. Used by the upload tests and the secrets scan.
"""

from __future__ import annotations

import email
import email.policy
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field

import httpx

from .conftest import Mesh

TOKEN_RE = re.compile(r"activate\?token=([A-Za-z0-9_-]{43})")
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Customer:
    client: httpx.Client  # carries the portal session cookie
    job_id: str
    username: str
    password: str
    activation_token: str
    access_mail_id: str | None = None
    csrf: str = ""
    secrets: list[str] = field(default_factory=list)

    def upload(
        self, files: list[tuple[str, bytes]], *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body, ctype = multipart(files)
        return self.client.post(
            f"/jobs/{self.job_id}/folders/incoming/files",
            content=body,
            headers={"Content-Type": ctype, "X-CSRF-Token": self.csrf, **(headers or {})},
        )


def multipart(files: list[tuple[str, bytes]], field_name: str = "files") -> tuple[bytes, str]:
    """A multipart/form-data body with the file names exactly as given (no client escaping)."""
    boundary = "----edumesh-sec-" + uuid.uuid4().hex
    out = bytearray()
    for name, data in files:
        out += f"--{boundary}\r\n".encode()
        out += (
            f'Content-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _mail_with(mesh: Mesh, needle: str, timeout: float = 60) -> email.message.EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(mesh.mail_dir.glob("*/*")):
            raw = path.read_bytes()
            if needle.encode() not in raw and b"quoted-printable" not in raw.lower():
                continue
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            if needle in str(message["To"]) or needle in str(message["Subject"]):
                return message
        time.sleep(0.5)
    raise AssertionError(f"no mail for {needle} arrived in {mesh.mail_dir}")


def _text(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    assert part is not None
    return str(part.get_content())


def new_customer(mesh: Mesh) -> Customer:
    suffix = uuid.uuid4().hex[:8]
    client_no = f"SEC-{suffix}"
    address = f"sec-{suffix}@example.org"
    job = httpx.post(
        f"{mesh.url}/api/portal/jobs",
        json={
            "project_no": f"P-SEC-{suffix}",
            "client": {
                "client_no": client_no,
                "name": f"Security Test {suffix}",
                "email": address,
                "portal_create_uplogin_automatically": 1,
                "portal_send_uplogin_email_automatically": 1,
                "portal_reminder_email_automatically": 0,
                "create_hotfolder": False,
            },
            "description": "security suite",
        },
        headers=mesh.headers("service", sub="job-system"),
        timeout=30,
    )
    assert job.status_code == 201, job.text
    registered = job.json()
    assert registered["account_created"], registered
    token_match = TOKEN_RE.search(_text(_mail_with(mesh, address)))
    assert token_match, "no activation link in the access mail"
    token = token_match.group(1)

    password = "Sec-" + secrets.token_urlsafe(18)
    client = httpx.Client(base_url=f"{mesh.url}/api/portal/public", timeout=30)
    page = client.get("/activate", params={"token": token})
    assert page.status_code == 200, page.text[:300]
    csrf = CSRF_RE.search(page.text)
    assert csrf
    done = client.post(
        "/activate",
        data={
            "token": token,
            "password": password,
            "password_confirm": password,
            "csrf": csrf.group(1),
        },
    )
    assert done.status_code == 303, (done.status_code, done.text[:300])
    username = str(
        httpx.get(
            f"{mesh.url}/api/portal/accounts/{registered['account_id']}",
            headers=mesh.headers("staff"),
        ).json()["username"]
    )
    customer = Customer(
        client, registered["job_id"], username, password, token, registered["access_mail_id"]
    )
    customer.csrf = job_csrf(customer)
    return customer


def job_csrf(customer: Customer) -> str:
    page = customer.client.get(f"/jobs/{customer.job_id}", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:300]
    match = CSRF_RE.search(page.text)
    assert match
    return match.group(1)


def sign_in(mesh: Mesh, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=f"{mesh.url}/api/portal/public", timeout=30)
    page = client.get("/login")
    csrf = CSRF_RE.search(page.text)
    assert csrf
    r = client.post(
        "/login", data={"username": username, "password": password, "csrf": csrf.group(1)}
    )
    assert r.status_code == 303, (r.status_code, r.text[:300])
    return client
