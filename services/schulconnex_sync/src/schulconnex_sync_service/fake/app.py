"""A spec-faithful fake Schulconnex server: the source-system API of ``api-qs.yaml`` (v1.7) and
an OAuth2 token endpoint, in memory, as an ASGI (Starlette) app.

Used by the tests, the benchmarks and ``make run``. What makes it faithful:

* **Every request and every response is validated against the OpenAPI files** with
  openapi-core (the same in-memory document as :mod:`schulconnex_sync_service.openapi`). An
  invalid request gets the spec's 400 answer (subcode by the rule that failed: 04 JSON, 07
  length, 09 date, 10 code list, 17 repeated filter, 03 otherwise) and is recorded in
  :attr:`FakeSchulconnex.violations`; an invalid *response* is a bug of the fake, recorded too
  and answered with 500 so no test can pass over it.
* **Errors** are the spec's body ``{code, subcode, titel, beschreibung}`` with the titles of
  ``docs/schnittstellendefinition/http-statuscodes.md``: 401/00-03, 403/00, 404/00-01, 405/00,
  409/00, 400/xx, 501/01 for specified endpoints this fake does not implement.
* **Revisions**: every person, personenkontext, gruppe and gruppenzugehörigkeit has one; PUT and
  DELETE must send the current one (409/00 otherwise) and every change makes a new one. PUT
  replaces the record (attributes not sent are removed), read-only attributes sent must equal
  the stored ones (400/11).
* **Rules of the data model** the schemas cannot express: ``vertrauensstufe`` is required
  (person.md), one start and one end in a ``laufzeit`` (400/16), no two personenkontexte with
  the same organisation and role (409), a person with personenkontexte cannot be deleted
  (400/12), deleting a group deletes its memberships, memberships need an existing kontext.
* **Deleting personenkontexte** (``ablauf-löschen.md``): one that services already used
  (:meth:`FakeSchulconnex.mark_used`, or one that memberships still refer to) cannot be deleted
  directly (400/13); its ``loeschung.zeitpunkt`` is set instead, which must not lie in the past
  (400/09), and at that time the fake deletes it (with its memberships), checked on every
  request or by :meth:`FakeSchulconnex.run_scheduled_deletions`.
* **Tokens**: client credentials (HTTP Basic or form) and password grant with refresh tokens;
  tokens expire after ``token_ttl`` seconds (401/01 afterwards), unknown tokens are 401/02.

Fault injection for tests: :meth:`FakeSchulconnex.add_fault` (429 with ``Retry-After``, 503,
500 bursts, slow answers, for a method/path/body match), :meth:`expire_tokens`. The ``/_fake``
endpoints expose the same for ``make run`` (no auth: never expose the fake beyond localhost).
This module must not be imported by the production sync code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from openapi_core import Config, OpenAPI, V30RequestValidator, V30ResponseValidator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from schulconnex_sync_service.openapi import (
    SPEC_BASE_PATH,
    CompiledValidator,
    ValidationRequest,
    ValidationResponse,
    Violation,
    _explain,
    dumps,
    spec_dict,
)

Json = dict[str, Any]

# --------------------------------------------------------------------------- error bodies

TITLES: dict[tuple[int, str], tuple[str, str]] = {
    (400, "00"): ("Fehlerhafte Anfrage", "Die Anfrage ist fehlerhaft:"),
    (400, "01"): ("Fehlende Parameter", "Folgende Parameter fehlen:"),
    (400, "02"): (
        "Falsche Parameter",
        "Folgende Parameter haben andere Werte als von der Schnittstelle erwartet:",
    ),
    (400, "03"): (
        "Validierungsfehler",
        "Die Anfrage konnte nicht erfolgreich validiert werden.",
    ),
    (400, "04"): (
        "JSON-Struktur ungültig",
        "Der Payload entspricht keiner gültigen JSON-Struktur.",
    ),
    (400, "07"): (
        "Attributwerte haben eine ungültige Länge",
        "Textlänge von Attribut ist nicht valide",
    ),
    (400, "09"): (
        "Datumsattribut hat einen ungültigen Wert",
        "Datumsformat von Attribut ist ungültig",
    ),
    (400, "10"): (
        "Attributwerte entspricht keinem der erwarteten Werte",
        "Attribut muss einen gültigen Wert aus der Werteliste enthalten.",
    ),
    (400, "11"): (
        "Attribut darf nicht mit diesem Wert gesetzt oder verändert werden.",
        "Attribut darf aufgrund fehlender Berechtigung nicht mit diesem Wert gesetzt oder "
        "verändert werden",
    ),
    (400, "12"): (
        "Person enthält noch Personenkontexte.",
        "Daten vom Typ „Person“ können nur gelöscht werden, wenn für diese Person keine "
        "Personenkontexte mehr existieren.",
    ),
    (400, "13"): (
        "Personenkontext wird genutzt.",
        "Personenkontexte können über die API /personenkontexte/{id} nur dann direkt gelöscht "
        "werden, wenn sie von keinem anderen System genutzt wurden. Wurde der Personenkontext "
        "bereits extern genutzt, so muss die Löschung über andere APIs erfolgen.",
    ),
    (400, "14"): (
        "Zyklische Referenzgruppe",
        "Referenzgruppen dürfen keine zirkulären Referenzen haben.",
    ),
    (400, "16"): (
        "Inkonsistente Laufzeitangabe",
        "Laufzeiten (von Lernperioden) dürfen nur einen Startzeitpunkt (entweder von oder "
        "vonlernperiode) und einen Endzeitpunkt haben (bis oder bislernperiode).",
    ),
    (400, "17"): (
        "Doppelter Filter",
        "Jeder Filter darf in der URL nur einmal benutzt werden.",
    ),
    (400, "19"): (
        "Erreichbarkeit kann nicht hinzugefügt werden.",
        "Diese Erreichbarkeit ist so nicht zulässig.",
    ),
    (401, "00"): (
        "Zugang verweigert",
        "Die Anfrage konnte aufgrund fehlender Autorisierung nicht verarbeitet werden.",
    ),
    (401, "01"): (
        "Access Token abgelaufen",
        "Der Access-Token ist abgelaufen und muss erneuert werden.",
    ),
    (401, "02"): (
        "Invalider Access-Token",
        "Invalider Access-Token. Autorisierung fehlgeschlagen.",
    ),
    (401, "03"): (
        "Falsche Autorisierungsmethode",
        "Die Anfrage konnte aufgrund einer nicht unterstützten Autorisierungsmethode nicht "
        "verarbeitet werden. Benutzen Sie Authorization: Bearer.",
    ),
    (403, "00"): (
        "Fehlende Rechte",
        "Die Autorisierung war erfolgreich, aber die erforderlichen Rechte für die Nutzung "
        "dieses Endpunktes sind nicht vorhanden.",
    ),
    (404, "00"): ("Endpunkt existiert nicht", "Der aufgerufene Endpunkt existiert nicht."),
    (404, "01"): (
        "Angefragte Entität existiert nicht",
        "Die angeforderte Entität existiert nicht.",
    ),
    (405, "00"): ("Nicht erlaubt", "Dieser Aufruf ist nicht erlaubt"),
    (409, "00"): (
        "Konflikt mit dem aktuellen Zustand der Ressource.",
        "Die Entität wurde eventuell durch Dritte verändert. Die Revisionsnummer stimmt nicht "
        "überein.",
    ),
    (429, "00"): ("Zu viele Anfragen", "Bitte später erneut versuchen."),
    (500, "00"): ("Interner Fehler", "Der Server konnte die Anfrage nicht bearbeiten."),
    (501, "01"): (
        "Der Endpunkt ist noch nicht implementiert.",
        "Der aufgerufene Endpunkt ist spezifiziert, wird jedoch auf diesem Server noch nicht "
        "bereitgestellt.",
    ),
    (503, "00"): ("Dienst nicht verfügbar", "Der Dienst ist vorübergehend nicht verfügbar."),
}


class ApiError(Exception):
    """Raised by handlers; becomes the spec's error body."""

    def __init__(self, status: int, subcode: str, detail: str | None = None) -> None:
        super().__init__(f"{status}/{subcode} {detail or ''}")
        self.status = status
        self.subcode = subcode
        self.detail = detail


def error_body(status: int, subcode: str, detail: str | None = None) -> Json:
    titel, beschreibung = TITLES.get((status, subcode), ("Fehler", ""))
    if detail:
        beschreibung = f"{beschreibung} {detail}".strip()
    return {"code": str(status), "subcode": subcode, "titel": titel, "beschreibung": beschreibung}


def error_response(
    status: int, subcode: str, detail: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dumps(error_body(status, subcode, detail)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


# --------------------------------------------------------------------------- validation


class _FastPathMixin:
    """openapi-core validators that remember, per (method, path template), the operation they
    found and, per schema location, the compiled JSON-schema validator. openapi-core does both
    lookups again for every request (about half its time); the specification does not change
    while the fake runs, so the cached objects are the very ones it would build. The checks
    themselves are openapi-core's, unchanged."""

    def _find_path(self, request: Any) -> Any:
        pattern = getattr(request, "path_pattern", None)
        if pattern is None:
            return super()._find_path(request)  # type: ignore[misc]
        cache = self.__dict__.setdefault("_path_cache", {})
        key = (request.method, pattern)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = super()._find_path(request)  # type: ignore[misc]
        return hit

    def _validate_schema(self, schema: Any, value: Any) -> None:
        cache = self.__dict__.setdefault("_schema_cache", {})
        key = tuple(schema.parts)
        validator = cache.get(key)
        if validator is None:
            validator = cache[key] = self.schema_validators_factory.create(  # type: ignore[attr-defined]
                self.spec,  # type: ignore[attr-defined]
                schema,
                format_validators=self.format_validators,  # type: ignore[attr-defined]
                extra_format_validators=self.extra_format_validators,  # type: ignore[attr-defined]
                forbid_unspecified_additional_properties=self.forbid_unspecified_additional_properties,  # type: ignore[attr-defined]
                enforce_properties_required=self.enforce_properties_required,  # type: ignore[attr-defined]
            )
        validator.validate(value)


class _RequestValidator(_FastPathMixin, V30RequestValidator):
    pass


class _ResponseValidator(_FastPathMixin, V30ResponseValidator):
    pass


_VALIDATOR: OpenAPI | None = None


def validator() -> OpenAPI:
    """The process-wide openapi-core object of the fake (built once; about half a second)."""
    global _VALIDATOR
    if _VALIDATOR is None:
        _VALIDATOR = OpenAPI.from_dict(
            spec_dict(),
            config=Config(
                request_validator_cls=_RequestValidator, response_validator_cls=_ResponseValidator
            ),
        )
    return _VALIDATOR


def _subcode_for(explanation: str) -> str:
    """Which 400 subcode a schema failure deserves (the first error decides, like the spec's
    "beim ersten Fehler ... sofort mit einem passenden Fehler")."""
    text = explanation.lower()
    if "failed to deserialize" in text:
        return "04"
    if "is too long" in text or "is too short" in text:
        return "07"
    if "is not a 'date'" in text or "is not a 'date-time'" in text:
        return "09"
    if "is not one of" in text:
        return "10"
    return "03"


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected misbehaviour. Matches requests by method, path prefix (``/v1/personen``,
    ``/token``) and a substring of the body; ``count`` None means until cleared."""

    status: int | None = None
    count: int | None = 1
    method: str | None = None
    path_prefix: str | None = None
    body_contains: str | None = None
    retry_after: str | None = None
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        return not (self.body_contains and self.body_contains.encode() not in body)


# --------------------------------------------------------------------------- state


@dataclass
class FakeClient:
    client_id: str
    client_secret: str
    grants: frozenset[str] = frozenset({"client_credentials", "password", "refresh_token"})


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class _Route:
    method: str
    pattern: str  # the spec's path template, e.g. /personen/{id}
    regex: re.Pattern[str]
    handler: Callable[..., Awaitable[tuple[int, Any]]] | None  # None: specified, not implemented


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")


def _contains(value: Any, needle: str) -> bool:
    return isinstance(value, str) and needle.casefold() in value.casefold()


def _new_id() -> str:
    return str(uuid.uuid4())


#: A request body that is not JSON (400/04).
_NOT_JSON: Any = object()


def _epoch(value: str) -> float:
    """An RFC 3339 date-time (validated by the schema already) as epoch seconds."""
    import datetime as dt

    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@dataclass
class RequestLogEntry:
    method: str
    path: str
    status: int


class FakeSchulconnex:
    """The fake server's state and its ASGI app (:attr:`app`)."""

    def __init__(
        self,
        *,
        clients: list[FakeClient] | None = None,
        users: dict[str, str] | None = None,
        token_ttl: float = 300.0,
        refresh_ttl: float = 3600.0,
        mandant: str | None = None,
        orgid: str | None = None,
        max_erreichbarkeiten: int | None = None,
        validate: bool = True,
        validation: Literal["compiled", "full", "both"] = "compiled",
        clock: Callable[[], float] = time.time,
        keep_log: int = 10_000,
    ) -> None:
        self.clients = {c.client_id: c for c in (clients or [])}
        self.users = dict(users or {})  # username -> password (password grant)
        self.token_ttl = token_ttl
        self.refresh_ttl = refresh_ttl
        self.mandant = mandant or _new_id()
        self.orgid = orgid or _new_id()
        self.max_erreichbarkeiten = max_erreichbarkeiten
        self.validate = validate
        # "compiled": openapi-core's schema validators built once per operation (fast);
        # "full": openapi-core's validate_request/validate_response for every message;
        # "both": both, and a disagreement is itself recorded as a violation (the tests).
        self.validation = validation
        self._compiled = CompiledValidator(validator()) if validation != "full" else None
        self.clock = clock
        self.keep_log = keep_log
        self.persons: dict[str, Json] = {}
        self.kontexte: dict[str, Json] = {}  # with "_person" (person id)
        self.gruppen: dict[str, Json] = {}
        self.zugehoerigkeiten: dict[str, Json] = {}  # with "_gruppe" (gruppe id)
        # Indexes (insertion-ordered sets), so no request costs a scan of everything.
        self._k_by_person: dict[str, dict[str, None]] = {}
        self._z_by_gruppe: dict[str, dict[str, None]] = {}
        self._z_by_ktid: dict[str, dict[str, None]] = {}
        # Personenkontexte services already used (400/13 on DELETE), and the Löschzeitpunkt
        # (epoch seconds) of those scheduled for deletion.
        self.used_kontexte: set[str] = set()
        self._scheduled: dict[str, float] = {}
        self.tokens: dict[str, _Token] = {}
        self.refresh_tokens: dict[str, _Token] = {}
        self.faults: list[Fault] = []
        self.violations: list[Violation] = []
        self.counts: Counter[str] = Counter()  # "METHOD /pattern" -> n, and "status:NNN"
        self.log: list[RequestLogEntry] = []
        self.tokens_issued = 0
        # Test hook: called with (method, path, body) before a request is handled (after
        # faults), e.g. to change a record "concurrently" just before a PUT arrives.
        self.on_request: Callable[[str, str, bytes], None] | None = None
        self._routes = self._build_routes()
        # Routes by (first segment, number of segments): a request tries one or two patterns,
        # not all forty (the same first match as trying them all in order).
        self._route_index: dict[tuple[str, int], list[_Route]] = {}
        for route in self._routes:
            parts = route.pattern.strip("/").split("/")
            self._route_index.setdefault((parts[0], len(parts)), []).append(route)
        self.app = Starlette(
            routes=[
                Route("/token", self._token_endpoint, methods=["POST"]),
                Route("/_fake/state", self._fake_state, methods=["GET"]),
                Route("/_fake/faults", self._fake_faults, methods=["POST", "DELETE"]),
                Route("/_fake/expire-tokens", self._fake_expire, methods=["POST"]),
                Route(
                    SPEC_BASE_PATH + "/{path:path}",
                    self._dispatch,
                    methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
                ),
            ]
        )

    # ------------------------------------------------------------------ test controls

    def add_fault(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def expire_tokens(self) -> None:
        """Every access token issued so far is expired from now on (server side)."""
        now = self.clock()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now - 1)

    def reset(self) -> None:
        self.persons.clear()
        self.kontexte.clear()
        self.gruppen.clear()
        self.zugehoerigkeiten.clear()
        self._k_by_person.clear()
        self._z_by_gruppe.clear()
        self._z_by_ktid.clear()
        self.used_kontexte.clear()
        self._scheduled.clear()
        self.violations.clear()
        self.counts.clear()
        self.log.clear()
        self.faults.clear()

    def request_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.kind == "request"]

    def mark_used(self, kontext_id: str) -> None:
        """The personenkontext was delivered to a service (a login): no direct DELETE now."""
        self.used_kontexte.add(kontext_id)

    def run_scheduled_deletions(self, now: float | None = None) -> list[str]:
        """Delete the personenkontexte whose Löschzeitpunkt has come (with their memberships);
        returns their ids. Every API request calls this first."""
        now = self.clock() if now is None else now
        due = [kid for kid, at in self._scheduled.items() if at <= now]
        for kid in due:
            for zid in list(self._z_by_ktid.get(kid, ())):
                self._drop_z(zid)
            if kid in self.kontexte:
                self._drop_kontext(kid)
            self._scheduled.pop(kid, None)
        return due

    def _put_kontext(self, kontext: Json) -> None:
        self.kontexte[kontext["id"]] = kontext
        self._k_by_person.setdefault(kontext["_person"], {})[kontext["id"]] = None
        when = (kontext.get("loeschung") or {}).get("zeitpunkt")
        if when:
            self._scheduled[kontext["id"]] = _epoch(when)
        else:
            self._scheduled.pop(kontext["id"], None)

    def _drop_kontext(self, kid: str) -> None:
        kontext = self.kontexte.pop(kid)
        self._k_by_person.get(kontext["_person"], {}).pop(kid, None)
        self._scheduled.pop(kid, None)
        self.used_kontexte.discard(kid)

    def _put_z(self, z: Json) -> None:
        old = self.zugehoerigkeiten.get(z["id"])
        if old is not None:
            self._z_by_ktid.get(old.get("ktid", ""), {}).pop(z["id"], None)
        self.zugehoerigkeiten[z["id"]] = z
        self._z_by_gruppe.setdefault(z["_gruppe"], {})[z["id"]] = None
        self._z_by_ktid.setdefault(z.get("ktid", ""), {})[z["id"]] = None

    def _drop_z(self, zid: str) -> None:
        z = self.zugehoerigkeiten.pop(zid)
        self._z_by_gruppe.get(z["_gruppe"], {}).pop(zid, None)
        self._z_by_ktid.get(z.get("ktid", ""), {}).pop(zid, None)

    # Seeding helpers (what another source system or an administrator would have created).

    def seed_person(
        self, person: Json, kontexte: list[Json] | None = None, *, revision: str = "1"
    ) -> Json:
        pid = person.get("id") or _new_id()
        stored = {**person, "id": pid, "mandant": self.mandant, "revision": revision}
        self.persons[pid] = stored
        for k in kontexte or []:
            kid = k.get("id") or _new_id()
            self._put_kontext(
                {
                    "personenstatus": "Aktiv",
                    **k,
                    "id": kid,
                    "mandant": self.mandant,
                    "organisation": {"id": self.orgid},
                    "revision": k.get("revision", "1"),
                    "_person": pid,
                }
            )
        return stored

    def seed_gruppe(self, gruppe: Json, *, revision: str = "1") -> Json:
        gid = gruppe.get("id") or _new_id()
        stored = {
            **gruppe,
            "id": gid,
            "mandant": self.mandant,
            "orgid": self.orgid,
            "revision": revision,
        }
        self.gruppen[gid] = stored
        return stored

    def seed_zugehoerigkeit(self, gruppe_id: str, z: Json, *, revision: str = "1") -> Json:
        zid = z.get("id") or _new_id()
        stored = {
            **z,
            "id": zid,
            "mandant": self.mandant,
            "revision": revision,
            "_gruppe": gruppe_id,
        }
        self._put_z(stored)
        return stored

    def touch(self, kind: str, record_id: str, **changes: Any) -> Json:
        """Change a record as a third party would (new revision): for conflict tests."""
        store = {
            "person": self.persons,
            "kontext": self.kontexte,
            "gruppe": self.gruppen,
            "zugehoerigkeit": self.zugehoerigkeiten,
        }[kind]
        record = store[record_id]
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(record.get(key), dict):
                record[key] = {**record[key], **value}
            else:
                record[key] = value
        record["revision"] = str(int(record["revision"]) + 1)
        return record

    # ------------------------------------------------------------------ token endpoint

    def _client_from(self, request: Request, form: dict[str, str]) -> FakeClient | None:
        auth = request.headers.get("authorization", "")
        client_id = secret = None
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            client_id, _, secret = raw.partition(":")
            from urllib.parse import unquote

            client_id, secret = unquote(client_id), unquote(secret)
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        client = self.clients.get(client_id or "")
        if client is None or not secrets.compare_digest(client.client_secret, secret or ""):
            return None
        return client

    def _issue(self, client_id: str, *, with_refresh: bool) -> Json:
        now = self.clock()
        access = secrets.token_urlsafe(24)
        self.tokens[access] = _Token(client_id, now + self.token_ttl)
        self.tokens_issued += 1
        body: Json = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.token_ttl),
        }
        if with_refresh:
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = _Token(client_id, now + self.refresh_ttl)
            body["refresh_token"] = refresh
        return body

    async def _token_endpoint(self, request: Request) -> Response:
        body = await request.body()
        fault = await self._apply_fault("POST", "/token", body)
        if fault is not None:
            return fault
        self.counts["POST /token"] += 1
        form = dict(parse_qsl(body.decode(errors="replace")))
        client = self._client_from(request, form)
        if client is None:
            return JSONResponse(
                {"error": "invalid_client"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="schulconnex"'},
            )
        grant = form.get("grant_type", "")
        self.counts[f"grant:{grant}"] += 1
        if grant not in client.grants:
            code = (
                "unsupported_grant_type"
                if grant not in {"client_credentials", "password", "refresh_token"}
                else "unauthorized_client"
            )
            return JSONResponse({"error": code}, status_code=400)
        if grant == "client_credentials":
            return JSONResponse(self._issue(client.client_id, with_refresh=False))
        if grant == "password":
            user, password = form.get("username", ""), form.get("password", "")
            expected = self.users.get(user)
            if expected is None or not secrets.compare_digest(expected, password):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            return JSONResponse(self._issue(client.client_id, with_refresh=True))
        refresh = self.refresh_tokens.get(form.get("refresh_token", ""))
        if (
            refresh is None
            or refresh.expires_at < self.clock()
            or refresh.client_id != client.client_id
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        issued = self._issue(client.client_id, with_refresh=False)
        return JSONResponse(issued)

    # ------------------------------------------------------------------ /_fake controls

    async def _fake_state(self, request: Request) -> Response:
        return JSONResponse(
            {
                "mandant": self.mandant,
                "orgid": self.orgid,
                "persons": len(self.persons),
                "personenkontexte": len(self.kontexte),
                "gruppen": len(self.gruppen),
                "gruppenzugehoerigkeiten": len(self.zugehoerigkeiten),
                "requests": dict(self.counts),
                "violations": [v.as_dict() for v in self.violations[-100:]],
                "faults": [f.__dict__ for f in self.faults],
            }
        )

    async def _fake_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return Response(status_code=204)
        try:
            data = json.loads(await request.body())
            fault = self.add_fault(**data)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(fault.__dict__, status_code=201)

    async def _fake_expire(self, request: Request) -> Response:
        self.expire_tokens()
        return Response(status_code=204)

    # ------------------------------------------------------------------ dispatch

    async def _apply_fault(self, method: str, path: str, body: bytes) -> Response | None:
        for fault in self.faults:
            if fault.matches(method, path, body):
                fault.hits += 1
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is None:
                    return None
                self.counts[f"fault:{fault.status}"] += 1
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return error_response(fault.status, "00", headers=headers)
        return None

    def _route(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | str | None:
        """The route, None (no such endpoint) or "method" (endpoint exists, method doesn't)."""
        found_path = False
        parts = path.strip("/").split("/")
        for route in self._route_index.get((parts[0], len(parts)), ()):
            m = route.regex.match(path)
            if m is None:
                continue
            found_path = True
            if route.method == method:
                return route, m.groupdict()
        return "method" if found_path else None

    def _authenticate(self, request: Request) -> None:
        auth = request.headers.get("authorization")
        if not auth:
            raise ApiError(401, "00", "Es wurde kein Access-Token übergeben.")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer":
            raise ApiError(401, "03")
        entry = self.tokens.get(token.strip())
        if entry is None:
            raise ApiError(401, "02")
        if entry.expires_at < self.clock():
            raise ApiError(401, "01")

    async def _dispatch(self, request: Request) -> Response:
        method = request.method.upper()
        sub = "/" + request.path_params["path"]
        full = SPEC_BASE_PATH + sub
        body = await request.body()
        fault = await self._apply_fault(method, full, body)
        if fault is not None:
            self._record(method, full, fault.status_code)
            return fault
        if self.on_request is not None:
            self.on_request(method, sub, body)
        if self._scheduled:
            self.run_scheduled_deletions()
        found = self._route(method, sub)
        if found is None:
            return self._finish(method, full, error_response(404, "00"))
        if found == "method":
            return self._finish(method, full, error_response(405, "00"))
        assert not isinstance(found, str)
        route, params = found
        self.counts[f"{method} {route.pattern}"] += 1
        try:
            self._authenticate(request)
        except ApiError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="schulconnex"'}
            return self._finish(
                method, full, error_response(exc.status, exc.subcode, exc.detail, headers)
            )
        if route.handler is None:
            return self._finish(method, full, error_response(501, "01"))
        query = request.url.query
        pairs = parse_qsl(query, keep_blank_values=True)
        names = [k for k, _ in pairs]
        repeated = sorted({k for k in names if names.count(k) > 1})
        if repeated:
            return self._finish(method, full, error_response(400, "17", ", ".join(repeated)))
        data: Any = _NOT_JSON
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                data = _NOT_JSON  # the validation explains it (400/04); without it: 400/04
        else:
            data = None
        content_type = request.headers.get("content-type", "application/json")
        # openapi-core's request object only when its full validation runs (it costs).
        vreq = (
            self._validation_request(method, sub, query, request, body, content_type, route, params)
            if self.validate and self.validation != "compiled"
            else None
        )
        if self.validate:
            problem = self._check_request(
                vreq, method, sub, route.pattern, params, dict(pairs), body, content_type, data
            )
            if problem is not None:
                self.violations.append(Violation("request", method, sub, None, problem))
                return self._finish(
                    method, full, error_response(400, _subcode_for(problem), problem[:300])
                )
        if data is _NOT_JSON:
            return self._finish(method, full, error_response(400, "04"))
        try:
            status, payload = await route.handler(params=params, query=dict(pairs), body=data)
        except ApiError as exc:
            return self._finish(method, full, error_response(exc.status, exc.subcode, exc.detail))
        raw = dumps(payload) if payload is not None else b""
        if self.validate:
            problem = self._check_response(vreq, method, sub, route.pattern, status, raw, payload)
            if problem is not None:
                self.violations.append(Violation("response", method, sub, status, problem))
                return self._finish(
                    method, full, error_response(500, "00", "invalid response: " + problem[:300])
                )
        response = Response(raw, status_code=status, media_type="application/json" if raw else None)
        return self._finish(method, full, response)

    @staticmethod
    def _validation_request(
        method: str,
        sub: str,
        query: str,
        request: Request,
        body: bytes,
        content_type: str,
        route: _Route,
        params: dict[str, str],
    ) -> ValidationRequest:
        vreq = ValidationRequest(
            method,
            sub,
            query=query,
            headers={"Authorization": request.headers.get("authorization", "")},
            body=body or None,
            content_type=content_type,
        )
        vreq.path_pattern = SPEC_BASE_PATH + route.pattern  # type: ignore[attr-defined]
        vreq.parameters.path = dict(params)
        return vreq

    def _check_request(
        self,
        vreq: ValidationRequest | None,
        method: str,
        sub: str,
        pattern: str,
        params: dict[str, str],
        query: dict[str, str],
        body: bytes,
        content_type: str,
        data: Any,
    ) -> str | None:
        compiled = full = None
        if self._compiled is not None:
            compiled = self._compiled.request(
                method,
                pattern,
                path_params=params,
                query=query,
                body=body or None,
                content_type=content_type,
                **({} if data is _NOT_JSON or data is None else {"value": data}),
            )
            self._drain_disagreements(method, sub, None)
        if vreq is not None:
            full = self._full_request(vreq)
        return self._verdict("request", method, sub, None, compiled, full)

    def _check_response(
        self,
        vreq: ValidationRequest | None,
        method: str,
        sub: str,
        pattern: str,
        status: int,
        raw: bytes,
        payload: Any,
    ) -> str | None:
        compiled = full = None
        if self._compiled is not None:
            compiled = self._compiled.response(
                method,
                pattern,
                status,
                raw or None,
                **({} if payload is None else {"payload": payload}),
            )
            self._drain_disagreements(method, sub, status)
        if vreq is not None:
            vresp = ValidationResponse(status, raw or None)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    validator().validate_response(vreq, vresp)
            except Exception as exc:
                full = _explain(exc)
        return self._verdict("response", method, sub, status, compiled, full)

    def _drain_disagreements(self, method: str, sub: str, status: int | None) -> None:
        """The compiled validator's fast checks refused what openapi-core accepts: a bug of
        the fast checks, recorded like every violation (openapi-core's verdict stood)."""
        assert self._compiled is not None
        while self._compiled.disagreements:
            message = self._compiled.disagreements.pop()
            self.violations.append(
                Violation("fast-check-disagreement", method, sub, status, message)
            )

    def _full_request(self, vreq: ValidationRequest) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Unsupported scheme type" (oauth2)
                validator().validate_request(vreq)
        except Exception as exc:
            return _explain(exc)
        return None

    def _verdict(
        self,
        kind: str,
        method: str,
        sub: str,
        status: int | None,
        compiled: str | None,
        full: str | None,
    ) -> str | None:
        if self.validation == "full":
            return full
        if self.validation == "both" and (compiled is None) != (full is None):
            self.violations.append(
                Violation(
                    f"{kind}-disagreement",
                    method,
                    sub,
                    status,
                    f"compiled: {compiled or 'valid'} | openapi-core: {full or 'valid'}",
                )
            )
            return compiled or full
        return compiled

    def _record(self, method: str, path: str, status: int) -> None:
        self.counts[f"status:{status}"] += 1
        if len(self.log) < self.keep_log:
            self.log.append(RequestLogEntry(method, path, status))

    def _finish(self, method: str, path: str, response: Response) -> Response:
        self._record(method, path, response.status_code)
        return response

    # ------------------------------------------------------------------ routes

    def _build_routes(self) -> list[_Route]:
        implemented: dict[tuple[str, str], Callable[..., Awaitable[tuple[int, Any]]]] = {
            ("GET", "/personen"): self.h_list_personen,
            ("POST", "/personen"): self.h_create_person,
            ("GET", "/personen/{id}"): self.h_get_person,
            ("PUT", "/personen/{id}"): self.h_put_person,
            ("DELETE", "/personen/{id}"): self.h_delete_person,
            ("GET", "/personen/{id}/personenkontexte"): self.h_list_kontexte_of,
            ("POST", "/personen/{id}/personenkontexte"): self.h_create_kontext,
            ("GET", "/personenkontexte"): self.h_list_kontexte,
            ("GET", "/personenkontexte/{id}"): self.h_get_kontext,
            ("PUT", "/personenkontexte/{id}"): self.h_put_kontext,
            ("DELETE", "/personenkontexte/{id}"): self.h_delete_kontext,
            ("GET", "/gruppen"): self.h_list_gruppen,
            ("POST", "/gruppen"): self.h_create_gruppe,
            ("GET", "/gruppen/{id}"): self.h_get_gruppe,
            ("PUT", "/gruppen/{id}"): self.h_put_gruppe,
            ("DELETE", "/gruppen/{id}"): self.h_delete_gruppe,
            ("GET", "/gruppen/{id}/gruppenzugehoerigkeiten"): self.h_list_zugehoerigkeiten_of,
            ("POST", "/gruppen/{id}/gruppenzugehoerigkeiten"): self.h_create_zugehoerigkeit,
            ("GET", "/gruppenzugehoerigkeiten"): self.h_list_zugehoerigkeiten,
            ("GET", "/gruppenzugehoerigkeiten/{id}"): self.h_get_zugehoerigkeit,
            ("PUT", "/gruppenzugehoerigkeiten/{id}"): self.h_put_zugehoerigkeit,
            ("DELETE", "/gruppenzugehoerigkeiten/{id}"): self.h_delete_zugehoerigkeit,
        }
        routes: list[_Route] = []
        for pattern, item in spec_dict()["paths"].items():
            for method in ("get", "post", "put", "delete", "patch"):
                if method in item:
                    handler = implemented.get((method.upper(), pattern))
                    routes.append(_Route(method.upper(), pattern, _compile(pattern), handler))
        # Templates with fixed segments first, so /personenkontexte/x/beziehungen never
        # matches a shorter template by accident (regexes are anchored anyway).
        return routes

    # ------------------------------------------------------------------ views of records

    def _person_out(self, person: Json) -> Json:
        return {k: v for k, v in person.items() if not k.startswith("_")}

    def _kontext_out(self, kontext: Json) -> Json:
        return {k: v for k, v in kontext.items() if not k.startswith("_")}

    def _kontexte_of(self, person_id: str) -> list[Json]:
        return [self._kontext_out(self.kontexte[k]) for k in self._k_by_person.get(person_id, ())]

    def _datensatz(self, person: Json) -> Json:
        return {
            "person": self._person_out(person),
            "personenkontexte": self._kontexte_of(person["id"]),
        }

    def _gruppe_out(self, gruppe: Json) -> Json:
        return {k: v for k, v in gruppe.items() if not k.startswith("_")}

    def _z_out(self, z: Json) -> Json:
        return {k: v for k, v in z.items() if not k.startswith("_")}

    def _zs_of(self, gruppe_id: str) -> list[Json]:
        return [self._z_out(self.zugehoerigkeiten[z]) for z in self._z_by_gruppe.get(gruppe_id, ())]

    def _gruppendatensatz(self, gruppe: Json, zs: list[Json] | None = None) -> Json:
        return {
            "gruppe": self._gruppe_out(gruppe),
            "gruppenzugehoerigkeiten": self._zs_of(gruppe["id"]) if zs is None else zs,
        }

    # ------------------------------------------------------------------ shared rules

    @staticmethod
    def _get(store: dict[str, Json], record_id: str) -> Json:
        record = store.get(record_id)
        if record is None:
            raise ApiError(404, "01")
        return record

    @staticmethod
    def _check_revision(record: Json, body: Any) -> None:
        revision = body.get("revision") if isinstance(body, dict) else None
        if revision != record["revision"]:
            raise ApiError(409, "00")

    @staticmethod
    def _check_immutable(record: Json, body: Json, names: tuple[str, ...]) -> None:
        for name in names:
            if name in body and body[name] != record.get(name):
                raise ApiError(400, "11", f"Attribut {name}")

    @staticmethod
    def _next_revision(record: Json) -> str:
        return str(int(record["revision"]) + 1)

    def _check_erreichbarkeiten(self, body: Json) -> None:
        limit = self.max_erreichbarkeiten
        if limit is not None and len(body.get("erreichbarkeiten") or []) > limit:
            raise ApiError(400, "19", f"Höchstens {limit} Erreichbarkeit(en).")

    def _check_loeschung(self, body: Json) -> None:
        when = (body.get("loeschung") or {}).get("zeitpunkt")
        if when and _epoch(when) < self.clock():
            # ablauf-löschen.md: "Ein Löschzeitpunkt darf nicht in der Vergangenheit liegen."
            raise ApiError(400, "09", "loeschung.zeitpunkt liegt in der Vergangenheit.")

    @staticmethod
    def _check_person_rules(body: Json) -> None:
        if not body.get("vertrauensstufe"):
            raise ApiError(400, "03", "Attribut vertrauensstufe fehlt (person.md: Anzahl 1).")

    def _check_laufzeit(self, body: Json, own_id: str | None = None) -> None:
        lz = body.get("laufzeit")
        if isinstance(lz, dict):
            if ("von" in lz and "vonlernperiode" in lz) or ("bis" in lz and "bislernperiode" in lz):
                raise ApiError(400, "16")
            if "von" in lz and "bis" in lz and lz["bis"] < lz["von"]:
                raise ApiError(400, "16", "Das Ende liegt vor dem Anfang.")
        refs = [r.get("grupid") for r in body.get("referenzgruppen") or []]
        for ref in refs:
            if ref not in self.gruppen:
                raise ApiError(400, "02", f"referenzgruppen.grupid {ref}")
        if own_id is not None and refs:
            # A cycle exists when following references from the new ones reaches us again.
            seen: set[str] = set()
            todo = list(refs)
            while todo:
                gid = todo.pop()
                if gid == own_id:
                    raise ApiError(400, "14")
                if gid in seen:
                    continue
                seen.add(gid)
                todo.extend(r.get("grupid") for r in self.gruppen[gid].get("referenzgruppen") or [])

    @staticmethod
    def _filter(
        records: list[Json], query: dict[str, str], spec: dict[str, Callable[[Json, str], bool]]
    ) -> list[Json]:
        out = records
        for name, value in query.items():
            check = spec.get(name)
            if check is not None:
                out = [r for r in out if check(r, value)]
        return out

    @staticmethod
    def _codes(value: str) -> list[str]:
        return [v.strip().casefold() for v in value.split(",") if v.strip()]

    # ------------------------------------------------------------------ personen

    async def h_list_personen(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        people = list(self.persons.values())
        if query.get("sichtfreigabe", "").casefold() == "ja":
            people = []  # this fake holds no records shared by other organisations
        people = self._filter(
            people,
            query,
            {
                "referrer": lambda p, v: _contains(p.get("referrer"), v),
                "mandant": lambda p, v: _contains(p.get("mandant"), v),
                "familienname": lambda p, v: _contains(p["name"].get("familienname"), v),
                "vorname": lambda p, v: _contains(p["name"].get("vorname"), v),
            },
        )
        return 200, [self._datensatz(p) for p in people]

    async def h_create_person(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        self._check_person_rules(body)
        pid = _new_id()
        person = {**{k: v for k, v in body.items() if k not in ("id", "mandant", "revision")}}
        person.update(id=pid, mandant=self.mandant, revision="1")
        self.persons[pid] = person
        return 201, self._person_out(person)

    async def h_get_person(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        return 200, self._datensatz(self._get(self.persons, params["id"]))

    async def h_put_person(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        person = self._get(self.persons, params["id"])
        self._check_immutable(person, body, ("id", "mandant"))
        self._check_revision(person, body)
        self._check_person_rules(body)
        new = {k: v for k, v in body.items() if k not in ("id", "mandant", "revision")}
        new.update(id=person["id"], mandant=person["mandant"], revision=self._next_revision(person))
        self.persons[person["id"]] = new
        return 200, self._person_out(new)

    async def h_delete_person(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        person = self._get(self.persons, params["id"])
        self._check_revision(person, body)
        if self._k_by_person.get(person["id"]):
            raise ApiError(400, "12")
        del self.persons[person["id"]]
        return 204, None

    # ------------------------------------------------------------------ personenkontexte

    _KONTEXT_FILTERS: dict[str, Callable[[Json, str], bool]] = {
        "referrer": lambda k, v: _contains(k.get("referrer"), v),
        "mandant": lambda k, v: _contains(k.get("mandant"), v),
        "rolle": lambda k, v: k.get("rolle") == v,
        "personenstatus": lambda k, v: k.get("personenstatus") == v,
    }

    async def h_list_kontexte_of(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        self._get(self.persons, params["id"])
        ks = [self.kontexte[k] for k in self._k_by_person.get(params["id"], ())]
        if query.get("sichtfreigabe", "").casefold() == "ja":
            ks = []
        ks = self._filter(ks, query, self._KONTEXT_FILTERS)
        return 200, [self._kontext_out(k) for k in ks]

    async def h_create_kontext(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        person = self._get(self.persons, params["id"])
        self._check_erreichbarkeiten(body)
        self._check_loeschung(body)
        for kid in self._k_by_person.get(person["id"], ()):
            if self.kontexte[kid].get("rolle") == body.get("rolle"):
                # personenkontext.md: the same organisation and role twice is not allowed.
                raise ApiError(409, "00", "Ein Personenkontext mit dieser Rolle existiert bereits.")
        kid = _new_id()
        kontext = {"personenstatus": "Aktiv", **body}
        kontext.update(
            id=kid,
            mandant=self.mandant,
            organisation={"id": self.orgid},
            revision="1",
            _person=person["id"],
        )
        self._put_kontext(kontext)
        return 201, self._kontext_out(kontext)

    async def h_list_kontexte(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        ks = list(self.kontexte.values())
        if query.get("sichtfreigabe", "").casefold() == "ja":
            ks = []
        ks = self._filter(ks, query, self._KONTEXT_FILTERS)
        # Response schema: Personendatensatz with the full person (the prose says "only the
        # id", which the schema's required attributes do not allow; the schema wins).
        return 200, [
            {
                "person": self._person_out(self.persons[k["_person"]]),
                "personenkontexte": [self._kontext_out(k)],
            }
            for k in ks
        ]

    async def h_get_kontext(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        k = self._get(self.kontexte, params["id"])
        return 200, {
            "person": self._person_out(self.persons[k["_person"]]),
            "personenkontexte": [self._kontext_out(k)],
        }

    async def h_put_kontext(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        k = self._get(self.kontexte, params["id"])
        self._check_immutable(k, body, ("id", "mandant", "organisation", "rolle", "sichtfreigabe"))
        self._check_revision(k, body)
        self._check_erreichbarkeiten(body)
        if (body.get("loeschung") or {}) != (k.get("loeschung") or {}):
            self._check_loeschung(body)
        keep = {"id", "mandant", "organisation", "rolle", "sichtfreigabe", "revision", "_person"}
        new = {kk: v for kk, v in body.items() if kk not in keep}
        new.update({kk: k[kk] for kk in keep if kk in k})
        new["revision"] = self._next_revision(k)
        self._put_kontext(new)
        return 200, self._kontext_out(new)

    async def h_delete_kontext(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        k = self._get(self.kontexte, params["id"])
        self._check_revision(k, body)
        if self._z_by_ktid.get(k["id"]) or k["id"] in self.used_kontexte:
            raise ApiError(400, "13")
        self._drop_kontext(k["id"])
        return 204, None

    # ------------------------------------------------------------------ gruppen

    def _gruppen_filters(self) -> dict[str, Callable[[Json, str], bool]]:
        def codes_all(attr: str) -> Callable[[Json, str], bool]:
            def check(g: Json, v: str) -> bool:
                have = {str(x).casefold() for x in g.get(attr) or []}
                return all(c in have for c in self._codes(v))

            return check

        def faecher(g: Json, v: str) -> bool:
            have: set[str] = set()
            for f in g.get("faecher") or []:
                have.update(
                    str(x).casefold() for x in (f.get("kennung"), f.get("bezeichnung")) if x
                )
            return all(c in have for c in self._codes(v))

        return {
            "referrer": lambda g, v: _contains(g.get("referrer"), v),
            "mandant": lambda g, v: _contains(g.get("mandant"), v),
            "bezeichnung": lambda g, v: _contains(g.get("bezeichnung"), v),
            "differenzierung": lambda g, v: (
                str(g.get("differenzierung", "")).casefold() == v.casefold()
            ),
            "optionen": codes_all("optionen"),
            "bildungsziele": codes_all("bildungsziele"),
            "jahrgangsstufen": codes_all("jahrgangsstufen"),
            "faecher": faecher,
        }

    async def h_list_gruppen(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        gs = self._filter(list(self.gruppen.values()), query, self._gruppen_filters())
        by_group: dict[str, list[Json]] = {}
        for z in self.zugehoerigkeiten.values():
            by_group.setdefault(z["_gruppe"], []).append(self._z_out(z))
        return 200, [self._gruppendatensatz(g, by_group.get(g["id"], [])) for g in gs]

    async def h_create_gruppe(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        self._check_laufzeit(body)
        gid = _new_id()
        g = {k: v for k, v in body.items() if k not in ("id", "mandant", "orgid", "revision")}
        g.update(id=gid, mandant=self.mandant, orgid=self.orgid, revision="1")
        self.gruppen[gid] = g
        return 201, self._gruppe_out(g)

    async def h_get_gruppe(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        return 200, self._gruppendatensatz(self._get(self.gruppen, params["id"]))

    async def h_put_gruppe(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        g = self._get(self.gruppen, params["id"])
        self._check_immutable(g, body, ("id", "mandant", "orgid"))
        self._check_revision(g, body)
        self._check_laufzeit(body, own_id=g["id"])
        new = {k: v for k, v in body.items() if k not in ("id", "mandant", "orgid", "revision")}
        new.update(
            id=g["id"], mandant=g["mandant"], orgid=g["orgid"], revision=self._next_revision(g)
        )
        self.gruppen[g["id"]] = new
        return 200, self._gruppe_out(new)

    async def h_delete_gruppe(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        g = self._get(self.gruppen, params["id"])
        self._check_revision(g, body)
        for zid in list(self._z_by_gruppe.get(g["id"], ())):
            self._drop_z(zid)
        del self.gruppen[g["id"]]
        return 204, None

    # ------------------------------------------------------------------ gruppenzugehörigkeiten

    def _z_filters(self) -> dict[str, Callable[[Json, str], bool]]:
        return {
            "referrer": lambda z, v: _contains(z.get("referrer"), v),
            "mandant": lambda z, v: _contains(z.get("mandant"), v),
            "rollen": lambda z, v: all(
                c in {r.casefold() for r in z.get("rollen") or []} for c in self._codes(v)
            ),
        }

    async def h_list_zugehoerigkeiten_of(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        self._get(self.gruppen, params["id"])
        zs = [self.zugehoerigkeiten[z] for z in self._z_by_gruppe.get(params["id"], ())]
        zs = self._filter(zs, query, self._z_filters())
        return 200, [self._z_out(z) for z in zs]

    def _check_ktid(self, body: Json) -> None:
        if body.get("ktid") not in self.kontexte:
            raise ApiError(400, "02", "ktid: kein Personenkontext mit dieser ID")

    async def h_create_zugehoerigkeit(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        g = self._get(self.gruppen, params["id"])
        self._check_ktid(body)
        if "von" in body and "bis" in body and body["bis"] < body["von"]:
            raise ApiError(400, "16", "Das Ende liegt vor dem Anfang.")
        zid = _new_id()
        z = {k: v for k, v in body.items() if k not in ("id", "mandant", "revision")}
        z.update(id=zid, mandant=self.mandant, revision="1", _gruppe=g["id"])
        self._put_z(z)
        return 201, self._z_out(z)

    async def h_list_zugehoerigkeiten(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        zs = self._filter(list(self.zugehoerigkeiten.values()), query, self._z_filters())
        by_group: dict[str, list[Json]] = {}
        for z in zs:
            by_group.setdefault(z["_gruppe"], []).append(self._z_out(z))
        return 200, [
            self._gruppendatensatz(self.gruppen[gid], items) for gid, items in by_group.items()
        ]

    async def h_get_zugehoerigkeit(
        self, *, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        z = self._get(self.zugehoerigkeiten, params["id"])
        return 200, self._gruppendatensatz(self.gruppen[z["_gruppe"]], [self._z_out(z)])

    async def h_put_zugehoerigkeit(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        z = self._get(self.zugehoerigkeiten, params["id"])
        self._check_immutable(z, body, ("id", "mandant"))
        self._check_revision(z, body)
        self._check_ktid(body)
        if "von" in body and "bis" in body and body["bis"] < body["von"]:
            raise ApiError(400, "16", "Das Ende liegt vor dem Anfang.")
        new = {k: v for k, v in body.items() if k not in ("id", "mandant", "revision")}
        new.update(
            id=z["id"], mandant=z["mandant"], revision=self._next_revision(z), _gruppe=z["_gruppe"]
        )
        self._put_z(new)
        return 200, self._z_out(new)

    async def h_delete_zugehoerigkeit(
        self, *, params: dict[str, str], query: dict[str, str], body: Json
    ) -> tuple[int, Any]:
        z = self._get(self.zugehoerigkeiten, params["id"])
        self._check_revision(z, body)
        self._drop_z(z["id"])
        return 204, None
