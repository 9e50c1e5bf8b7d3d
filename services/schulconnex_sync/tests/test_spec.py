"""The packaged OpenAPI files are verbatim copies, and the in-memory fix-ups are needed and
sufficient (each quirk shown failing on the raw files and passing after the fix-up)."""

from __future__ import annotations

import hashlib
import json

from jsonschema_path import SchemaPath
from openapi_core import OpenAPI
from openapi_spec_validator import validate
from schulconnex_sync_service import openapi as sc_openapi
from schulconnex_sync_service.openapi import (
    OPENAPI_DIR,
    SPEC_DIR,
    ValidationRequest,
    check_request,
    raw_spec_dict,
    spec_dict,
)

# SHA256SUMS was written from the upstream files when they were copied (byte-identical); the
# test below holds the copies to it, so no checkout of the upstream repository is needed.


def test_every_copied_file_is_byte_identical_to_its_recorded_hash() -> None:
    sums = (SPEC_DIR / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 90  # 89 OpenAPI files + License
    for line in sums:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((SPEC_DIR / name).read_bytes()).hexdigest() == digest, name
    listed = {line.split(maxsplit=1)[1] for line in sums}
    present = {f"openapi/{p.name}" for p in OPENAPI_DIR.glob("*.yaml")} | {"License"}
    assert listed == present  # nothing unlisted (an edited or added file would hide here)
    assert "CC BY-ND 4.0" in (SPEC_DIR / "SOURCE.md").read_text()


def test_the_fixed_document_is_valid_openapi_3_0_with_every_source_system_path() -> None:
    spec = spec_dict()
    validate(spec)
    assert spec["info"]["version"] == "1.7"
    assert spec["servers"][0]["url"] == "https://schulconnex.test/v1"
    for path in (
        "/personen",
        "/personen/{id}",
        "/personen/{id}/personenkontexte",
        "/personenkontexte",
        "/personenkontexte/{id}",
        "/gruppen",
        "/gruppen/{id}",
        "/gruppen/{id}/gruppenzugehoerigkeiten",
        "/gruppenzugehoerigkeiten",
        "/gruppenzugehoerigkeiten/{id}",
    ):
        assert path in spec["paths"]
    assert "&zwj;" not in json.dumps(spec)


def _valid(spec: dict[str, object], method: str, path: str, body: object) -> bool:
    api = OpenAPI(SchemaPath.from_dict(spec))  # type: ignore[arg-type]
    request = ValidationRequest(method, path, body=json.dumps(body).encode())
    try:
        api.validate_request(request)
    except Exception as exc:
        return "Security" in type(exc).__name__
    return True


V16_GRUPPE = {  # from the released v1.6 documentation (gruppendatensatz.md), abridged
    "referrer": "HHG-1281b688-d639",
    "bezeichnung": "Englisch 6b",
    "typ": "Kurs",
    "faecher": [{"kennung": "EN"}, {"bezeichnung": "Erste Hilfe"}],
    "laufzeit": {"von": "2022-08-01", "bis": "2023-07-31"},
}


def test_quirk_oneof_of_optional_objects_rejects_even_the_upstream_example() -> None:
    assert not _valid(raw_spec_dict(), "POST", "/gruppen", V16_GRUPPE)
    assert _valid(spec_dict(), "POST", "/gruppen", V16_GRUPPE)
    # The fix-up keeps the real constraints (an anyOf would have accepted these two).
    assert not _valid(
        spec_dict(), "POST", "/gruppen", {**V16_GRUPPE, "faecher": [{"kennung": "XX"}]}
    )
    assert not _valid(
        spec_dict(), "POST", "/gruppen", {**V16_GRUPPE, "laufzeit": {"von": "1.8.2022"}}
    )
    lernperiode = {**V16_GRUPPE, "laufzeit": {"vonlernperiode": "2025-1", "bis": "2026-01-31"}}
    assert _valid(spec_dict(), "POST", "/gruppen", lernperiode)
    assert not _valid(
        spec_dict(), "POST", "/gruppen", {**V16_GRUPPE, "laufzeit": {"vonlernperiode": "2099"}}
    )


def test_quirk_vertrauensstufe_is_a_person_attribute_not_a_name_one() -> None:
    person = {
        "name": {"familienname": "Muster", "vorname": "Max"},
        "vertrauensstufe": "Unbe",
        "auskunftssperre": "Nein",
    }
    assert not _valid(raw_spec_dict(), "POST", "/personen", person)
    assert _valid(spec_dict(), "POST", "/personen", person)
    assert not _valid(spec_dict(), "POST", "/personen", {**person, "name": {"vorname": "Max"}})
    assert not _valid(spec_dict(), "POST", "/personen", {**person, "vertrauensstufe": "Gut"})


def test_check_request_names_the_failing_rule() -> None:
    problem = check_request(
        ValidationRequest("POST", "/personen", body=b'{"name": {"familienname": "M"}}')
    )
    assert problem is not None and "vorname" in problem and "auskunftssperre" in problem
    assert check_request(ValidationRequest("GET", "/personen", query="familienname=M")) is None
    assert "Path not found" in (check_request(ValidationRequest("GET", "/schulen")) or "")
    assert sc_openapi.FIXUPS and len(sc_openapi.FIXUPS) == 3
