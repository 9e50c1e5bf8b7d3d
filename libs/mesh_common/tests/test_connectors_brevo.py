"""The Brevo client against the fake Brevo over real HTTP: contacts, Brevo's error bodies, batch
import, the client-side 10 requests/s limit as the server sees it, and 429 handling."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from mesh_common.connectors.brevo import (
    BrevoClient,
    BrevoError,
    BrevoRateLimited,
    BrevoUnavailable,
    _retry_after,
)
from mesh_common.connectors.ratelimit import RateLimiter
from mesh_common.testing.brevo_fake import FakeBrevo, free_port, serve_fake_brevo

KEY = FakeBrevo.new_key()


@pytest.fixture
def fake() -> FakeBrevo:
    return FakeBrevo([KEY])


async def test_contacts_create_read_update_and_brevo_errors(fake: FakeBrevo) -> None:
    async with serve_fake_brevo(fake) as url, BrevoClient(KEY, base_url=url) as brevo:
        cid = await brevo.create_contact(
            email="Anna.Roth@Example.org",
            ext_id="participant:17",
            attributes={"FIRSTNAME": "Anna", "LASTNAME": "Roth", "UNKNOWN_ATTR": "x"},
            list_ids=[2],
        )
        assert isinstance(cid, int)
        contact = await brevo.get_contact("anna.roth@example.org")
        assert contact is not None
        assert contact["attributes"] == {
            "FIRSTNAME": "Anna",
            "LASTNAME": "Roth",
            "EXT_ID": "participant:17",
        }
        assert contact["listIds"] == [2]
        assert fake.ignored_attributes == ["UNKNOWN_ATTR"]
        with pytest.raises(BrevoError) as dup:
            await brevo.create_contact(email="anna.roth@example.org")
        assert (dup.value.status, dup.value.code) == (400, "duplicate_parameter")
        assert dup.value.metadata == {"duplicate_identifiers": ["email"]}
        assert dup.value.is_duplicate
        # updateEnabled turns the duplicate into an update (204, no id).
        assert (
            await brevo.create_contact(
                email="anna.roth@example.org", attributes={"ORT": "Freiburg"}, update_enabled=True
            )
            is None
        )
        await brevo.update_contact(
            "participant:17", identifier_type="ext_id", attributes={"LASTNAME": "Roth-Weber"}
        )
        by_id = await brevo.get_contact(cid)
        assert by_id is not None
        assert by_id["attributes"]["LASTNAME"] == "Roth-Weber"
        assert by_id["attributes"]["ORT"] == "Freiburg"
        assert await brevo.get_contact("nobody@example.org") is None
        with pytest.raises(BrevoError) as missing:
            await brevo.update_contact(999, attributes={"FIRSTNAME": "x"})
        assert (missing.value.status, missing.value.code) == (404, "document_not_found")
        with pytest.raises(BrevoError) as invalid:
            await brevo.create_contact(email="not-an-email")
        assert (invalid.value.code, invalid.value.message) == (
            "invalid_parameter",
            "Invalid email address",
        )
        with pytest.raises(BrevoError) as no_ident:
            await brevo.create_contact(attributes={"FIRSTNAME": "Nobody"})
        assert no_ident.value.code == "missing_parameter"
        with pytest.raises(BrevoError) as bad_list:
            await brevo.create_contact(email="c@example.org", list_ids=[99])
        assert bad_list.value.code == "document_not_found"
        # Changing the email to one that is taken is a duplicate as well.
        await brevo.create_contact(email="other@example.org")
        with pytest.raises(BrevoError, match="duplicate_parameter"):
            await brevo.update_contact(cid, attributes={"EMAIL": "other@example.org"})
        await brevo.delete_contact(cid)
        assert await brevo.get_contact(cid) is None


async def test_wrong_key_and_raw_error_bodies(fake: FakeBrevo) -> None:
    async with serve_fake_brevo(fake) as url:
        async with BrevoClient("xkeysib-wrong", base_url=url) as brevo:
            with pytest.raises(BrevoError) as err:
                await brevo.account()
        assert (err.value.status, err.value.code, err.value.message) == (
            401,
            "unauthorized",
            "Key not found",
        )
        async with httpx.AsyncClient(base_url=url, headers={"api-key": KEY}) as raw:
            r = await raw.post("/v3/contacts", content=b"{not json")
            assert r.status_code == 400 and r.json()["code"] == "bad_request"
            r = await raw.post("/v3/contacts", json={"email": "a@b.de", "listIDs": [2]})
            assert r.status_code == 400
            assert r.json() == {
                "code": "invalid_parameter",
                "message": "Invalid parameter: listIDs",
            }
            r = await raw.get("/v3/contacts/abc")
            assert r.status_code == 400  # neither email nor id without identifierType
            r = await raw.get("/v3/contacts", params={"limit": 5000})
            assert r.json()["code"] == "out_of_range"
            assert r.headers["x-sib-ratelimit-limit"] == "10"


async def test_import_and_batch_update(fake: FakeBrevo) -> None:
    async with serve_fake_brevo(fake) as url, BrevoClient(KEY, base_url=url) as brevo:
        existing = await brevo.create_contact(email="a@example.org", attributes={"FIRSTNAME": "A"})
        pid = await brevo.import_contacts(
            [
                {"email": "a@example.org", "attributes": {"FIRSTNAME": "Anna"}},
                {"email": "b@example.org", "attributes": {"FIRSTNAME": "Ben"}},
                {"email": "broken", "attributes": {}},
            ],
            list_ids=[2],
        )
        process = await brevo.wait_process(pid, within=5, poll=0.05)
        assert process["stats"] == {"imported": 1, "updated": 1, "invalid": 1}
        assert fake.by_email("a@example.org").attributes["FIRSTNAME"] == "Anna"  # type: ignore[union-attr]
        b = fake.by_email("b@example.org")
        assert b is not None and b.list_ids == {2}
        result = await brevo.update_batch(
            [
                {"id": existing, "attributes": {"ORT": "Basel"}},
                {"email": "b@example.org", "attributes": {"ORT": "Bern"}},
                {"email": "ghost@example.org", "attributes": {"ORT": "?"}},
            ]
        )
        assert sorted(result.success_ids) == sorted([existing, b.id])
        assert result.failure_ids == ["ghost@example.org"]
        with pytest.raises(ValueError):
            await brevo.import_contacts([{"email": "x@example.org"}])
        page = await brevo.list_contacts(limit=1)
        assert page["count"] == 2 and len(page["contacts"]) == 1


async def test_client_keeps_to_ten_requests_per_second(fake: FakeBrevo) -> None:
    n = 35
    async with serve_fake_brevo(fake) as url, BrevoClient(KEY, base_url=url) as brevo:
        started = time.monotonic()
        # Concurrent callers share the client's limiter.
        await asyncio.gather(*(brevo.create_contact(email=f"p{i}@example.org") for i in range(n)))
        elapsed = time.monotonic() - started
    assert len(fake.contacts) == n
    assert fake.max_per_window(period=1.0) <= 10  # as the server saw the requests arrive
    assert [r for r in fake.log if r.status == 429] == []
    assert brevo.stats.rate_limited == 0
    assert elapsed >= 3.0  # 35 requests at <= 10 per second need more than 3 s


async def test_429_with_reset_header_is_waited_out_and_bounded() -> None:
    fake = FakeBrevo([KEY], contacts_per_second=4)  # stricter than the client believes
    async with serve_fake_brevo(fake) as url:
        async with BrevoClient(KEY, base_url=url, rate_limit=10, max_retries=8) as brevo:
            await asyncio.gather(
                *(brevo.create_contact(email=f"q{i}@example.org") for i in range(16))
            )
        assert len(fake.contacts) == 16  # every record made it
        assert brevo.stats.rate_limited > 0  # ... after 429s
        assert any(r.status == 429 for r in fake.log)
        # No request was created twice by a retry.
        assert len({c.email for c in fake.contacts.values()}) == 16
        async with BrevoClient(KEY, base_url=url, rate_limit=50, max_retries=1) as impatient:
            with pytest.raises(BrevoRateLimited) as err:
                await asyncio.gather(
                    *(impatient.get_contact(f"q{i}@example.org") for i in range(20))
                )
        assert err.value.status == 429 and err.value.code == "too_many_requests"


def test_retry_after_parsing() -> None:
    def resp(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert _retry_after(resp()) is None
    assert _retry_after(resp(**{"retry-after": "3"})) == 3.0
    assert _retry_after(resp(**{"x-sib-ratelimit-reset": "0.25"})) == 0.25
    assert _retry_after(resp(**{"retry-after": "1", "x-sib-ratelimit-reset": "2"})) == 2.0
    soon = resp(
        **{"retry-after": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))}
    )
    wait = _retry_after(soon)
    assert wait is not None and 3 < wait <= 5


async def test_unreachable_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with BrevoClient(KEY, base_url=url, max_retries=2, backoff_base=0.01) as brevo:
        with pytest.raises(BrevoUnavailable) as err:
            await brevo.create_contact(email="a@example.org")
    assert err.value.status == 0 and err.value.code == "unreachable"
    assert brevo.stats.requests == 3  # first try + 2 bounded retries


async def test_rate_limiter_never_exceeds_its_window() -> None:
    now = [0.0]
    starts: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(10, 1.0, margin=0.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(45):
        await limiter.acquire()
        starts.append(now[0])
        now[0] += 0.013  # each request takes a little time
    for i, t in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < t + 1.0) <= 10
    assert starts[-1] >= 4.0  # 45 starts at 10 per second span at least 4 seconds
    limiter.pause(2.5)
    before = now[0]
    await limiter.acquire()
    assert now[0] >= before + 2.5
