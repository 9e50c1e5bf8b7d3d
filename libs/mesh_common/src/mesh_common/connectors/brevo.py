"""Brevo (newsletter) API v3 client for contacts: create, update, read, batch import.

Requests carry the account's key in the ``api-key`` header. Brevo limits the contacts
endpoints per account (10 requests/s on the general plan, 20 or 60 on larger ones); the client
keeps to ``rate_limit`` itself with a :class:`~mesh_common.connectors.ratelimit.RateLimiter`
(shared by every call of one client) and, should Brevo still answer 429, waits what
``Retry-After`` or ``x-sib-ratelimit-reset`` says (or backs off exponentially), at most
``max_retries`` times, then raises :class:`BrevoRateLimited`. Connection failures before a
request was sent are retried the same bounded way; a request that may have reached Brevo is
retried only when it is idempotent (GET/PUT/DELETE), so a contact is never created twice
behind our back.

Errors come back as :class:`BrevoError` with Brevo's ``code`` (``duplicate_parameter``,
``document_not_found``, ``invalid_parameter``, ``unauthorized`` ...) and message. The key is
never logged or put in an error. This module must not know about participants or mappings.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from mesh_common.connectors.ratelimit import RateLimiter

log = logging.getLogger("mesh.connectors.brevo")

DEFAULT_BASE_URL = "https://api.brevo.com"
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "HEAD"})
_RETRY_STATUS = frozenset({502, 503, 504})


class BrevoError(Exception):
    """Brevo answered with an error (or could not be reached)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"Brevo {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.metadata = dict(metadata or {})

    @property
    def is_duplicate(self) -> bool:
        return self.code == "duplicate_parameter"

    @property
    def is_not_found(self) -> bool:
        return self.status == 404 or self.code == "document_not_found"


class BrevoRateLimited(BrevoError):
    """Still 429 after the bounded retries."""


class BrevoUnavailable(BrevoError):
    """Network failure or 5xx after the bounded retries (status 0: no answer at all)."""


@dataclass
class BatchResult:
    success_ids: list[Any] = field(default_factory=list)
    failure_ids: list[Any] = field(default_factory=list)


@dataclass
class ClientStats:
    requests: int = 0
    rate_limited: int = 0  # 429 answers received
    retries: int = 0
    waited_seconds: float = 0.0  # time spent waiting for the limiter or a Retry-After


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``x-sib-ratelimit-reset``."""
    waits: list[float] = []
    value = resp.headers.get("retry-after")
    if value:
        try:
            waits.append(float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                waits.append(when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = resp.headers.get("x-sib-ratelimit-reset")
    if reset:
        try:
            waits.append(float(reset))
        except ValueError:
            pass
    return max(waits) if waits else None


def _error(resp: httpx.Response) -> BrevoError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or "unknown")
        message = str(body.get("message") or resp.reason_phrase)
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
    else:
        code, message, metadata = "unknown", resp.reason_phrase or "error", None
    cls = BrevoRateLimited if resp.status_code == 429 else BrevoError
    if resp.status_code >= 500:
        cls = BrevoUnavailable
    return cls(resp.status_code, code, message, metadata)


class BrevoClient:
    """Async client of one Brevo account. Use as ``async with BrevoClient(...) as brevo:``."""

    def __init__(
        self,
        api_key: str | SecretStr,
        *,
        base_url: str = DEFAULT_BASE_URL,
        rate_limit: float = 10.0,
        limiter: RateLimiter | None = None,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        max_wait: float = 30.0,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.limiter = limiter or RateLimiter.per_second(rate_limit)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_wait = max_wait
        self.stats = ClientStats()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/v3",
            headers={"api-key": key, "accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> BrevoClient:
        """From :class:`~mesh_common.connectors.connections.BrevoSettings`."""
        kw.setdefault("base_url", settings.base_url)
        kw.setdefault("rate_limit", settings.rate_limit_per_second)
        kw.setdefault("timeout", settings.timeout_seconds)
        return cls(settings.api_key, **kw)

    async def __aenter__(self) -> BrevoClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"BrevoClient(base_url={str(self._http.base_url)!r})"

    # ---------------------------------------------------------------- transport

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_wait, self.backoff_base * 2.0**attempt)) * (
            0.5 + random.random() / 2
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            self.stats.waited_seconds += await self.limiter.acquire()
            self.stats.requests += 1
            try:
                resp = await self._http.request(method, path, json=json, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Never sent: safe to retry whatever the method.
                failure: BrevoError = BrevoUnavailable(0, "unreachable", type(exc).__name__)
                if attempt >= self.max_retries:
                    raise failure from None
                await self._wait(self._backoff(attempt))
                attempt += 1
                continue
            except httpx.TransportError as exc:
                failure = BrevoUnavailable(0, "transport_error", type(exc).__name__)
                if method not in _IDEMPOTENT or attempt >= self.max_retries:
                    raise failure from None
                await self._wait(self._backoff(attempt))
                attempt += 1
                continue
            if resp.status_code == 429:
                self.stats.rate_limited += 1
                if attempt >= self.max_retries:
                    raise _error(resp)
                wait = min(self.max_wait, _retry_after(resp) or self._backoff(attempt))
                log.info("brevo rate limit hit; waiting %.2f s", wait)
                # Everybody sharing the limiter waits, not only this call.
                self.limiter.pause(max(wait, 0.0))
                attempt += 1
                self.stats.retries += 1
                continue
            if resp.status_code in _RETRY_STATUS and method in _IDEMPOTENT:
                if attempt < self.max_retries:
                    await self._wait(self._backoff(attempt))
                    attempt += 1
                    continue
            if resp.status_code >= 400:
                raise _error(resp)
            return resp

    async def _wait(self, seconds: float) -> None:
        self.stats.retries += 1
        self.stats.waited_seconds += seconds
        await asyncio.sleep(seconds)

    @staticmethod
    def _ident(identifier: str | int) -> str:
        return "/contacts/" + quote(str(identifier), safe="")

    # ---------------------------------------------------------------- account

    async def account(self) -> dict[str, Any]:
        """``GET /v3/account`` (what "test connection" calls)."""
        body = (await self._request("GET", "/account")).json()
        return body if isinstance(body, dict) else {}

    # ---------------------------------------------------------------- contacts

    async def create_contact(
        self,
        *,
        email: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        list_ids: Sequence[int] | None = None,
        ext_id: str | None = None,
        update_enabled: bool = False,
        email_blacklisted: bool | None = None,
    ) -> int | None:
        """``POST /v3/contacts``; the new contact's id (None when ``update_enabled`` updated an
        existing one: Brevo answers 204 then). A taken email raises ``duplicate_parameter``."""
        body: dict[str, Any] = {}
        if email is not None:
            body["email"] = email
        if ext_id is not None:
            body["ext_id"] = ext_id
        if attributes:
            body["attributes"] = dict(attributes)
        if list_ids:
            body["listIds"] = list(list_ids)
        if update_enabled:
            body["updateEnabled"] = True
        if email_blacklisted is not None:
            body["emailBlacklisted"] = email_blacklisted
        resp = await self._request("POST", "/contacts", json=body)
        if resp.status_code == 204 or not resp.content:
            return None
        value = resp.json().get("id")
        return int(value) if value is not None else None

    async def update_contact(
        self,
        identifier: str | int,
        *,
        identifier_type: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        list_ids: Sequence[int] | None = None,
        unlink_list_ids: Sequence[int] | None = None,
        email_blacklisted: bool | None = None,
        ext_id: str | None = None,
    ) -> None:
        """``PUT /v3/contacts/{identifier}`` (204). ``identifier_type``: ``email_id``,
        ``contact_id``, ``ext_id``, ``phone_id`` ... (Brevo infers email or id without it). A
        new email goes in ``attributes["EMAIL"]``."""
        body: dict[str, Any] = {}
        if attributes:
            body["attributes"] = dict(attributes)
        if list_ids:
            body["listIds"] = list(list_ids)
        if unlink_list_ids:
            body["unlinkListIds"] = list(unlink_list_ids)
        if email_blacklisted is not None:
            body["emailBlacklisted"] = email_blacklisted
        if ext_id is not None:
            body["ext_id"] = ext_id
        params = {"identifierType": identifier_type} if identifier_type else None
        await self._request("PUT", self._ident(identifier), json=body, params=params)

    async def get_contact(
        self, identifier: str | int, *, identifier_type: str | None = None
    ) -> dict[str, Any] | None:
        """``GET /v3/contacts/{identifier}``; None when Brevo does not know the contact."""
        params = {"identifierType": identifier_type} if identifier_type else None
        try:
            resp = await self._request("GET", self._ident(identifier), params=params)
        except BrevoError as exc:
            if exc.is_not_found:
                return None
            raise
        body = resp.json()
        return body if isinstance(body, dict) else None

    async def delete_contact(
        self, identifier: str | int, *, identifier_type: str | None = None
    ) -> None:
        params = {"identifierType": identifier_type} if identifier_type else None
        await self._request("DELETE", self._ident(identifier), params=params)

    async def list_contacts(
        self, *, limit: int = 50, offset: int = 0, modified_since: str | None = None
    ) -> dict[str, Any]:
        """``GET /v3/contacts`` (``{"contacts": [...], "count": n}``; limit at most 1000)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if modified_since:
            params["modifiedSince"] = modified_since
        body = (await self._request("GET", "/contacts", params=params)).json()
        return body if isinstance(body, dict) else {"contacts": [], "count": 0}

    async def update_batch(self, contacts: Sequence[Mapping[str, Any]]) -> BatchResult:
        """``POST /v3/contacts/batch``: update many contacts in one request (each identified by
        ``email``, ``id`` or ``sms``). 204 = all updated; 207 lists success and failure ids."""
        resp = await self._request(
            "POST", "/contacts/batch", json={"contacts": [dict(c) for c in contacts]}
        )
        if resp.status_code == 204 or not resp.content:
            return BatchResult(success_ids=[c.get("id") or c.get("email") for c in contacts])
        body = resp.json()
        return BatchResult(
            success_ids=list(body.get("successIds") or []),
            failure_ids=list(body.get("failureIds") or []),
        )

    async def import_contacts(
        self,
        contacts: Sequence[Mapping[str, Any]],
        *,
        list_ids: Sequence[int] | None = None,
        new_list: str | None = None,
        folder_id: int | None = None,
        update_existing: bool = True,
        empty_attributes: bool = False,
        disable_notification: bool = True,
    ) -> int:
        """``POST /v3/contacts/import`` with ``jsonBody`` (``[{"email": ..., "attributes":
        {...}}]``, at most ~8 MB). Brevo imports in the background; returns the process id
        (:meth:`get_process` tells when it is done)."""
        if not list_ids and not new_list:
            raise ValueError("give list_ids or new_list: Brevo imports into a list")
        body: dict[str, Any] = {
            "jsonBody": [dict(c) for c in contacts],
            "updateExistingContacts": update_existing,
            "emptyContactsAttributes": empty_attributes,
            "disableNotification": disable_notification,
        }
        if list_ids:
            body["listIds"] = list(list_ids)
        if new_list:
            body["newList"] = {
                "listName": new_list,
                **({"folderId": folder_id} if folder_id else {}),
            }
        resp = await self._request("POST", "/contacts/import", json=body)
        return int(resp.json()["processId"])

    async def get_process(self, process_id: int) -> dict[str, Any]:
        body = (await self._request("GET", f"/processes/{int(process_id)}")).json()
        return body if isinstance(body, dict) else {}

    async def wait_process(
        self, process_id: int, *, within: float = 300.0, poll: float = 2.0
    ) -> dict[str, Any]:
        """Poll a background process until ``completed`` (bounded by ``within`` seconds)."""
        async with asyncio.timeout(within):
            while True:
                process = await self.get_process(process_id)
                if process.get("status") == "completed":
                    return process
                await asyncio.sleep(poll)

    async def create_list(self, name: str, folder_id: int) -> int:
        resp = await self._request(
            "POST", "/contacts/lists", json={"name": name, "folderId": folder_id}
        )
        return int(resp.json()["id"])
