"""The fake Schulconnex server itself, spoken to with plain httpx: tokens, the spec's error
bodies and codes, revisions, filters, and request/response validation against the OpenAPI files
(an invalid request is refused with the matching subcode *and* recorded as a violation)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from schulconnex_sync_service.fake import FakeServer, demo_fake

from .support import Fake

PERSON = {
    "name": {"familienname": "Muster", "vorname": "Max"},
    "vertrauensstufe": "Unbe",
    "auskunftssperre": "Nein",
}


@pytest.fixture
async def raw() -> AsyncIterator[tuple[Fake, httpx.AsyncClient]]:
    fake, creds = demo_fake(token_ttl=300, validation="both")
    async with FakeServer(fake) as server, httpx.AsyncClient(base_url=server.url) as http:
        r = await http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            auth=(creds["client_id"], creds["client_secret"]),
        )
        assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
        http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        yield Fake(fake, server, creds), http


def assert_error(r: httpx.Response, status: int, subcode: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "subcode", "titel", "beschreibung"}
    assert (body["code"], body["subcode"]) == (str(status), subcode)
    assert body["titel"] and body["beschreibung"]
    return body  # type: ignore[no-any-return]


async def test_token_endpoint_grants_and_refusals(raw: tuple[Fake, httpx.AsyncClient]) -> None:
    fake, http = raw
    c = fake.creds
    bad = await http.post(
        "/token", data={"grant_type": "client_credentials"}, auth=(c["client_id"], "wrong")
    )
    assert bad.status_code == 401 and bad.json() == {"error": "invalid_client"}
    pw = await http.post(
        "/token",
        data={"grant_type": "password", "username": c["username"], "password": c["password"]},
        auth=(c["client_id"], c["client_secret"]),
    )
    assert pw.status_code == 200 and pw.json()["refresh_token"]
    wrong_pw = await http.post(
        "/token",
        data={"grant_type": "password", "username": c["username"], "password": "nope"},
        auth=(c["client_id"], c["client_secret"]),
    )
    assert wrong_pw.json() == {"error": "invalid_grant"}
    refreshed = await http.post(  # client credentials in the form this time (client_secret_post)
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": pw.json()["refresh_token"],
            "client_id": c["client_id"],
            "client_secret": c["client_secret"],
        },
    )
    assert refreshed.status_code == 200 and refreshed.json()["access_token"]
    odd = await http.post(
        "/token", data={"grant_type": "implicit"}, auth=(c["client_id"], c["client_secret"])
    )
    assert odd.json() == {"error": "unsupported_grant_type"}


async def test_authentication_errors(raw: tuple[Fake, httpx.AsyncClient]) -> None:
    fake, http = raw
    assert_error(await http.get("/v1/personen", headers={"Authorization": ""}), 401, "00")
    assert_error(await http.get("/v1/personen", headers={"Authorization": "Basic eDp5"}), 401, "03")
    assert_error(
        await http.get("/v1/personen", headers={"Authorization": "Bearer forged"}), 401, "02"
    )
    fake.fake.expire_tokens()
    r = await http.get("/v1/personen")
    assert_error(r, 401, "01")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_endpoints_methods_and_unimplemented_ones(
    raw: tuple[Fake, httpx.AsyncClient],
) -> None:
    _, http = raw
    assert_error(await http.get("/v1/schulen"), 404, "00")
    assert_error(await http.patch("/v1/personen/x", json={}), 405, "00")
    assert_error(await http.get("/v1/organisationen"), 501, "01")  # specified, not implemented
    assert_error(await http.get("/v1/personen/unknown"), 404, "01")


async def test_invalid_requests_get_the_specs_400_and_are_recorded(
    raw: tuple[Fake, httpx.AsyncClient],
) -> None:
    fake, http = raw
    missing = await http.post("/v1/personen", json={"name": {"vorname": "Max"}})
    body = assert_error(missing, 400, "03")
    assert "familienname" in body["beschreibung"]
    too_long = await http.post(
        "/v1/personen", json={**PERSON, "name": {**PERSON["name"], "rufname": "x" * 40}}
    )
    assert_error(too_long, 400, "07")
    bad_date = await http.post("/v1/personen", json={**PERSON, "geburt": {"datum": "1.2.2000"}})
    assert_error(bad_date, 400, "09")
    bad_code = await http.post("/v1/personen", json={**PERSON, "geschlecht": "f"})
    assert_error(bad_code, 400, "10")
    not_json = await http.post(
        "/v1/personen", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(not_json, 400, "04")
    twice = await http.get("/v1/personen?familienname=a&familienname=b")
    assert_error(twice, 400, "17")
    no_level = await http.post(
        "/v1/personen", json={k: v for k, v in PERSON.items() if k != "vertrauensstufe"}
    )
    assert_error(no_level, 400, "03")  # person.md: vertrauensstufe 1
    assert len(fake.fake.request_violations()) == 5  # OpenAPI failures (not the rule of person.md)
    assert fake.fake.persons == {}
    fake.fake.violations.clear()  # expected here; the fixture's check is for client traffic


async def test_revisions_conflicts_and_full_replacement(
    raw: tuple[Fake, httpx.AsyncClient],
) -> None:
    fake, http = raw
    created = (
        await http.post(
            "/v1/personen", json={**PERSON, "geburt": {"datum": "2000-01-01", "geburtsort": "Ulm"}}
        )
    ).json()
    pid = created["id"]
    assert created["revision"] == "1" and created["mandant"] == fake.fake.mandant
    stale = await http.put(f"/v1/personen/{pid}", json={**PERSON, "revision": "0"})
    assert_error(stale, 409, "00")
    immutable = await http.put(
        f"/v1/personen/{pid}", json={**PERSON, "revision": "1", "mandant": "x"}
    )
    assert_error(immutable, 400, "11")
    # PUT replaces: what is not sent is gone (the sync therefore always sends the full record).
    updated = (await http.put(f"/v1/personen/{pid}", json={**PERSON, "revision": "1"})).json()
    assert updated["revision"] == "2" and "geburt" not in updated
    k = await http.post(f"/v1/personen/{pid}/personenkontexte", json={"rolle": "Lern"})
    assert k.status_code == 201 and k.json()["organisation"] == {"id": fake.fake.orgid}
    assert k.json()["personenstatus"] == "Aktiv"
    twice = await http.post(f"/v1/personen/{pid}/personenkontexte", json={"rolle": "Lern"})
    assert_error(twice, 409, "00")
    assert_error(
        await http.request("DELETE", f"/v1/personen/{pid}", json={"revision": "2"}), 400, "12"
    )
    kid = k.json()["id"]
    assert (
        await http.request("DELETE", f"/v1/personenkontexte/{kid}", json={"revision": "1"})
    ).status_code == 204
    assert_error(
        await http.request("DELETE", f"/v1/personen/{pid}", json={"revision": "1"}), 409, "00"
    )
    assert (
        await http.request("DELETE", f"/v1/personen/{pid}", json={"revision": "2"})
    ).status_code == 204


async def test_groups_laufzeit_rules_memberships_and_filters(
    raw: tuple[Fake, httpx.AsyncClient],
) -> None:
    fake, http = raw
    both_starts = await http.post(
        "/v1/gruppen",
        json={
            "bezeichnung": "X",
            "typ": "Kurs",
            "laufzeit": {"von": "2025-01-01", "vonlernperiode": "2025"},
        },
    )
    assert_error(both_starts, 400, "16")
    g = (
        await http.post(
            "/v1/gruppen",
            json={
                "bezeichnung": "Englisch 6b",
                "typ": "Kurs",
                "faecher": [{"kennung": "EN"}],
                "referrer": "course:1",
            },
        )
    ).json()
    p = (await http.post("/v1/personen", json={**PERSON, "referrer": "participant:12"})).json()
    await http.post("/v1/personen", json={**PERSON, "referrer": "participant:123"})
    k = (await http.post(f"/v1/personen/{p['id']}/personenkontexte", json={"rolle": "Lern"})).json()
    assert_error(
        await http.post(
            f"/v1/gruppen/{g['id']}/gruppenzugehoerigkeiten",
            json={"ktid": "nope", "rollen": ["Lern"]},
        ),
        400,
        "02",
    )
    z = await http.post(
        f"/v1/gruppen/{g['id']}/gruppenzugehoerigkeiten", json={"ktid": k["id"], "rollen": ["Lern"]}
    )
    assert z.status_code == 201
    # Filters: "contains", case-insensitive, for strings; code lists "all of".
    assert len((await http.get("/v1/personen", params={"referrer": "PARTICIPANT:12"})).json()) == 2
    assert len((await http.get("/v1/gruppen", params={"faecher": "en"})).json()) == 1
    assert (await http.get("/v1/gruppen", params={"faecher": "EN,DE"})).json() == []
    listed = (await http.get("/v1/gruppenzugehoerigkeiten", params={"rollen": "Lern"})).json()
    assert listed[0]["gruppe"]["id"] == g["id"] and len(listed[0]["gruppenzugehoerigkeiten"]) == 1
    # Deleting a group deletes its memberships (paths-gruppen-id.yaml).
    assert (
        await http.request("DELETE", f"/v1/gruppen/{g['id']}", json={"revision": "1"})
    ).status_code == 204
    assert fake.fake.zugehoerigkeiten == {}
    assert not fake.fake.violations


async def test_faults_and_slow_answers(raw: tuple[Fake, httpx.AsyncClient]) -> None:
    fake, http = raw
    fake.fake.add_fault(status=429, count=2, retry_after="3", path_prefix="/v1/personen")
    first = await http.get("/v1/personen")
    assert_error(first, 429, "00")
    assert first.headers["retry-after"] == "3"
    assert (await http.get("/v1/personen")).status_code == 429
    assert (await http.get("/v1/personen")).status_code == 200
    fake.fake.add_fault(delay=0.3, count=1)
    started = time.perf_counter()
    assert (await http.get("/v1/gruppen")).status_code == 200
    assert time.perf_counter() - started >= 0.3
    # The same controls over HTTP, for make run.
    r = await http.post("/_fake/faults", json={"status": 503, "count": 1})
    assert r.status_code == 201
    assert (await http.get("/v1/gruppen")).status_code == 503
    state = (await http.get("/_fake/state")).json()
    assert state["requests"]["fault:503"] == 1 and state["mandant"] == fake.fake.mandant


async def test_personenkontext_deletion_rules(raw: tuple[Fake, httpx.AsyncClient]) -> None:
    """ablauf-löschen.md: a used personenkontext cannot be deleted directly (400/13); a
    Löschzeitpunkt in the past is refused (400/09); at its time the fake deletes it."""
    fake, http = raw
    pid = (await http.post("/v1/personen", json=PERSON)).json()["id"]
    used = (await http.post(f"/v1/personen/{pid}/personenkontexte", json={"rolle": "Lern"})).json()
    fake.fake.mark_used(used["id"])
    r = await http.request(
        "DELETE", f"/v1/personenkontexte/{used['id']}", json={"revision": used["revision"]}
    )
    assert assert_error(r, 400, "13")["titel"] == "Personenkontext wird genutzt."
    r = await http.request("DELETE", f"/v1/personen/{pid}", json={"revision": "1"})
    assert_error(r, 400, "12")
    body = {k: v for k, v in used.items() if k != "organisation"}
    past = {**body, "loeschung": {"zeitpunkt": "2020-01-01T00:00:00Z"}}
    assert_error(await http.put(f"/v1/personenkontexte/{used['id']}", json=past), 400, "09")
    soon = time.time() + 60
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon))
    r = await http.put(
        f"/v1/personenkontexte/{used['id']}", json={**body, "loeschung": {"zeitpunkt": when}}
    )
    assert r.status_code == 200 and r.json()["loeschung"] == {"zeitpunkt": when}, r.text
    assert fake.fake.run_scheduled_deletions(now=soon - 5) == []
    assert fake.fake.run_scheduled_deletions(now=soon + 1) == [used["id"]]
    r = await http.get(f"/v1/personenkontexte/{used['id']}")
    assert_error(r, 404, "01")
    r = await http.request("DELETE", f"/v1/personen/{pid}", json={"revision": "1"})
    assert r.status_code == 204, r.text
    assert not fake.fake.request_violations()
