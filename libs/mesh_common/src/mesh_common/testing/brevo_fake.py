"""A fake Brevo API v3 (contacts) served over real HTTP, for tests and ``make run``.

It follows Brevo's documented behaviour closely enough that a client which works here works
there: the ``api-key`` header is checked (401 ``unauthorized``), request bodies are validated
(400 ``invalid_parameter`` / ``missing_parameter`` with Brevo's ``{"code", "message"}`` body),
a second contact with a taken email or ext_id is refused with ``duplicate_parameter`` and
``metadata.duplicate_identifiers``, unknown contacts are 404 ``document_not_found``, and the
contacts endpoints are rate limited per key (default 10 requests in any second; other
endpoints 100 per hour) with 429 and the ``x-sib-ratelimit-limit/-remaining/-reset`` headers
on every limited response. State is in memory. Where Brevo's behaviour is not documented the
fake is strict (unknown body fields are refused) so client mistakes show up in tests; it
ignores attributes the account does not have, as Brevo documents for imports.

Endpoints: ``GET /v3/account``; ``POST/GET /v3/contacts``; ``GET/PUT/DELETE
/v3/contacts/{identifier}`` (``identifierType`` email_id, contact_id, ext_id, phone_id);
``POST /v3/contacts/batch``; ``POST /v3/contacts/import`` (jsonBody or CSV fileBody, processed
at once); ``GET /v3/processes/{id}``; ``GET/POST /v3/contacts/lists``.

Run it: ``FakeBrevo(api_keys=[...])`` is the state and ``.app`` the ASGI app;
``async with serve_fake_brevo(fake) as url:`` serves it with uvicorn on a free port;
``python -m mesh_common.testing.brevo_fake --port 8090`` serves it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_PHONE = re.compile(r"^(\+|00)?[0-9]{6,16}$")
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "FIRSTNAME": "text",
    "LASTNAME": "text",
    "SMS": "text",
    "ANREDE": "text",
    "TITEL": "text",
    "PLZ": "text",
    "ORT": "text",
    "LAND": "text",
    "GEBURTSTAG": "date",
}


class BrevoProblem(Exception):
    def __init__(
        self, status: int, code: str, message: str, metadata: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.metadata = dict(metadata) if metadata else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Contact:
    id: int
    email: str | None
    ext_id: str | None
    attributes: dict[str, Any]
    list_ids: set[int]
    email_blacklisted: bool = False
    sms_blacklisted: bool = False
    created_at: str = field(default_factory=_now)
    modified_at: str = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        attrs = dict(self.attributes)
        if self.ext_id is not None:
            attrs["EXT_ID"] = self.ext_id
        return {
            "id": self.id,
            "email": self.email,
            "emailBlacklisted": self.email_blacklisted,
            "smsBlacklisted": self.sms_blacklisted,
            "createdAt": self.created_at,
            "modifiedAt": self.modified_at,
            "attributes": attrs,
            "listIds": sorted(self.list_ids),
            "statistics": {},
        }


@dataclass(frozen=True)
class RequestRecord:
    at: float  # time.monotonic() on arrival
    method: str
    path: str
    status: int


class _Window:
    """At most ``limit`` requests in any ``period`` seconds, per key."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.period = limit, period
        self.hits: dict[str, deque[float]] = {}

    def check(self, key: str, now: float) -> tuple[bool, int, float]:
        hits = self.hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.period:
            hits.popleft()
        if len(hits) >= self.limit:
            return False, 0, hits[0] + self.period - now
        hits.append(now)
        reset = hits[0] + self.period - now
        return True, self.limit - len(hits), reset


class FakeBrevo:
    """The fake's state (contacts, lists, processes, request log) and its ASGI ``app``."""

    def __init__(
        self,
        api_keys: Iterable[str] = (),
        *,
        contacts_per_second: int = 10,
        other_per_hour: int = 100,
        attributes: Mapping[str, str] | None = None,
        lists: Mapping[int, str] | None = None,
        account_email: str = "newsletter@vhs.example",
    ) -> None:
        self.api_keys = set(api_keys)
        self.attribute_types = dict(attributes or DEFAULT_ATTRIBUTES)
        self.account_email = account_email
        self.contacts: dict[int, Contact] = {}
        self.lists: dict[int, dict[str, Any]] = {
            i: {"id": i, "name": n, "folderId": 1}
            for i, n in (lists or {2: "Teilnehmende"}).items()
        }
        self.processes: dict[int, dict[str, Any]] = {}
        self.log: list[RequestRecord] = []
        self.ignored_attributes: list[str] = []
        self._next_id = 1
        self._contacts_limit = _Window(contacts_per_second, 1.0)
        self._other_limit = _Window(other_per_hour, 3600.0)
        self.app = Starlette(
            routes=[
                Route("/v3/account", self._account, methods=["GET"]),
                Route("/v3/contacts", self._create, methods=["POST"]),
                Route("/v3/contacts", self._list_contacts, methods=["GET"]),
                Route("/v3/contacts/batch", self._batch, methods=["POST"]),
                Route("/v3/contacts/import", self._import, methods=["POST"]),
                Route("/v3/contacts/lists", self._get_lists, methods=["GET"]),
                Route("/v3/contacts/lists", self._create_list, methods=["POST"]),
                Route("/v3/contacts/{identifier}", self._get, methods=["GET"]),
                Route("/v3/contacts/{identifier}", self._update, methods=["PUT"]),
                Route("/v3/contacts/{identifier}", self._delete, methods=["DELETE"]),
                Route("/v3/processes/{pid:int}", self._process, methods=["GET"]),
            ],
            exception_handlers={BrevoProblem: _handle_problem},
        )
        self.app.add_middleware(_Guard, fake=self)

    @staticmethod
    def new_key() -> str:
        """A random key in Brevo's format (``xkeysib-`` + hex)."""
        return "xkeysib-" + secrets.token_hex(32) + "-" + secrets.token_urlsafe(12)

    # ---------------------------------------------------------------- inspection helpers

    def by_email(self, email: str) -> Contact | None:
        lowered = email.lower()
        return next((c for c in self.contacts.values() if (c.email or "") == lowered), None)

    def max_per_window(self, *, period: float = 1.0, path_prefix: str = "/v3/contacts") -> int:
        """The most requests (answered 429 or not) that arrived within any ``period`` seconds."""
        times = sorted(r.at for r in self.log if r.path.startswith(path_prefix))
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= period:
                start += 1
            best = max(best, end - start + 1)
        return best

    # ---------------------------------------------------------------- validation

    def _email(self, value: Any, where: str = "email") -> str:
        if not isinstance(value, str) or not _EMAIL.match(value):
            raise BrevoProblem(400, "invalid_parameter", "Invalid email address")
        return value.lower()

    def _attributes(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BrevoProblem(400, "invalid_parameter", "attributes should be an object")
        out: dict[str, Any] = {}
        for name, v in value.items():
            key = str(name).upper()
            if not (
                v is None
                or isinstance(v, str | int | float | bool)
                or (isinstance(v, list) and all(isinstance(x, str) for x in v))
            ):
                raise BrevoProblem(
                    400, "invalid_parameter", f"attribute {key} has an unsupported value type"
                )
            if key == "SMS" and v not in (None, "") and not _PHONE.match(str(v).replace(" ", "")):
                raise BrevoProblem(400, "invalid_parameter", "Invalid phone number")
            kind = self.attribute_types.get(key)
            if kind is None:
                if key != "EMAIL":
                    self.ignored_attributes.append(key)  # Brevo ignores unknown attributes
                    continue
            elif kind == "date" and v not in (None, ""):
                try:
                    datetime.strptime(str(v), "%Y-%m-%d")
                except ValueError:
                    continue  # "values that don't match the attribute type will be ignored"
            out[key] = v
        return out

    def _list_ids(self, value: Any, field_name: str = "listIds") -> set[int]:
        if value is None:
            return set()
        if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in value
        ):
            raise BrevoProblem(
                400, "invalid_parameter", f"{field_name} should be an array of integers"
            )
        unknown = [i for i in value if i not in self.lists]
        if unknown:
            raise BrevoProblem(404, "document_not_found", f"List ID {unknown[0]} does not exist")
        return set(value)

    @staticmethod
    def _only(body: Mapping[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(body) - allowed)
        if extra:
            raise BrevoProblem(400, "invalid_parameter", f"Invalid parameter: {extra[0]}")

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise BrevoProblem(400, "bad_request", "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BrevoProblem(400, "bad_request", "Request body must be a JSON object")
        return body

    def _find(self, identifier: str, identifier_type: str | None) -> Contact:
        ident = unquote(identifier)
        kind = identifier_type
        if kind is None:
            if ident.isdigit():
                kind = "contact_id"
            elif "@" in ident:
                kind = "email_id"
            else:
                raise BrevoProblem(
                    400, "invalid_parameter", "identifierType is required for this identifier"
                )
        found: Contact | None = None
        if kind == "contact_id":
            found = self.contacts.get(int(ident)) if ident.isdigit() else None
        elif kind == "email_id":
            found = self.by_email(ident)
        elif kind == "ext_id":
            found = next((c for c in self.contacts.values() if c.ext_id == ident), None)
        elif kind == "phone_id":
            found = next(
                (c for c in self.contacts.values() if c.attributes.get("SMS") == ident), None
            )
        else:
            raise BrevoProblem(400, "invalid_parameter", f"Invalid identifierType {kind}")
        if found is None:
            raise BrevoProblem(404, "document_not_found", "Contact does not exist")
        return found

    def _taken(self, email: str | None, ext_id: str | None, exclude: int | None) -> list[str]:
        dup = []
        for c in self.contacts.values():
            if c.id == exclude:
                continue
            if email is not None and c.email == email:
                dup.append("email")
            if ext_id is not None and c.ext_id == ext_id:
                dup.append("ext_id")
        return sorted(set(dup))

    def _apply(self, contact: Contact, body: Mapping[str, Any], attributes: dict[str, Any]) -> None:
        new_email = attributes.pop("EMAIL", None)
        if new_email is not None:
            email = self._email(new_email)
            if self._taken(email, None, contact.id):
                raise BrevoProblem(
                    400,
                    "duplicate_parameter",
                    "Unable to update contact, email is already associated with another Contact",
                    {"duplicate_identifiers": ["email"]},
                )
            contact.email = email
        if "ext_id" in body:
            ext = body["ext_id"]
            if ext is not None and self._taken(None, str(ext), contact.id):
                raise BrevoProblem(
                    400,
                    "duplicate_parameter",
                    "Unable to update contact, ext_id is already associated with another Contact",
                    {"duplicate_identifiers": ["ext_id"]},
                )
            contact.ext_id = None if ext is None else str(ext)
        for key, value in attributes.items():
            if value is None or value == "":
                contact.attributes.pop(key, None)
            else:
                contact.attributes[key] = value
        contact.list_ids |= self._list_ids(body.get("listIds"))
        contact.list_ids -= self._list_ids(body.get("unlinkListIds"), "unlinkListIds")
        if "emailBlacklisted" in body:
            contact.email_blacklisted = bool(body["emailBlacklisted"])
        if "smsBlacklisted" in body:
            contact.sms_blacklisted = bool(body["smsBlacklisted"])
        contact.modified_at = _now()

    def _insert(
        self,
        email: str | None,
        ext_id: str | None,
        attributes: dict[str, Any],
        list_ids: set[int],
        body: Mapping[str, Any],
    ) -> Contact:
        contact = Contact(
            id=self._next_id,
            email=email,
            ext_id=ext_id,
            attributes={k: v for k, v in attributes.items() if v not in (None, "")},
            list_ids=list_ids,
            email_blacklisted=bool(body.get("emailBlacklisted", False)),
            sms_blacklisted=bool(body.get("smsBlacklisted", False)),
        )
        self.contacts[contact.id] = contact
        self._next_id += 1
        return contact

    # ---------------------------------------------------------------- endpoints

    async def _account(self, request: Request) -> Response:
        return JSONResponse(
            {
                "email": self.account_email,
                "firstName": "Volkshochschule",
                "lastName": "Demo",
                "companyName": "VHS Demo (fake Brevo)",
                "address": {"street": "", "city": "", "zipCode": "", "country": "Germany"},
                "plan": [{"type": "free", "credits": 300, "creditsType": "sendLimit"}],
            }
        )

    async def _create(self, request: Request) -> Response:
        body = await self._json(request)
        self._only(
            body,
            {
                "email",
                "ext_id",
                "attributes",
                "listIds",
                "updateEnabled",
                "emailBlacklisted",
                "smsBlacklisted",
                "smtpBlacklistSender",
            },
        )
        email = self._email(body["email"]) if body.get("email") is not None else None
        ext_id = str(body["ext_id"]) if body.get("ext_id") is not None else None
        attributes = self._attributes(body.get("attributes"))
        list_ids = self._list_ids(body.get("listIds"))
        if email is None and ext_id is None and not attributes.get("SMS"):
            raise BrevoProblem(
                400, "missing_parameter", "email, ext_id or attributes.SMS is required"
            )
        dup = self._taken(email, ext_id, None)
        if dup:
            if body.get("updateEnabled") is True:
                existing = self.by_email(email) if email else self._find(str(ext_id), "ext_id")
                assert existing is not None
                attributes.pop("EMAIL", None)
                self._apply(existing, body, attributes)
                return Response(status_code=204)
            raise BrevoProblem(
                400,
                "duplicate_parameter",
                f"Unable to create contact, {' and '.join(dup)} is already associated with "
                "another Contact",
                {"duplicate_identifiers": dup},
            )
        attributes.pop("EMAIL", None)
        contact = self._insert(email, ext_id, attributes, list_ids, body)
        return JSONResponse({"id": contact.id}, status_code=201)

    async def _list_contacts(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", 50))
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            raise BrevoProblem(
                400, "invalid_parameter", "limit and offset must be integers"
            ) from None
        if not 0 <= limit <= 1000 or offset < 0:
            raise BrevoProblem(400, "out_of_range", "limit must be between 0 and 1000")
        contacts = sorted(self.contacts.values(), key=lambda c: c.id)
        since = request.query_params.get("modifiedSince")
        if since:
            contacts = [c for c in contacts if c.modified_at > since]
        page = contacts[offset : offset + limit]
        return JSONResponse({"contacts": [c.as_json() for c in page], "count": len(contacts)})

    async def _get(self, request: Request) -> Response:
        contact = self._find(
            request.path_params["identifier"], request.query_params.get("identifierType")
        )
        return JSONResponse(contact.as_json())

    async def _update(self, request: Request) -> Response:
        body = await self._json(request)
        self._only(
            body,
            {
                "attributes",
                "listIds",
                "unlinkListIds",
                "emailBlacklisted",
                "smsBlacklisted",
                "ext_id",
                "smtpBlacklistSender",
            },
        )
        contact = self._find(
            request.path_params["identifier"], request.query_params.get("identifierType")
        )
        self._apply(contact, body, self._attributes(body.get("attributes")))
        return Response(status_code=204)

    async def _delete(self, request: Request) -> Response:
        contact = self._find(
            request.path_params["identifier"], request.query_params.get("identifierType")
        )
        del self.contacts[contact.id]
        return Response(status_code=204)

    async def _batch(self, request: Request) -> Response:
        body = await self._json(request)
        self._only(body, {"contacts"})
        items = body.get("contacts")
        if not isinstance(items, list) or not items:
            raise BrevoProblem(400, "missing_parameter", "contacts is required")
        if len(items) > 100:
            raise BrevoProblem(400, "out_of_range", "at most 100 contacts per batch")
        success: list[Any] = []
        failure: list[Any] = []
        for item in items:
            if not isinstance(item, dict):
                raise BrevoProblem(400, "invalid_parameter", "contacts must be objects")
            idents = [k for k in ("id", "email", "sms") if item.get(k) is not None]
            if len(idents) != 1:
                raise BrevoProblem(
                    400, "invalid_parameter", "pass exactly one of id, email or sms per contact"
                )
            ident = item[idents[0]]
            kind = {"id": "contact_id", "email": "email_id", "sms": "phone_id"}[idents[0]]
            try:
                contact = self._find(str(ident), kind)
                self._apply(contact, item, self._attributes(item.get("attributes")))
                success.append(contact.id)
            except BrevoProblem:
                failure.append(ident)
        if failure:
            return JSONResponse({"successIds": success, "failureIds": failure}, status_code=207)
        return Response(status_code=204)

    async def _import(self, request: Request) -> Response:
        body = await self._json(request)
        self._only(
            body,
            {
                "fileUrl",
                "fileBody",
                "jsonBody",
                "listIds",
                "newList",
                "notifyUrl",
                "emailBlacklist",
                "smsBlacklist",
                "updateExistingContacts",
                "emptyContactsAttributes",
                "disableNotification",
            },
        )
        sources = [k for k in ("fileUrl", "fileBody", "jsonBody") if body.get(k) is not None]
        if not sources:
            raise BrevoProblem(
                400, "missing_parameter", "fileUrl, fileBody or jsonBody is required"
            )
        if len(sources) > 1:
            raise BrevoProblem(
                400, "invalid_parameter", "give only one of fileUrl, fileBody, jsonBody"
            )
        if "fileUrl" in sources:
            raise BrevoProblem(
                400, "invalid_parameter", "fileUrl imports are not supported by the fake"
            )
        list_ids = self._list_ids(body.get("listIds"))
        new_list = body.get("newList")
        if not list_ids and not new_list:
            raise BrevoProblem(400, "missing_parameter", "listIds or newList is required")
        if new_list is not None:
            if not isinstance(new_list, dict) or not new_list.get("listName"):
                raise BrevoProblem(400, "invalid_parameter", "newList.listName is required")
            list_id = max(self.lists, default=0) + 1
            self.lists[list_id] = {
                "id": list_id,
                "name": str(new_list["listName"]),
                "folderId": new_list.get("folderId", 1),
            }
            list_ids.add(list_id)
        rows: list[dict[str, Any]]
        if "jsonBody" in sources:
            if not isinstance(body["jsonBody"], list) or not all(
                isinstance(r, dict) for r in body["jsonBody"]
            ):
                raise BrevoProblem(400, "invalid_parameter", "jsonBody must be an array of objects")
            rows = body["jsonBody"]
        else:
            reader = csv.DictReader(io.StringIO(str(body["fileBody"])), delimiter=";")
            rows = [{"email": r.pop("EMAIL", None), "attributes": r} for r in reader]
        update_existing = body.get("updateExistingContacts", True)
        stats = {"imported": 0, "updated": 0, "invalid": 0}
        for row in rows:
            try:
                email = self._email(row.get("email"))
                attributes = self._attributes(row.get("attributes"))
            except BrevoProblem:
                stats["invalid"] += 1
                continue
            attributes.pop("EMAIL", None)
            existing = self.by_email(email)
            if existing is not None:
                if update_existing:
                    if not body.get("emptyContactsAttributes"):
                        attributes = {k: v for k, v in attributes.items() if v not in (None, "")}
                    self._apply(existing, {"listIds": sorted(list_ids)}, attributes)
                    stats["updated"] += 1
                continue
            self._insert(email, None, attributes, set(list_ids), {})
            stats["imported"] += 1
        pid = len(self.processes) + 1
        self.processes[pid] = {
            "id": pid,
            "status": "completed",
            "name": "import_contacts",
            "stats": stats,
        }
        return JSONResponse({"processId": pid}, status_code=202)

    async def _process(self, request: Request) -> Response:
        process = self.processes.get(request.path_params["pid"])
        if process is None:
            raise BrevoProblem(404, "document_not_found", "Process does not exist")
        return JSONResponse(process)

    async def _get_lists(self, request: Request) -> Response:
        lists = [
            {**v, "uniqueSubscribers": sum(1 for c in self.contacts.values() if k in c.list_ids)}
            for k, v in sorted(self.lists.items())
        ]
        return JSONResponse({"lists": lists, "count": len(lists)})

    async def _create_list(self, request: Request) -> Response:
        body = await self._json(request)
        self._only(body, {"name", "folderId"})
        if not isinstance(body.get("name"), str) or not body["name"]:
            raise BrevoProblem(400, "missing_parameter", "name is required")
        if not isinstance(body.get("folderId"), int):
            raise BrevoProblem(400, "missing_parameter", "folderId is required")
        list_id = max(self.lists, default=0) + 1
        self.lists[list_id] = {"id": list_id, "name": body["name"], "folderId": body["folderId"]}
        return JSONResponse({"id": list_id}, status_code=201)


class _Guard:
    """ASGI middleware: request log, api-key check, rate limits, Brevo-style error bodies."""

    def __init__(self, app: Any, fake: FakeBrevo) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fake = self.fake
        now = time.monotonic()
        path: str = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status_box = {"status": 0}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
            await send(message)

        try:
            key = headers.get("api-key")
            if not key or key not in fake.api_keys:
                raise BrevoProblem(401, "unauthorized", "Key not found")
            window = fake._contacts_limit if path.startswith("/v3/contacts") else fake._other_limit
            allowed, remaining, reset = window.check(key, now)
            limit_headers = {
                "x-sib-ratelimit-limit": str(window.limit),
                "x-sib-ratelimit-remaining": str(remaining),
                "x-sib-ratelimit-reset": f"{max(reset, 0.0):.3f}",
            }
            if not allowed:
                response: Response = JSONResponse(
                    {"code": "too_many_requests", "message": "Too many requests"},
                    status_code=429,
                    headers=limit_headers,
                )
                await response(scope, receive, send_wrapper)
            else:

                async def send_with_limits(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [
                            *message.get("headers", []),
                            *((k.encode(), v.encode()) for k, v in limit_headers.items()),
                        ]
                    await send_wrapper(message)

                await self.app(scope, receive, send_with_limits)
        except BrevoProblem as problem:
            await _problem(problem, {})(scope, receive, send_wrapper)
        finally:
            fake.log.append(RequestRecord(now, scope["method"], path, status_box["status"]))


async def _handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrevoProblem)
    return _problem(exc, {})


def _problem(problem: BrevoProblem, headers: Mapping[str, str]) -> Response:
    body: dict[str, Any] = {"code": problem.code, "message": problem.message}
    if problem.metadata:
        body["metadata"] = problem.metadata
    return JSONResponse(body, status_code=problem.status, headers=dict(headers))


class _QuietServer(uvicorn.Server):
    """Leaves signal handling to whoever owns the event loop (pytest, the launcher)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any, *, host: str = "127.0.0.1", port: int | None = None
) -> AsyncIterator[str]:
    """Serve any ASGI app with uvicorn in this event loop (tests); yields its base URL."""
    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(), name=f"asgi:{port}")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task


def serve_fake_brevo(
    fake: FakeBrevo, *, host: str = "127.0.0.1", port: int | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """``async with serve_fake_brevo(fake) as url:`` the fake over real HTTP."""
    return serve_asgi(fake.app, host=host, port=port)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh_common.testing.brevo_fake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=None, help="accepted key (default: a random one)")
    parser.add_argument("--rate", type=int, default=10, help="contacts requests per second")
    args = parser.parse_args()
    key = args.api_key or FakeBrevo.new_key()
    fake = FakeBrevo([key], contacts_per_second=args.rate)
    print(f"fake Brevo on http://{args.host}:{args.port}  api-key: {key}", flush=True)
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
