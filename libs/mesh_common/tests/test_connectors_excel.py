"""Excel import: a workbook generated with openpyxl, mapped by a definition, validated per row
(errors with row numbers and column names), written in one transaction on SQLite and
PostgreSQL (nothing half-written), and the multipart upload endpoint with its size limit."""

from __future__ import annotations

import io
import re
from datetime import date, datetime
from typing import Any

import httpx
import pytest
from mesh_common.connectors.excel import (
    ExcelError,
    ExcelImport,
    ImportedRow,
    ImportRejected,
    RowRejected,
    excel_import_router,
)
from mesh_common.mapping import load_mapping
from openpyxl import Workbook
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Column, Date, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .connectors_support import Backend, auth, backend_fixture, make_app  # noqa: F401

HEADER = ["Anrede", "Vorname", "Nachname", "E-Mail", "Geburts datum", "PLZ", "Aktiv"]
GOOD = [
    ["Frau", "Anna", "Roth", "Anna.Roth@example.org", date(1990, 2, 1), "79098", "ja"],
    ["Herr", "Ben", "Kurz", "ben@example.org", "03.04.1985", 79100, "ja"],
    ["", "Cem", "Yilmaz", "cem@example.org", None, None, "ja"],
]
MAPPING = load_mapping(
    {
        "name": "participants-xlsx",
        "filter": {"op": "ne", "field": "Aktiv", "value": "nein"},
        "tables": {"salutation": {"Frau": "Frau", "Herr": "Herr", "Divers": "Divers"}},
        "fields": [
            {
                "target": "salutation",
                "source": "Anrede",
                "transform": [{"op": "lookup", "table": "salutation", "on_missing": "error"}],
            },
            {"target": "first_name", "source": "Vorname", "transform": [{"op": "trim"}]},
            {"target": "last_name", "source": "Nachname"},
            {
                "target": "email",
                "source": "E-Mail",
                "required": True,
                "transform": [{"op": "lower"}],
            },
            {
                "target": "birth_date",
                "source": "Geburts_datum",
                "transform": [{"op": "date", "parse": "%d.%m.%Y"}],
            },
            {"target": "postcode", "source": "PLZ", "transform": [{"op": "number", "places": 0}]},
        ],
    }
)


class Person(BaseModel):
    salutation: str | None = None
    first_name: str = Field(min_length=1, max_length=80)
    last_name: str = Field(min_length=1, max_length=80)
    email: str
    birth_date: date | None = None
    postcode: str | None = Field(default=None, pattern=r"^\d{5}$")

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not re.match(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", v):
            raise ValueError("value is not a valid email address")
        return v


def workbook(rows: list[list[Any]], header: list[str] = HEADER) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Teilnehmende"
    ws.append(header)
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@pytest.fixture
async def people(backend: Backend) -> Table:
    md = MetaData()
    table = Table(
        "people",
        md,
        Column("id", Integer, primary_key=True),
        Column("first_name", String(80), nullable=False),
        Column("last_name", String(80), nullable=False),
        Column("email", String(254), nullable=False, unique=True),
        Column("birth_date", Date, nullable=True),
        Column("postcode", String(5), nullable=True),
    )
    async with backend.db.engine.begin() as conn:
        await conn.run_sync(md.create_all)
    return table


def importer(backend: Backend, people: Table, **kw: Any) -> ExcelImport[Person]:
    async def write(conn: AsyncConnection, rows: list[ImportedRow[Person]]) -> None:
        for r in rows:
            if r.record.last_name == "Fail":
                raise RowRejected(r.row, "refused by the writer", column="Nachname")
            await conn.execute(insert(people).values(r.record.model_dump(exclude={"salutation"})))

    return ExcelImport(
        MAPPING,
        Person,
        write,
        backend.db.engine,
        unique_by=lambda p: p.email,
        unique_label="e-mail address",
        **kw,
    )


async def count(backend: Backend, people: Table) -> int:
    async with backend.db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(people))).scalar_one())


BAD = [
    ["Frau", "Dora", "Lang", "dora(at)example.org", "01.01.1970", "79098", "ja"],  # row 5
    ["Madame", "Eva", "Still", "eva@example.org", "31.02.1980", "7910", "ja"],  # row 6
    ["Herr", "Finn", "", "ben@example.org", None, None, "ja"],  # row 7
    ["Herr", "Gert", "Alt", "gert@example.org", None, None, "nein"],  # row 8: filtered
]


async def test_good_rows_are_written_in_one_go(backend: Backend, people: Table) -> None:
    report = await importer(backend, people).run(workbook(GOOD))
    assert (report.rows_read, report.valid, report.imported, report.written) == (3, 3, 3, True)
    assert report.errors == []
    async with backend.db.engine.connect() as conn:
        rows = (await conn.execute(select(people).order_by(people.c.id))).all()
    assert [(r.email, r.birth_date, r.postcode) for r in rows] == [
        ("anna.roth@example.org", date(1990, 2, 1), "79098"),
        ("ben@example.org", date(1985, 4, 3), "79100"),
        ("cem@example.org", None, None),
    ]


async def test_all_or_nothing_reports_every_bad_row_and_writes_nothing(
    backend: Backend, people: Table
) -> None:
    with pytest.raises(ImportRejected) as err:
        await importer(backend, people).run(workbook(GOOD + BAD))
    report = err.value.report
    assert await count(backend, people) == 0
    assert report.written is False and report.skipped == 1 and report.rows_read == 7
    found = {(e.row, e.column, e.letter, e.message) for e in report.errors}
    assert found == {
        (5, "E-Mail", "D", "value is not a valid email address"),
        (6, "Anrede", "A", "no lookup entry for 'Madame'"),
        (6, "Geburts datum", "E", "'31.02.1980' does not match date format '%d.%m.%Y'"),
        (6, "PLZ", "F", "String should match pattern '^\\d{5}$'"),  # every problem at once
        (7, "Nachname", "C", "a value is required"),
    }
    assert err.value.status == 422
    assert "row 5" in err.value.detail
    fixed = [["Frau", "Eva", "Still", "eva@example.org", "28.02.1980", "7910", "ja"]]
    with pytest.raises(ImportRejected) as err2:
        await importer(backend, people).run(workbook(GOOD + fixed))
    assert [(e.row, e.column) for e in err2.value.report.errors] == [(5, "PLZ")]


async def test_valid_rows_only_writes_the_good_ones(backend: Backend, people: Table) -> None:
    dup = [["Herr", "Ben", "Doppelt", "BEN@example.org", None, None, "ja"]]
    report = await importer(backend, people).run(
        workbook(GOOD + dup + BAD[:1]), mode="valid_rows_only"
    )
    assert report.imported == 3 and report.written
    assert [(e.row, e.message) for e in report.errors] == [
        (5, "same e-mail address as row 3"),
        (6, "value is not a valid email address"),
    ]
    assert await count(backend, people) == 3


async def test_writer_failure_rolls_everything_back(backend: Backend, people: Table) -> None:
    rows = [*GOOD, ["Herr", "Hans", "Fail", "hans@example.org", None, None, "ja"]]
    with pytest.raises(ImportRejected) as err:
        await importer(backend, people).run(workbook(rows), mode="valid_rows_only")
    assert [(e.row, e.column, e.message) for e in err.value.report.errors] == [
        (5, "Nachname", "refused by the writer")
    ]
    assert await count(backend, people) == 0  # the three rows written before were rolled back
    # A database constraint (an email already there) rolls back the same way.
    async with backend.db.engine.begin() as conn:
        await conn.execute(
            insert(people).values(first_name="X", last_name="Y", email="cem@example.org")
        )
    with pytest.raises(ImportRejected) as err:
        await importer(backend, people).run(workbook(GOOD))
    assert "writing failed, nothing was imported: IntegrityError" in str(err.value.detail)
    assert await count(backend, people) == 1


async def test_dry_run_and_file_level_errors(backend: Backend, people: Table) -> None:
    report = await importer(backend, people).run(workbook(GOOD), dry_run=True)
    assert report.valid == 3 and report.imported == 0 and not report.written
    assert await count(backend, people) == 0
    with pytest.raises(ExcelError, match="missing column 'E-Mail'"):
        await importer(backend, people).run(
            workbook([], header=[h if h != "E-Mail" else "Email" for h in HEADER])
        )
    no_plz = await importer(backend, people).run(
        workbook(
            [["Frau", "Ida", "Ost", "ida@example.org", None, "ja"]],
            header=[h for h in HEADER if h != "PLZ"],
        ),
        dry_run=True,
    )
    assert no_plz.valid == 1 and no_plz.warnings == ["no column 'PLZ': postcode stays empty"]
    with pytest.raises(ExcelError, match="appears twice"):
        await importer(backend, people).run(workbook([], header=[*HEADER, "Vorname"]))
    with pytest.raises(ExcelError, match=r"not a readable \.xlsx"):
        await importer(backend, people).run(b"PK\x03\x04 this is no workbook")
    with pytest.raises(ExcelError, match="more than 2 data rows"):
        await importer(backend, people, max_rows=2).run(workbook(GOOD))
    with pytest.raises(ExcelError, match="no sheet named 'Kurse'"):
        await importer(backend, people, sheet="Kurse").run(workbook(GOOD))


async def test_upload_endpoint(backend: Backend, people: Table) -> None:
    async def get_import(request: Any) -> ExcelImport[Person]:
        return importer(backend, people)

    router = excel_import_router("/imports/people", get_import, max_bytes=64 * 1024)
    app = make_app(backend.hub, router)
    transport = httpx.ASGITransport(app=app)
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:

        async def upload(data: bytes, **params: Any) -> httpx.Response:
            return await client.post(
                "/imports/people",
                params=params,
                files={"file": ("teilnehmende.xlsx", data, xlsx)},
                headers=auth("staff"),
            )

        rejected = await upload(workbook(GOOD + BAD))
        assert rejected.status_code == 422
        assert rejected.headers["content-type"].startswith("application/problem+json")
        body = rejected.json()
        assert body["code"] == "excel-rows-invalid"
        assert {(e["row"], e["column"]) for e in body["report"]["errors"]} == {
            (5, "E-Mail"),
            (6, "Anrede"),
            (6, "Geburts datum"),
            (6, "PLZ"),
            (7, "Nachname"),
        }
        assert await count(backend, people) == 0
        partial = await upload(workbook(GOOD + BAD), mode="valid_rows_only")
        assert partial.status_code == 200
        assert partial.json()["imported"] == 3 and len(partial.json()["errors"]) == 5
        assert await count(backend, people) == 3
        not_xlsx = await upload(b"Vorname;Nachname\nAnna;Roth\n")
        assert not_xlsx.status_code == 422 and "not an .xlsx" in not_xlsx.json()["detail"]
        big = await upload(b"PK\x03\x04" + b"\0" * (70 * 1024))
        assert big.status_code == 413 and big.json()["code"] == "upload-too-large"
        denied = await client.post(
            "/imports/people",
            files={"file": ("a.xlsx", workbook(GOOD), xlsx)},
            headers=auth("participant"),
        )
        assert denied.status_code == 403


def test_dates_numbers_and_blank_rows_are_read_as_values() -> None:
    from mesh_common.connectors.excel import Sheet

    data = workbook(
        [[None] * 7, ["Frau", " Ada ", "Love", "a@b.de", datetime(2000, 1, 2), 1.0, ""]]
    )
    sheet = Sheet(io.BytesIO(data))
    try:
        assert [c.key for c in sheet.columns if c] == [
            "Anrede",
            "Vorname",
            "Nachname",
            "E-Mail",
            "Geburts_datum",
            "PLZ",
            "Aktiv",
        ]
        rows = list(sheet.rows())
    finally:
        sheet.close()
    assert rows == [
        (
            3,
            {
                "Anrede": "Frau",
                "Vorname": "Ada",
                "Nachname": "Love",
                "E-Mail": "a@b.de",
                "Geburts_datum": date(2000, 1, 2),
                "PLZ": 1,
                "Aktiv": None,
            },
        )
    ]
