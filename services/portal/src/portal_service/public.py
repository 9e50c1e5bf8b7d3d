"""The customer pages under ``/public`` (reached as ``/api/portal/public/...`` through the
gateway, which lets them through without a mesh token): activate, set password, sign in,
request a new link, list jobs and folders, upload into Incoming, download from Final.

Server-rendered HTML (Jinja2 sandbox, autoescape on, strict undefined) plus one static script
and one stylesheet; no inline script or style and nothing from other origins, enforced by a
strict Content-Security-Policy. Customers sign in with the portal's own session cookie
(``portal_session``: HttpOnly, SameSite=Strict, Secure except in the embedded default, path =
the pages' base path). Every form post carries a CSRF token (a hidden field, or the
``X-CSRF-Token`` header for the script's uploads), and cross-site posts are refused by
``Sec-Fetch-Site`` as well. Errors of the upload and download endpoints are problem+json (the
script shows their ``detail``); the other pages show their messages in the page. Only those two
endpoints are in the OpenAPI document: the pages are for browsers, not an API.

This module must not hold business rules: they are in ``accounts``, ``uploads``, ``jobs``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from jinja2.sandbox import ImmutableSandboxedEnvironment
from mesh_common.errors import DomainError, Forbidden, NotFound, problem
from sqlalchemy import select

from portal_service import accounts, api, models, security, uploads
from portal_service.core import FOLDER_LABELS, FOLDERS, Portal, epoch_dt
from portal_service.security import CSRF_COOKIE, SESSION_COOKIE, CustomerSession

router = APIRouter(prefix="/public", tags=["customer pages"])

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ASSETS = {
    "portal.js": "text/javascript; charset=utf-8",
    "portal.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
STATIC = resources.files("portal_service") / "static"
_PREFIX = re.compile(r"^(/[A-Za-z0-9._-]+)*$")


@functools.cache
def _pages() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.PackageLoader("portal_service", "pages"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    env.filters["when"] = lambda v: f"{epoch_dt(v):%d.%m.%Y %H:%M} UTC" if v else ""
    env.filters["day"] = lambda v: v.strftime("%d.%m.%Y") if v else ""
    return env


@functools.cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def _portal(request: Request) -> Portal:
    return api._portal(request)


def base_path(request: Request) -> str:
    """Where the pages are from the browser's view: the gateway's prefix plus ``/public``."""
    prefix = request.headers.get("x-forwarded-prefix", "")
    if not _PREFIX.match(prefix) or len(prefix) > 100:
        prefix = ""
    return prefix + "/public"


def _ip(request: Request) -> str | None:
    return api.client_ip(request)


def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **data: Any,
) -> HTMLResponse:
    data.setdefault("user", None)
    data.setdefault("csrf", "")
    data.setdefault("error", None)
    data.setdefault("notice", None)
    html = _pages().get_template(template).render(base=base_path(request), **data)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=base_path(request),
        secure=_portal(request).settings.cookie_secure,
        httponly=True,
        samesite="strict",
    )


def _forget(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name,
        path=base_path(request),
        secure=_portal(request).settings.cookie_secure,
        httponly=True,
        samesite="strict",
    )


def _redirect(request: Request, page: str, **query: str) -> RedirectResponse:
    url = f"{base_path(request)}/{page}" + ("?" + urlencode(query) if query else "")
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


class _FormToken:
    """The double-submit CSRF token of pages before sign-in (cookie + hidden field)."""

    def __init__(self, request: Request) -> None:
        self.cookie = request.cookies.get(CSRF_COOKIE)
        self.value = (
            self.cookie if self.cookie and len(self.cookie) == 43 else security.new_secret()
        )

    def attach(self, response: Response, request: Request) -> Response:
        if self.cookie != self.value:
            _cookie(response, request, CSRF_COOKIE, self.value, 12 * 3600)
        return response


def _cross_site(request: Request) -> bool:
    return request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


async def _form(request: Request) -> dict[str, str]:
    form = await request.form(max_files=0, max_fields=20, max_part_size=64 * 1024)
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _check_anonymous_form(request: Request) -> dict[str, str]:
    form = await _form(request)
    if _cross_site(request) or not security.same(
        form.get("csrf"), request.cookies.get(CSRF_COOKIE)
    ):
        raise Forbidden(
            "The form expired or did not come from this portal. Reload the page and try again.",
            code="csrf-failed",
        )
    return form


async def current_customer(request: Request) -> CustomerSession | None:
    portal = _portal(request)
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    async with portal.db.unit_of_work() as session:
        return await security.load_session(
            session,
            raw,
            now=portal.now(),
            idle_minutes=portal.settings.portal_session_idle_minutes,
        )


Customer = Annotated[CustomerSession | None, Depends(current_customer)]


class _SignIn(Exception):
    """Not signed in: pages redirect to the login page."""


def _need(customer: CustomerSession | None) -> CustomerSession:
    if customer is None:
        raise _SignIn
    return customer


def install(app: FastAPI) -> None:
    """Exception handlers of the pages (redirect to the login page; HTML for form errors)."""

    @app.exception_handler(_SignIn)
    async def _to_login(request: Request, exc: _SignIn) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return _redirect(request, "login")
        return problem(401, code="not-signed-in", detail="Sign in to the portal first.")


# ---------------------------------------------------------------------- static


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no asset {name!r}")
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return Response(_asset(name), media_type=media_type, headers=headers)


# ---------------------------------------------------------------------- sign-in


@router.get("", include_in_schema=False)
async def home(request: Request, customer: Customer) -> Response:
    return _redirect(request, "jobs" if customer else "login")


@router.get("/login", response_class=HTMLResponse, summary="Sign-in page", include_in_schema=False)
async def login_page(request: Request, customer: Customer, notice: str | None = None) -> Response:
    if customer is not None:
        return _redirect(request, "jobs")
    token = _FormToken(request)
    notices = {"signed-out": "You are signed out."}
    response = render(
        request,
        "login.html",
        title="Sign in",
        csrf=token.value,
        username="",
        notice=notices.get(notice or ""),
    )
    return token.attach(response, request)


@router.post(
    "/login", response_class=HTMLResponse, summary="Sign in (form post)", include_in_schema=False
)
async def login_post(request: Request) -> Response:
    portal = _portal(request)
    token = _FormToken(request)
    try:
        form = await _check_anonymous_form(request)
    except DomainError as exc:
        response = render(
            request, "login.html", status=exc.status, title="Sign in", csrf=token.value,
            username="", error=exc.detail,
        )  # fmt: skip
        return token.attach(response, request)
    username = form.get("username", "")[:100]
    try:
        signed_in = await accounts.login(
            portal, username, form.get("password", ""), ip=_ip(request)
        )
    except DomainError as exc:
        headers = {}
        if "retry_after" in exc.extra:
            headers["Retry-After"] = str(exc.extra["retry_after"])
        response = render(
            request, "login.html", status=exc.status, headers=headers, title="Sign in",
            csrf=token.value, username=username, error=exc.detail,
        )  # fmt: skip
        return token.attach(response, request)
    redirect: Response = _redirect(request, "jobs")
    _cookie(
        redirect,
        request,
        SESSION_COOKIE,
        signed_in.session_cookie,
        portal.settings.portal_session_max_hours * 3600,
    )
    return redirect


@router.post("/logout", summary="Sign out (form post)", include_in_schema=False)
async def logout(request: Request, customer: Customer) -> Response:
    form = await _form(request)
    if customer is not None and not _cross_site(request):
        if security.same(form.get("csrf"), customer.csrf):
            portal = _portal(request)
            async with portal.db.unit_of_work() as session:
                await security.end_session(session, customer.raw)
    response = _redirect(request, "login", notice="signed-out")
    _forget(response, request, SESSION_COOKIE)
    return response


# ---------------------------------------------------------------------- activation


@router.get(
    "/activate",
    response_class=HTMLResponse,
    summary="Activation / new password page",
    include_in_schema=False,
)
async def activate_page(request: Request, token: str = "") -> Response:
    portal = _portal(request)
    async with portal.db.unit_of_work() as session:
        account_id = await security.peek_token(session, token, now=portal.now())
        account = await accounts.account_by_id(session, account_id) if account_id else None
    form_token = _FormToken(request)
    if account is None or account.status != "active":
        response = render(
            request,
            "activate.html",
            status=400,
            title="Activation link not valid",
            valid=False,
            token="",
            username="",
            csrf=form_token.value,
            first=False,
            min_length=portal.settings.portal_password_min_length,
        )
        return form_token.attach(response, request)
    response = render(
        request,
        "activate.html",
        title="Choose your password",
        valid=True,
        token=token,
        username=account.username,
        csrf=form_token.value,
        first=not account.activation_checked,
        min_length=portal.settings.portal_password_min_length,
    )
    return form_token.attach(response, request)


@router.post(
    "/activate",
    response_class=HTMLResponse,
    summary="Set the password (form post)",
    include_in_schema=False,
)
async def activate_post(request: Request) -> Response:
    portal = _portal(request)
    form_token = _FormToken(request)
    raw = ""
    try:
        form = await _check_anonymous_form(request)
        raw = form.get("token", "")
        activated = await accounts.activate(
            portal,
            raw,
            form.get("password", ""),
            form.get("password_confirm", ""),
            ip=_ip(request),
        )
    except DomainError as exc:
        still_valid = exc.code in ("password-rejected", "csrf-failed") and raw
        username = ""
        if still_valid:
            async with portal.db.unit_of_work() as session:
                account_id = await security.peek_token(session, raw, now=portal.now())
                if account_id:
                    username = (await accounts.account_by_id(session, account_id)).username
        response = render(
            request,
            "activate.html",
            status=exc.status,
            title="Choose your password" if username else "Activation link not valid",
            valid=bool(username),
            token=raw if username else "",
            username=username,
            csrf=form_token.value,
            first=False,
            min_length=portal.settings.portal_password_min_length,
            error=exc.detail,
        )
        return form_token.attach(response, request)
    redirect: Response = _redirect(
        request, "jobs", welcome="1" if activated.first_activation else "0"
    )
    _cookie(
        redirect,
        request,
        SESSION_COOKIE,
        activated.session_cookie,
        portal.settings.portal_session_max_hours * 3600,
    )
    return redirect


@router.get(
    "/request-link",
    response_class=HTMLResponse,
    summary="Request a new link page",
    include_in_schema=False,
)
async def request_link_page(request: Request, username: str = "") -> Response:
    token = _FormToken(request)
    response = render(
        request,
        "request_link.html",
        title="Request a new activation link",
        csrf=token.value,
        username=username[:100],
        sent=False,
    )
    return token.attach(response, request)


@router.post(
    "/request-link",
    response_class=HTMLResponse,
    summary="Request a new link (post)",
    include_in_schema=False,
)
async def request_link_post(request: Request) -> Response:
    portal = _portal(request)
    token = _FormToken(request)
    try:
        form = await _check_anonymous_form(request)
    except DomainError as exc:
        response = render(
            request, "request_link.html", status=exc.status, title="Request a new activation link",
            csrf=token.value, username="", sent=False, error=exc.detail,
        )  # fmt: skip
        return token.attach(response, request)
    ip = _ip(request)
    if not await accounts.link_requests_allowed(portal, ip):
        response = render(
            request, "request_link.html", status=429, title="Request a new activation link",
            csrf=token.value, username="", sent=False,
            error="Too many requests from your network. Please try again in an hour.",
        )  # fmt: skip
        return token.attach(response, request)
    accounts.spawn_link_request(portal, form.get("username", ""), ip)
    response = render(
        request,
        "request_link.html",
        title="Request a new activation link",
        csrf=token.value,
        username="",
        sent=True,
        minutes=portal.settings.portal_activation_minutes,
    )
    return token.attach(response, request)


# ---------------------------------------------------------------------- jobs and folders


async def _job_of(portal: Portal, customer: CustomerSession, job_id: str) -> Any:
    j = models.jobs
    async with portal.db.sessionmaker() as session:
        job = (
            await session.execute(
                select(j).where(j.c.id == job_id, j.c.client_id == customer.client_id)
            )
        ).first()
    if job is None:  # also another client's job: indistinguishable
        raise NotFound("no such job in your portal", code="job-not-found")
    return job


@router.get(
    "/jobs", response_class=HTMLResponse, summary="The customer's jobs", include_in_schema=False
)
async def jobs_page(request: Request, customer: Customer, welcome: str = "0") -> Response:
    me = _need(customer)
    portal = _portal(request)
    j = models.jobs
    async with portal.db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(j)
                .where(j.c.client_id == me.client_id)
                .order_by(j.c.created_at.desc(), j.c.project_no)
            )
        ).all()
        counts = await api.folder_counts(session, [r.id for r in rows])
    return render(
        request,
        "jobs.html",
        title="Your jobs",
        user=me.username,
        csrf=me.csrf,
        jobs=rows,
        counts=counts,
        labels=FOLDER_LABELS,
        folders=FOLDERS,
        notice="Your portal access is active. Welcome!" if welcome == "1" else None,
    )


@router.get(
    "/jobs/{job_id}",
    response_class=HTMLResponse,
    summary="One job's folders",
    include_in_schema=False,
)
async def job_page(
    request: Request, job_id: str, customer: Customer, uploaded: int = 0
) -> Response:
    me = _need(customer)
    portal = _portal(request)
    job = await _job_of(portal, me, job_id)
    f = models.files
    async with portal.db.sessionmaker() as session:
        files = (
            await session.execute(
                select(f).where(f.c.job_id == job.id).order_by(f.c.uploaded_at.desc(), f.c.name)
            )
        ).all()
    by_folder: dict[str, list[Any]] = {k: [] for k in FOLDERS}
    for row in files:
        by_folder[row.folder].append(row)
    return render(
        request,
        "job.html",
        title=f"Job {job.project_no}",
        user=me.username,
        csrf=me.csrf,
        job=job,
        files=by_folder,
        labels=FOLDER_LABELS,
        folders=FOLDERS,
        scanner=portal.scanner is not None,
        max_mib=portal.settings.portal_upload_max_bytes // (1024 * 1024),
        notice=f"{uploaded} file(s) uploaded and checked for viruses." if uploaded > 0 else None,
    )


@router.post(
    "/jobs/{job_id}/folders/{folder}/files",
    status_code=201,
    summary="Upload files into the job's Incoming folder (multipart, streamed, virus-scanned)",
    responses={
        303: {"description": "stored (browser form without script)"},
        403: {"description": "not Incoming, or CSRF"},
        413: {"description": "too large"},
        422: {"description": "virus found"},
        503: {"description": "scanner unavailable"},
    },
)
async def upload(request: Request, job_id: str, folder: str, customer: Customer) -> Response:
    portal = _portal(request)
    try:
        me = _need(customer)
        job = await _job_of(portal, me, job_id)
        if folder not in FOLDERS:
            raise NotFound(f"no folder {folder!r}", code="folder-not-found")
        if folder != "incoming":
            raise Forbidden(
                f"Uploads go to Incoming only; {FOLDER_LABELS[folder]} is read-only for you.",
                code="folder-read-only",
            )
        if _cross_site(request):
            raise Forbidden("cross-site uploads are refused", code="csrf-failed")
        async with portal.db.sessionmaker() as session:
            client = await accounts.client_by_id(session, job.client_id)
    except Exception:
        # Refused before the body was read: read it away (bounded) so the answer arrives.
        await uploads.drain(request.stream())
        raise
    header_ok = security.same(request.headers.get("x-csrf-token"), me.csrf)
    actor = f"customer:{me.username}"
    files = await api.receive_logged(
        portal, request, job, actor=actor, csrf_expected=me.csrf, csrf_ok=header_ok
    )
    rows = await uploads.store(
        portal, job, client.client_no, "incoming", files, uploaded_by=actor, ip=_ip(request)
    )
    if "text/html" in request.headers.get("accept", "") and not header_ok:
        return _redirect(request, f"jobs/{job.id}", uploaded=str(len(rows)))
    body = [
        {"id": r["id"], "name": r["name"], "size": r["size"], "sha256": r["sha256"]} for r in rows
    ]
    return JSONResponse({"files": body}, status_code=201, headers=SECURITY_HEADERS)


@router.get("/jobs/{job_id}/files/{file_id}", summary="Download a file from Final")
async def download(request: Request, job_id: str, file_id: str, customer: Customer) -> FileResponse:
    me = _need(customer)
    portal = _portal(request)
    job = await _job_of(portal, me, job_id)
    async with portal.db.unit_of_work() as session:
        row = await api.file_row(session, job.id, file_id)
        if row.folder != "final":
            raise Forbidden(
                "Only files in Final can be downloaded.", code="folder-not-downloadable"
            )
        from portal_service.core import record_audit

        await record_audit(
            session,
            portal.now(),
            actor=f"customer:{me.username}",
            action="download",
            account_id=me.account_id,
            job_id=job.id,
            ip=_ip(request),
            detail={"file": row.name},
        )
    return api.download_response(portal, row)
