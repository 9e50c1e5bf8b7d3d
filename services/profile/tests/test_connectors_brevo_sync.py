"""The connector framework hosted by profile, end to end through the app's HTTP API: a Brevo
connection against the fake Brevo over real HTTP, the participant → Brevo contact sync as a task
(dry run, create, unchanged, update, per-record failure, retry failed only, shared e-mail), and the
Excel participant import into coursedb (row errors, nothing half-written)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
from coursedb.schema import participants
from mesh_common.auth import mint_token
from mesh_common.testing.brevo_fake import FakeBrevo, serve_fake_brevo
from openpyxl import Workbook
from sqlalchemy import func, insert, select, update

from .conftest import SECRET, Rig

TASK = "brevo-contact-sync"


def admin() -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(subject="ops", secret=SECRET, roles=["admin"])}


async def run(rig: Rig, **body: Any) -> dict[str, Any]:
    started = await rig.client.post(f"/tasks/{TASK}/run", json=body, headers=admin())
    assert started.status_code == 202, started.text
    return await wait(rig, started.json()["execution_id"])


async def wait(rig: Rig, execution_id: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            got = await rig.client.get(f"/tasks/executions/{execution_id}", headers=admin())
            if got.json()["status"] != "running":
                return dict(got.json())
            await asyncio.sleep(0.05)


async def items(rig: Rig, execution_id: str) -> dict[str, dict[str, Any]]:
    got = await rig.client.get(
        f"/tasks/executions/{execution_id}/items", params={"limit": 1000}, headers=admin()
    )
    return {i["record_key"]: i for i in got.json()}


async def only_world(rig: Rig, ids: list[int]) -> None:
    """A new version of the mapping that syncs only this test's participants (the PostgreSQL
    course database is shared by the whole test session)."""
    current = await rig.client.get("/mappings/brevo-contacts", headers=admin())
    definition = current.json()["definition"]
    base = definition["filter"]
    if base.get("op") == "and" and base["of"][-1].get("field") == "id":
        base = base["of"][0]  # replace an earlier call's id list instead of narrowing it
    definition["filter"] = {"op": "and", "of": [base, {"op": "in", "field": "id", "value": ids}]}
    saved = await rig.client.post(
        "/mappings",
        json=definition,
        params={"source": "participants", "base_version": current.json()["version"]},
        headers=admin(),
    )
    assert saved.status_code == 201, saved.text


async def test_brevo_contact_sync(rig: Rig) -> None:
    w = rig.world
    key = FakeBrevo.new_key()
    fake = FakeBrevo([key])
    async with rig.engine.begin() as conn:  # dave shares alice's address (a family)
        alice_email = (
            await conn.execute(select(participants.c.email).where(participants.c.id == w.alice))
        ).scalar_one()
        dave = (
            await conn.execute(
                insert(participants).values(first_name="Dave", last_name="Adler", email=alice_email)
            )
        ).inserted_primary_key[0]
    await only_world(rig, [w.alice, w.bob, w.carol, dave])
    async with serve_fake_brevo(fake) as url:
        created = await rig.client.post(
            "/connections",
            json={"name": "brevo", "kind": "brevo", "settings": {"base_url": url, "api_key": key}},
            headers=admin(),
        )
        assert created.status_code == 201, created.text
        assert key not in created.text
        tested = await rig.client.post("/connections/brevo/test", headers=admin())
        assert tested.json()["ok"] is True, tested.text

        # Dry run: the diff as items, nothing sent, no markers.
        dry = await run(rig, dry_run=True)
        assert dry["status"] == "succeeded"
        got = await items(rig, dry["id"])
        assert got[str(w.alice)]["action"] == "create"
        assert got[str(w.alice)]["outcome"] == "skipped"
        changes = got[str(w.alice)]["detail"]["changes"]
        assert changes["email"] == "added" and changes["attributes.ORT"] == "added"
        assert alice_email not in str(got)  # values stay out of the item log
        assert fake.contacts == {}
        markers = await rig.client.get("/sync/markers", params={"system": "brevo"}, headers=admin())
        assert markers.json() == []

        # Real run: three contacts; dave is skipped (shared address).
        first = await run(rig)
        assert first["status"] == "succeeded", first
        got = await items(rig, first["id"])
        assert {k: (i["action"], i["outcome"]) for k, i in got.items()} == {
            str(w.alice): ("create", "ok"),
            str(w.bob): ("create", "ok"),
            str(w.carol): ("create", "ok"),
            str(dave): ("skip", "skipped"),
        }
        assert len(fake.contacts) == 3
        alice = fake.by_email(alice_email)
        assert alice is not None
        assert alice.attributes["FIRSTNAME"] == "Alice"
        assert alice.attributes["ANREDE"] == "Frau"
        assert alice.attributes["ORT"] == "Freiburg im Breisgau"
        links = await rig.client.get(
            "/sync/links", params={"local_key": str(w.alice)}, headers=admin()
        )
        assert [(x["system"], x["tenant"], x["external_key"]) for x in links.json()] == [
            ("brevo", "brevo", str(alice.id))
        ]

        # Nothing changed: no request to Brevo at all.
        writes = sum(1 for r in fake.log if r.method in ("POST", "PUT"))
        again = await run(rig)
        assert again["counts"]["unchanged"] == 3 and again["counts"]["succeeded"] == 0
        assert sum(1 for r in fake.log if r.method in ("POST", "PUT")) == writes

        # Ops want a mail when a sync goes (partly) wrong.
        rule = await rig.client.put(
            f"/notifications/{TASK}",
            json={"on_partial": True, "recipients": ["ops@vhs.example"]},
            headers=admin(),
        )
        assert rule.status_code == 200, rule.text

        # Alice moves, carol's address is one Brevo refuses: partial success.
        async with rig.engine.begin() as conn:
            await conn.execute(
                update(participants).where(participants.c.id == w.alice).values(city="Basel")
            )
            await conn.execute(
                update(participants)
                .where(participants.c.id == w.carol)
                .values(email="carol@localhost")
            )
        partial = await run(rig)
        assert partial["status"] == "partially_succeeded", partial
        got = await items(rig, partial["id"])
        assert (got[str(w.alice)]["action"], got[str(w.alice)]["outcome"]) == ("update", "ok")
        assert got[str(w.carol)]["outcome"] == "failed"
        assert got[str(w.carol)]["error"] == "invalid_parameter: Invalid email address"
        assert fake.contacts[alice.id].attributes["ORT"] == "Basel"
        mail = await notification_mail(rig)
        assert mail["ref"] == partial["id"] and mail["to"] == ["ops@vhs.example"]
        assert "teilweise erfolgreich" in mail["subject"]
        failed = await rig.client.get(
            "/sync/markers", params={"system": "brevo", "status": "failed"}, headers=admin()
        )
        assert [(m["local_key"], m["remark"]) for m in failed.json()] == [
            (str(w.carol), "invalid_parameter: Invalid email address")
        ]

        # Fixed at the source; "retry failed records only" touches carol alone.
        async with rig.engine.begin() as conn:
            await conn.execute(
                update(participants)
                .where(participants.c.id == w.carol)
                .values(email=f"carol.{w.carol}@example.org")
            )
        retried = await rig.client.post(f"/tasks/executions/{partial['id']}/retry", headers=admin())
        assert retried.status_code == 202
        retry = await wait(rig, retried.json()["execution_id"])
        assert retry["status"] == "succeeded" and retry["parent_id"] == partial["id"]
        assert set(await items(rig, retry["id"])) == {str(w.carol)}
        assert fake.contacts[int((await links_of(rig, w.carol))[0])].email == (
            f"carol.{w.carol}@example.org"
        )

        # Bob is no longer exported (here: the mapping's filter drops him, as a withdrawn
        # newsletter consent would): his contact is deleted in Brevo, link and hash forgotten.
        bob_contact = int((await links_of(rig, w.bob))[0])
        await only_world(rig, [w.alice, w.carol, dave])
        dry = await run(rig, dry_run=True)
        assert (await items(rig, dry["id"]))[str(w.bob)]["action"] == "delete"
        assert bob_contact in fake.contacts
        gone = await run(rig)
        assert gone["status"] == "succeeded", gone
        got = await items(rig, gone["id"])
        assert (got[str(w.bob)]["action"], got[str(w.bob)]["outcome"]) == ("delete", "ok")
        assert bob_contact not in fake.contacts and len(fake.contacts) == 2
        assert await links_of(rig, w.bob) == []
        # Exported again later: created anew (not "unchanged" against a stale hash).
        await only_world(rig, [w.alice, w.bob, w.carol, dave])
        back = await run(rig)
        assert (await items(rig, back["id"]))[str(w.bob)]["action"] == "create"
        assert len(fake.contacts) == 3

        # An emptied export (here: a filter that matches nobody) would delete every contact:
        # refused as a whole, nothing deleted, the run says why.
        await only_world(rig, [-1])
        refused = await run(rig, params={"mass_delete_min": 0})  # production: above 10 at once
        assert refused["status"] == "failed", refused
        got = await items(rig, refused["id"])
        assert got["deletions"]["outcome"] == "failed"
        assert "refused to delete 3 of 3 Brevo contacts" in got["deletions"]["error"]
        assert len(fake.contacts) == 3 and len(await links_of(rig, w.alice)) == 1
        confirmed = await run(rig, params={"mass_delete_min": 0, "allow_mass_delete": True})
        assert confirmed["status"] == "succeeded", confirmed
        assert fake.contacts == {}


async def notification_mail(rig: Rig) -> dict[str, Any]:
    """The one notification in profile's mail outbox (queued just after the execution ended)."""
    async with asyncio.timeout(10):
        while True:
            outbox = await rig.client.get(
                "/mail/outbox", params={"category": "task-notification"}, headers=admin()
            )
            items = outbox.json()["items"]
            if items:
                (mail,) = items
                return dict(mail)
            await asyncio.sleep(0.05)


async def links_of(rig: Rig, pid: int) -> list[str]:
    got = await rig.client.get("/sync/links", params={"local_key": str(pid)}, headers=admin())
    return [x["external_key"] for x in got.json()]


def workbook(rows: list[list[Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Anrede", "Vorname", "Nachname", "Geburtsdatum", "PLZ", "Ort", "E-Mail"])
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def count(rig: Rig, last_name: str) -> int:
    async with rig.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count())
                    .select_from(participants)
                    .where(participants.c.last_name == last_name)
                )
            ).scalar_one()
        )


async def test_excel_participant_import(rig: Rig) -> None:
    name = f"Import{rig.world.alice}"
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

    async def upload(rows: list[list[Any]], **params: Any) -> httpx.Response:
        return await rig.client.post(
            "/imports/participants",
            params=params,
            files={"file": ("teilnehmende.xlsx", workbook(rows), xlsx)},
            headers=admin(),
        )

    good = [
        ["Frau", "Erna", name, "01.02.1960", 79098, "Freiburg", "erna@example.org"],
        ["Herr", "Fritz", name, None, "79100", "Freiburg", None],
    ]
    bad = [
        ["Frau", "Gina", name, "31.13.1990", "79098", "Freiburg", "gina@example.org"],  # row 4
        ["Madame", "Hanna", name, None, None, None, "hanna(at)example.org"],  # row 5
    ]
    rejected = await upload(good + bad)
    assert rejected.status_code == 422
    errors = {(e["row"], e["column"]) for e in rejected.json()["report"]["errors"]}
    assert errors == {(4, "Geburtsdatum"), (5, "Anrede"), (5, "E-Mail")}
    assert await count(rig, name) == 0  # nothing half-written

    partial = await upload(good + bad, mode="valid_rows_only")
    assert partial.status_code == 200, partial.text
    assert partial.json()["imported"] == 2
    assert await count(rig, name) == 2
    async with rig.engine.connect() as conn:
        erna = (
            await conn.execute(
                select(participants).where(
                    participants.c.last_name == name, participants.c.first_name == "Erna"
                )
            )
        ).one()
    assert (erna.salutation, erna.postcode, erna.country, erna.email) == (
        "ms",
        "79098",
        "DE",
        "erna@example.org",
    )

    # The same people again: refused at the first duplicate, nothing written.
    again = await upload([["Frau", "Ida", name, None, None, None, "ida@example.org"], good[0]])
    assert again.status_code == 422
    (error,) = again.json()["report"]["errors"]
    assert error["row"] == 3 and "already in the course database" in error["message"]
    assert await count(rig, name) == 2
