"""The fake's fast schema checks (openapi.FastChecks) against openapi-core, value by value:
for valid messages of every operation the sync uses and hundreds of mutations of them (wrong
types, bad codes, bad dates, too long texts, missing required and added read-only attributes),
both must give the same verdict. The fast checks decide first in the fake; openapi-core is the
reference, so any difference here is a bug of the fast checks."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from schulconnex_sync_service.openapi import CompiledValidator

PERSON = {
    "referrer": "participant:1",
    "name": {"familienname": "Muster", "vorname": "Max", "titel": "Dr.", "anrede": ["Herr"]},
    "geburt": {"datum": "1990-01-01", "geburtsort": "Erfurt"},
    "vertrauensstufe": "Unbe",
    "auskunftssperre": "Nein",
}
KONTEXT = {
    "referrer": "participant:1/Lern",
    "rolle": "Lern",
    "personenstatus": "Aktiv",
    "jahrgangsstufe": "10",
    "erreichbarkeiten": [{"typ": "E-Mail", "kennung": "max@example.org"}],
}
GRUPPE = {
    "referrer": "course:1",
    "bezeichnung": "Spanisch A1",
    "typ": "Kurs",
    "thema": "Sprachen",
    "beschreibung": "Kurzbeschreibung",
    "jahrgangsstufen": ["10"],
    "faecher": [{"kennung": "DE"}, {"bezeichnung": "Erste Hilfe"}],
    "laufzeit": {"von": "2025-09-01", "bis": "2025-12-15"},
    "referenzgruppen": [{"grupid": "g-1", "rollen": ["Lern"]}],
}
MEMBER = {"referrer": "registration:1", "ktid": "k-1", "rollen": ["Lern"], "von": "2025-09-01"}
SERVER = {"id": "x-1", "mandant": "m-1", "revision": "1"}

REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("post", "/personen", PERSON),
    ("put", "/personen/{id}", {**PERSON, **SERVER}),
    ("post", "/personen/{id}/personenkontexte", KONTEXT),
    (
        "put",
        "/personenkontexte/{id}",
        {**KONTEXT, "revision": "1", "loeschung": {"zeitpunkt": "2030-01-01T00:00:00Z"}},
    ),
    ("post", "/gruppen", GRUPPE),
    ("put", "/gruppen/{id}", {**GRUPPE, "revision": "1"}),
    ("post", "/gruppen/{id}/gruppenzugehoerigkeiten", MEMBER),
    ("put", "/gruppenzugehoerigkeiten/{id}", {**MEMBER, "revision": "1"}),
    ("delete", "/gruppen/{id}", {"revision": "1"}),
    ("delete", "/personen/{id}", {"revision": "1"}),
]
RESPONSES: list[tuple[str, str, str, Any]] = [
    ("post", "/personen", "201", {**PERSON, **SERVER}),
    (
        "get",
        "/personen",
        "200",
        [
            {
                "person": {**PERSON, **SERVER},
                "personenkontexte": [{**KONTEXT, **SERVER, "organisation": {"id": "o-1"}}],
            }
        ],
    ),
    (
        "get",
        "/gruppen/{id}",
        "200",
        {
            "gruppe": {**GRUPPE, **SERVER, "orgid": "o-1"},
            "gruppenzugehoerigkeiten": [{**MEMBER, **SERVER}],
        },
    ),
]
REPLACEMENTS: list[Any] = [
    None,
    1,
    1.5,
    True,
    [],
    {},
    "x" * 2000,
    "",
    "2025-13-45",
    "not a date",
    "2030-01-01T25:00:00Z",
    "ZZZ",
    "Lern",
    "Kurs",
    ["Lern"],
    ["ZZZ"],
    [{"typ": "Telefon"}],
    {"id": "x"},
]
ADDED: list[tuple[str, Any]] = [
    ("id", "x-9"),
    ("mandant", "m-9"),
    ("revision", "9"),
    ("orgid", "o-9"),
    ("organisation", {"id": "o-9"}),
    ("rolle", "Lehr"),
    ("sichtfreigabe", "Ja"),
    ("unbekannt", 1),
]


def mutations(value: Any) -> Iterator[Any]:
    """``value`` with one change at one place, for every place and every change."""
    if isinstance(value, dict):
        for key in list(value):
            without = {k: v for k, v in value.items() if k != key}
            yield without
            for inner in mutations(value[key]):
                yield {**value, key: inner}
        for key, added in ADDED:
            yield {**value, key: added}
    elif isinstance(value, list):
        yield []
        for i, item in enumerate(value):
            for inner in mutations(item):
                yield [*value[:i], inner, *value[i + 1 :]]
    for replacement in REPLACEMENTS:
        if replacement != value:
            yield copy.deepcopy(replacement)


def reference(validator: Any, value: Any) -> bool:
    try:
        validator.validate(value)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def compiled() -> CompiledValidator:
    return CompiledValidator()


@pytest.mark.parametrize(("method", "pattern", "body"), REQUESTS)
def test_request_bodies_agree_with_openapi_core(
    compiled: CompiledValidator, method: str, pattern: str, body: dict[str, Any]
) -> None:
    op = compiled._operation(method, pattern)
    assert op.fast_body is not None, "the operation fell back to openapi-core"
    assert op.fast_body(body) and reference(op.body, body)
    seen = refused = 0
    for value in mutations(body):
        seen += 1
        expected = reference(op.body, value)
        assert op.fast_body(value) == expected, (method, pattern, value, expected)
        refused += not expected
    assert seen > 40 and refused > seen // 4  # the mutations do reach the rules


@pytest.mark.parametrize(("method", "pattern", "status", "payload"), RESPONSES)
def test_response_bodies_agree_with_openapi_core(
    compiled: CompiledValidator, method: str, pattern: str, status: str, payload: Any
) -> None:
    op = compiled._operation(method, pattern)
    fast = op.fast_responses[status]
    assert fast is not None
    assert fast(payload) and reference(op.responses[status], payload)
    refused = 0
    for value in mutations(payload):
        expected = reference(op.responses[status], value)
        assert fast(value) == expected, (method, pattern, value, expected)
        refused += not expected
    assert refused > 20


def test_a_refusal_is_explained_by_openapi_core(compiled: CompiledValidator) -> None:
    problem = compiled.request(
        "post",
        "/personen",
        path_params={},
        query={},
        body=b'{"name": {"familienname": "M", "vorname": "X"}, "vertrauensstufe": "Nix"}',
        content_type="application/json",
    )
    assert problem is not None and "is not one of" in problem
    assert not compiled.disagreements
