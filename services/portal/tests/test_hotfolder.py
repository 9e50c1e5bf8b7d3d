"""Tasks: the hotfolder pull (files copied, job XML written and mailed internally, files moved
to In progress), deletion of old hotfolders, and the upload reminders per client flag."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from portal_service import models
from sqlalchemy import select

from .conftest import STAFF, Rig, activated_customer, client_data, text_of, upload


def hotfolder(rig: Rig, client_no: str, project_no: str) -> Path:
    return rig.settings.hotfolder_dir / client_no / project_no


async def test_pull_copies_files_writes_xml_and_mails_it(rig: Rig) -> None:
    browser, registered, username = await activated_customer(
        rig,
        project_no="P-77",
        recipient="erika@kunde.example",
        contacts=[
            {"contact_no": "C1", "name": "Erika <Chefin>", "email": "erika@kunde.example",
             "favourite": True},
        ],
    )  # fmt: skip
    job = registered["job_id"]
    files = {"Vorlage & Text.docx": b"docx-bytes" * 3000, "Bild.png": b"\x89PNG" + bytes(5000)}
    r = await upload(browser, job, list(files.items()))
    assert r.status_code == 201, r.text
    target = hotfolder(rig, "K-100", "P-77")
    assert target.is_dir()  # created with the job (create_hotfolder)
    assert sorted(p.name for p in target.iterdir()) == []

    execution = await rig.run_task("pull-hotfolder")
    assert execution["status"] == "succeeded", execution
    (item,) = await rig.items(execution["id"])
    assert (item["record_key"], item["action"], item["outcome"]) == ("P-77", "pull", "ok")

    assert sorted(p.name for p in target.iterdir()) == sorted([*files, "P-77.xml"])
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    xml_bytes = (target / "P-77.xml").read_bytes()
    root = ET.fromstring(xml_bytes)
    assert root.tag == "portalJob"
    assert root.find("project").get("no") == "P-77"
    assert root.findtext("client/name") == "Kunde K-100"
    assert root.find("contact").text == "Erika <Chefin>"
    assert root.find("contact").get("source") == "favourite-contact"
    assert root.findtext("portalUser") == username
    listed = {f.get("name"): f for f in root.iter("file")}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name].get("sha256") == hashlib.sha256(data).hexdigest()
        assert int(listed[name].get("size")) == len(data)

    # The internal mail carries exactly that XML.
    (mail,) = await rig.mails_to("intake@agentur.example")
    assert mail["Subject"] == "Hotfolder: P-77, 2 neue Datei(en) von Kunde K-100"
    assert "- Vorlage & Text.docx (30000 Bytes)" in text_of(mail)
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_filename() == "P-77.xml"
    assert attachment.get_content_type() == "application/xml"
    assert attachment.get_content() == xml_bytes

    # In the portal the files moved from Incoming to In progress.
    detail = (await rig.client.get(f"/jobs/{job}", headers=STAFF)).json()
    assert {(f["name"], f["folder"]) for f in detail["files"]} == {
        (n, "in_progress") for n in files
    }
    assert all(f["pulled_at"] for f in detail["files"])
    page = await browser.get(f"/public/jobs/{job}")
    in_progress = page.text.split('id="folder-in_progress"')[1].split("</section>")[0]
    assert "Vorlage &amp; Text.docx" in in_progress
    async with rig.portal.db.sessionmaker() as session:
        types = (await session.execute(select(models.outbox.c.type))).scalars().all()
    assert "portal.files_pulled.v1" in types

    # Nothing new: the next run pulls nothing. A new upload: the XML lists all three.
    again = await rig.run_task("pull-hotfolder")
    assert again["counts"]["processed"] == 0
    assert (await upload(browser, job, [("Nachtrag.txt", b"more")])).status_code == 201
    third = await rig.run_task("pull-hotfolder")
    assert third["counts"]["succeeded"] == 1
    root = ET.fromstring((target / "P-77.xml").read_bytes())
    assert {f.get("name") for f in root.iter("file")} == {*files, "Nachtrag.txt"}
    await rig.mails_to("intake@agentur.example", 2)


async def test_xml_survives_hostile_job_data(rig: Rig) -> None:
    description = 'Text mit <tags>, & Zeichen, "Quotes", ]]> und \x07 Steuerzeichen'
    browser, registered, _ = await activated_customer(rig, project_no="P-X")
    await rig.register("P-X", client_data(), description=description)
    assert (await upload(browser, registered["job_id"], [("a.txt", b"a")])).status_code == 201
    assert (await rig.run_task("pull-hotfolder"))["status"] == "succeeded"
    root = ET.fromstring((hotfolder(rig, "K-100", "P-X") / "P-X.xml").read_bytes())
    assert root.findtext("project/description") == description.replace("\x07", "")


async def test_dry_run_and_clients_without_hotfolder(rig: Rig) -> None:
    browser, registered, _ = await activated_customer(rig, project_no="P-D")
    assert (await upload(browser, registered["job_id"], [("a.txt", b"a")])).status_code == 201
    runner = rig.runtime.extras["task_runner"]
    dry = await runner.wait(await runner.run_now("pull-hotfolder", dry_run=True), within=30)
    (item,) = await rig.items(dry["id"])
    assert item["action"] == "would pull"
    assert list(hotfolder(rig, "K-100", "P-D").iterdir()) == []

    nohot, _, _ = await activated_customer(
        rig, project_no="P-N", client_no="K-NOHOT", create_hotfolder=False
    )
    jobs = (await rig.client.get("/jobs", headers=STAFF, params={"client_no": "K-NOHOT"})).json()
    assert (await upload(nohot, jobs[0]["id"], [("b.txt", b"b")])).status_code == 201
    execution = await rig.run_task("pull-hotfolder")
    assert [i["record_key"] for i in await rig.items(execution["id"])] == ["P-D"]
    assert not hotfolder(rig, "K-NOHOT", "P-N").exists()
    detail = (await rig.client.get(f"/jobs/{jobs[0]['id']}", headers=STAFF)).json()
    assert [f["folder"] for f in detail["files"]] == ["incoming"]


async def test_old_hotfolders_are_deleted_after_n_days(rig: Rig) -> None:
    await rig.register("P-OLD", client_data("K-1", hotfolder_delete_days=2))
    await rig.register("P-KEEP", client_data("K-2", hotfolder_delete_days=0))
    await rig.register("P-NEW", client_data("K-3", hotfolder_delete_days=10))
    for client_no, project in (("K-1", "P-OLD"), ("K-2", "P-KEEP"), ("K-3", "P-NEW")):
        (hotfolder(rig, client_no, project) / "data.bin").write_bytes(b"x")
    rig.clock.advance(3 * 86400)
    dry = await rig.runtime.extras["task_runner"].run_now("purge-hotfolders", dry_run=True)
    await rig.runtime.extras["task_runner"].wait(dry, within=30)
    assert hotfolder(rig, "K-1", "P-OLD").exists()
    execution = await rig.run_task("purge-hotfolders")
    assert [(i["record_key"], i["outcome"]) for i in await rig.items(execution["id"])] == [
        ("P-OLD", "ok")
    ]
    assert not hotfolder(rig, "K-1", "P-OLD").exists()
    assert (hotfolder(rig, "K-2", "P-KEEP") / "data.bin").exists()
    assert (hotfolder(rig, "K-3", "P-NEW") / "data.bin").exists()
    jobs = {j["project_no"]: j for j in (await rig.client.get("/jobs", headers=STAFF)).json()}
    assert jobs["P-OLD"]["hotfolder_deleted_at"] is not None
    assert jobs["P-NEW"]["hotfolder_deleted_at"] is None
    # A hotfolder replaced by a symlink to elsewhere is refused (containment check): the item
    # fails visibly and nothing outside the hotfolder root is touched.
    outside = rig.tmp / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    new = hotfolder(rig, "K-3", "P-NEW")
    (new / "data.bin").unlink()
    new.rmdir()
    new.symlink_to(outside)
    rig.clock.advance(8 * 86400)
    execution = await rig.run_task("purge-hotfolders")
    (item,) = await rig.items(execution["id"])
    assert item["record_key"] == "P-NEW" and item["outcome"] == "failed"
    assert "leaves its folder" in item["error"]
    assert (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        # 0: no reminders at all
        (0, []),
        # 1: one per new job (the later ticket of the same job gets none)
        (1, ["P-R"]),
        # 2: one per new ticket (the job registered without a number counts as one)
        (2, ["P-R", "P-R/2"]),
    ],
)
async def test_reminders_follow_the_client_flag(rig: Rig, flag: int, expected: list[str]) -> None:
    data = client_data("K-R", portal_reminder_email_automatically=flag)
    await rig.register("P-R", data, description="Katalog 2027", due_date="2027-01-31")
    await rig.register("P-R", data, ticket_no="2", description="Katalog, Teil 2")
    await rig.register("P-R", data, ticket_no="2")  # repeated: no second reminder
    await rig.mails_to("k-r@kunde.example")  # the access mail
    execution = await rig.run_task("send-reminders")
    items = await rig.items(execution["id"])
    assert sorted(i["record_key"] for i in items) == expected
    assert all(i["outcome"] == "ok" for i in items)
    mails = await rig.mails_to("k-r@kunde.example", 1 + len(expected))
    reminders = [m for m in mails if m["Subject"].startswith("Bitte laden Sie")]
    assert sorted(m["Subject"] for m in reminders) == sorted(
        f"Bitte laden Sie Ihre Daten hoch: Vorgang {key}" for key in expected
    )
    if flag == 2:
        ticket = next(m for m in reminders if m["Subject"].endswith("P-R/2"))
        text = text_of(ticket)
        assert "Auftrag: Katalog, Teil 2" in text
        assert "Benutzername: k-r" in text
        assert "request-link?username=k-r" in text
        assert "token=" not in text  # reminders carry no activation token
    # Sent once: the next run has nothing to do.
    assert (await rig.run_task("send-reminders"))["counts"]["processed"] == 0


async def test_reminder_is_skipped_when_files_arrived(rig_factory: Any, clamd_server: Any) -> None:
    rig: Rig = await rig_factory(clamd_server, portal_reminder_delay_minutes=60)
    browser, registered, _ = await activated_customer(rig, project_no="P-S")
    # Not due yet.
    assert (await rig.run_task("send-reminders"))["counts"]["processed"] == 0
    assert (await upload(browser, registered["job_id"], [("a.txt", b"a")])).status_code == 201
    rig.clock.advance(3601)
    execution = await rig.run_task("send-reminders")
    (item,) = await rig.items(execution["id"])
    assert item["outcome"] == "skipped"
    assert item["detail"] == {"note": "files were uploaded to the job already"}
    detail = (await rig.client.get(f"/jobs/{registered['job_id']}", headers=STAFF)).json()
    assert detail["upload_requests"][0]["status"] == "skipped"
