"""Stored mapping definitions: validation with located errors (unknown transform, unknown
source field), versions, optimistic concurrency, JSON/YAML import and export over REST, reuse
by name from a task, preview."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import yaml
from mesh_common.errors import Conflict, NotFound
from mesh_common.mapping import MappingValidationError
from pydantic import BaseModel

from .connectors_support import Backend, api_fixture, auth, backend_fixture  # noqa: F401


class Participant(BaseModel):
    id: int
    first_name: str
    last_name: str
    email: str | None = None
    city: str | None = None


DEFN: dict[str, Any] = {
    "name": "brevo-contacts",
    "filter": {"op": "exists", "field": "email"},
    "fields": [
        {"target": "email", "source": "email", "transform": [{"op": "lower"}]},
        {"target": "attributes.FIRSTNAME", "source": "first_name"},
        {"target": "attributes.LASTNAME", "source": "last_name", "transform": [{"op": "upper"}]},
        {"target": "attributes.ORT", "source": "city"},
    ],
}


def variant(**changes: Any) -> dict[str, Any]:
    return {**DEFN, **changes}


async def test_versions_unchanged_saves_and_stale_base(backend: Backend) -> None:
    store = backend.hub.mappings
    store.add_source("participants", Participant)
    first = await store.save(DEFN, source="participants", actor="alice")
    assert first.created and first.mapping.version == 1
    assert first.mapping.definition.version == 1
    same = await store.save(DEFN)
    assert not same.created and same.mapping.version == 1  # identical content: no new version
    changed = variant(fields=[*DEFN["fields"], {"target": "kind", "const": "participant"}])
    second = await store.save(changed, base_version=1, actor="bob")
    assert second.created and second.mapping.version == 2
    with pytest.raises(Conflict) as err:
        await store.save(variant(description="x"), base_version=1)
    assert err.value.code == "mapping-version-conflict"
    assert [m.version for m in await store.versions("brevo-contacts")] == [1, 2]
    assert (await store.get("brevo-contacts", 1)).created_by == "alice"
    assert (await store.get("brevo-contacts")).version == 2
    with pytest.raises(NotFound):
        await store.get("brevo-contacts", 7)
    latest = await store.latest_all()
    assert [(m.name, m.version) for m in latest] == [("brevo-contacts", 2)]


async def test_concurrent_saves_get_distinct_versions(backend: Backend) -> None:
    store = backend.hub.mappings
    results = await asyncio.gather(
        *(
            store.save(variant(fields=[*DEFN["fields"], {"target": "n", "const": i}]))
            for i in range(4)
        ),
        return_exceptions=True,
    )
    versions = sorted(r.mapping.version for r in results if not isinstance(r, Exception))
    assert versions == list(range(1, len(versions) + 1))
    assert len(versions) >= 2
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, Exception))


async def test_unknown_transform_and_source_are_located(backend: Backend) -> None:
    store = backend.hub.mappings
    store.add_source("participants", Participant)
    bad = variant(
        fields=[
            {"target": "email", "source": "emial"},
            {"target": "x", "source": "first_name", "transform": [{"op": "reverse"}]},
            {"target": "y", "concat": {"parts": ["first_name", "lastname"]}},
        ]
    )
    with pytest.raises(MappingValidationError) as err:
        await store.save(bad, source="participants")
    assert dict(err.value.errors) == {
        "fields[1].transform[0]": "unknown transform 'reverse' (known: trim, upper, lower, "
        "truncate, default, lookup, date, datetime, number)"
    }
    fixed = variant(fields=[bad["fields"][0], bad["fields"][2]])
    with pytest.raises(MappingValidationError) as err:
        await store.save(fixed, source="participants")
    assert dict(err.value.errors) == {
        "fields[0].source": "unknown source field 'emial' (did you mean 'email'?)",
        "fields[1].concat.parts[1]": "unknown source field 'lastname' (did you mean 'last_name'?)",
    }
    assert err.value.status == 422
    assert await store.latest_all() == []  # nothing stored
    with pytest.raises(Exception, match="unknown source schema"):
        await store.save(DEFN, source="nope")


async def test_tasks_use_mappings_by_name_and_a_raising_transform_is_a_record_error(
    backend: Backend,
) -> None:
    store = backend.hub.mappings
    await store.save(
        variant(
            fields=[
                {"target": "email", "source": "email"},
                {
                    "target": "born",
                    "source": "birth",
                    "transform": [{"op": "date", "parse": "%d.%m.%Y"}],
                },
            ]
        )
    )
    compiled = await store.compiled("brevo-contacts")
    assert compiled is await store.compiled("brevo-contacts")  # cached per version
    good, bad, skipped = compiled.run(
        [
            {"email": "a@x.de", "birth": "01.02.1990"},
            {"email": "b@x.de", "birth": "1990-02-31"},
            {"email": None},
        ]
    )
    assert good.record == {"email": "a@x.de", "born": "1990-02-01"}
    assert bad.record is None
    assert [(e.field, e.message) for e in bad.errors] == [
        ("born", "'1990-02-31' does not match date format '%d.%m.%Y'")
    ]
    assert skipped.skipped


async def test_rest_import_export_round_trip_yaml_and_json(api: httpx.AsyncClient) -> None:
    text = yaml.safe_dump(DEFN, sort_keys=False)
    denied = await api.post(
        "/mappings", content=text, headers={**auth("staff"), "content-type": "application/yaml"}
    )
    assert denied.status_code == 403
    saved = await api.post(
        "/mappings",
        content=text,
        params={"comment": "first"},
        headers={**auth("admin", subject="alice"), "content-type": "application/yaml"},
    )
    assert saved.status_code == 201, saved.text
    assert saved.json()["mapping"]["version"] == 1
    again = await api.post("/mappings", json=DEFN, headers=auth("admin"))
    assert again.status_code == 200 and again.json()["created"] is False
    exported = await api.get(
        "/mappings/brevo-contacts/export", params={"format": "yaml"}, headers=auth("staff")
    )
    assert exported.headers["content-type"].startswith("application/yaml")
    assert "brevo-contacts.v1.yaml" in exported.headers["content-disposition"]
    round_trip = yaml.safe_load(exported.text)
    assert round_trip["fields"] == DEFN["fields"] and round_trip["version"] == 1
    as_json = await api.get(
        "/mappings/brevo-contacts/export", params={"format": "json"}, headers=auth("staff")
    )
    assert as_json.json()["filter"] == DEFN["filter"]
    listed = await api.get("/mappings", headers=auth("staff"))
    assert [(m["name"], m["version"], m["definition"]) for m in listed.json()] == [
        ("brevo-contacts", 1, None)
    ]
    preview = await api.post(
        "/mappings/brevo-contacts/preview",
        json={"records": [{"email": "A@X.de", "first_name": "Anna", "last_name": "Roth"}, {}]},
        headers=auth("staff"),
    )
    assert preview.json() == [
        {
            "record": {
                "email": "a@x.de",
                "attributes": {"FIRSTNAME": "Anna", "LASTNAME": "ROTH", "ORT": None},
            },
            "skipped": False,
            "errors": [],
        },
        {"record": None, "skipped": True, "errors": []},
    ]


async def test_rest_errors_are_problem_json_with_locations(
    backend: Backend, api: httpx.AsyncClient
) -> None:
    backend.hub.mappings.add_source("participants", Participant)
    bad = variant(fields=[{"target": "email", "source": "emial"}])
    resp = await api.post(
        "/mappings", json=bad, params={"source": "participants"}, headers=auth("admin")
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "invalid-mapping"
    assert resp.json()["errors"] == [
        {
            "loc": "fields[0].source",
            "message": "unknown source field 'emial' (did you mean 'email'?)",
        }
    ]
    broken = await api.post(
        "/mappings",
        content="name: [unclosed",
        headers={**auth("admin"), "content-type": "text/yaml"},
    )
    assert broken.status_code == 422 and "invalid YAML" in broken.json()["detail"]
    weird = await api.post(
        "/mappings", content="x", headers={**auth("admin"), "content-type": "text/csv"}
    )
    assert weird.status_code == 415
    check = await api.post(
        "/mappings/validate", json=bad, params={"source": "participants"}, headers=auth("staff")
    )
    assert check.json() == {
        "valid": False,
        "errors": [
            {
                "loc": "fields[0].source",
                "message": "unknown source field 'emial' (did you mean 'email'?)",
            }
        ],
    }
    sources = (await api.get("/mappings/sources", headers=auth("staff"))).json()
    assert sources == [
        {"name": "participants", "fields": ["id", "first_name", "last_name", "email", "city"]}
    ]
    missing = await api.get("/mappings/nope", headers=auth("staff"))
    assert missing.status_code == 404 and missing.json()["code"] == "mapping-not-found"
