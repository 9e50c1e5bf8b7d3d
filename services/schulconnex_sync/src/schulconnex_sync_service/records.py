"""Local records as Schulconnex request bodies: what we manage, the diff, the full PUT body.

The centre's database is the primary source, but only for the attributes it actually holds.
Each entity has a set of **managed fields** (paths such as ``name.vorname``); a field the local
record has no value for is not managed for that record, so nothing Schulconnex holds is ever
removed because we lack it (seed step 5: "nicht unbeabsichtigt Daten löscht"). An update is the
**full** remote record as last read, with the managed fields replaced, and its revision:
attributes someone else maintains (``geburtsort``, ``stammorganisation``, ``jahrgangsstufe``,
``faecher`` ...) travel back unchanged.

Pure functions, no IO.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from schulconnex_sync_service.local import LocalGroup, LocalMembership, LocalPerson

Path = tuple[str, ...]
Fields = dict[Path, Any]


def get_path(record: Mapping[str, Any], path: Path) -> Any:
    node: Any = record
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_path(record: dict[str, Any], path: Path, value: Any) -> None:
    node = record
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def diff(remote: Mapping[str, Any] | None, desired: Fields) -> list[str]:
    """The managed fields whose remote value differs (dotted paths, for the item log)."""
    return [
        ".".join(path) for path, value in desired.items() if get_path(remote or {}, path) != value
    ]


def merged(remote: Mapping[str, Any], desired: Fields) -> dict[str, Any]:
    """A deep copy of ``remote`` with the managed fields set: the full body of a PUT."""
    body = copy.deepcopy(dict(remote))
    for path, value in desired.items():
        set_path(body, path, value)
    return body


def built(desired: Fields, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = dict(copy.deepcopy(extra or {}))
    for path, value in desired.items():
        set_path(body, path, value)
    return body


def content_hash(desired: Fields) -> str:
    data = sorted((".".join(p), v) for p, v in desired.items())
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


# --------------------------------------------------------------------------- persons


def person_fields(local: LocalPerson) -> Fields:
    """The person attributes the centre's database manages for this record."""
    fields: Fields = {
        ("referrer",): local.key,
        ("name", "familienname"): local.familienname,
        ("name", "vorname"): local.vorname,
    }
    if local.titel:
        fields[("name", "titel")] = local.titel[:128]
    if local.anrede:
        fields[("name", "anrede")] = [local.anrede]
    if local.geburtsdatum:
        fields[("geburt", "datum")] = local.geburtsdatum
    return fields


def new_person(local: LocalPerson, *, vertrauensstufe: str) -> dict[str, Any]:
    """POST /personen body (Person-basis): the managed fields plus what creation requires."""
    return built(
        person_fields(local),
        {"vertrauensstufe": vertrauensstufe, "auskunftssperre": "Nein"},
    )


def kontext_referrer(local: LocalPerson) -> str:
    return f"{local.key}/{local.rolle}"


def kontext_fields(local: LocalPerson) -> Fields:
    fields: Fields = {("referrer",): kontext_referrer(local)}
    if local.email and "@" in local.email:
        # The centre's address is the one Schulconnex should reach the person at; only
        # managed when the centre has one.
        fields[("erreichbarkeiten",)] = [{"typ": "E-Mail", "kennung": local.email}]
    return fields


def new_kontext(local: LocalPerson) -> dict[str, Any]:
    """POST /personen/{id}/personenkontexte body (the organisation comes from the token)."""
    return built(kontext_fields(local), {"rolle": local.rolle, "personenstatus": "Aktiv"})


def find_kontext(
    kontexte: Sequence[Mapping[str, Any]],
    local: LocalPerson,
    linked_id: str | None,
    orgid: str | None,
) -> Mapping[str, Any] | None:
    """Our personenkontext of a person: the linked one, else ours by referrer, else the one with
    our role at our organisation (there can be only one: personenkontext.md)."""
    if linked_id is not None:
        for k in kontexte:
            if k.get("id") == linked_id:
                return k
    ref = kontext_referrer(local)
    for k in kontexte:
        if k.get("referrer") == ref:
            return k
    for k in kontexte:
        org = (k.get("organisation") or {}).get("id")
        if k.get("rolle") == local.rolle and (orgid is None or org == orgid):
            return k
    return None


# --------------------------------------------------------------------------- groups


def group_fields(local: LocalGroup) -> Fields:
    fields: Fields = {
        ("referrer",): local.key,
        ("bezeichnung",): local.title,
        ("typ",): "Kurs",
    }
    if local.thema:
        fields[("thema",)] = local.thema
    if local.summary:
        fields[("beschreibung",)] = local.summary[:1024]
    if local.von and local.bis:
        fields[("laufzeit",)] = {"von": local.von, "bis": local.bis}
    return fields


def new_group(local: LocalGroup) -> dict[str, Any]:
    return built(group_fields(local))


# --------------------------------------------------------------------------- memberships


def membership_fields(local: LocalMembership, ktid: str) -> Fields:
    return {("referrer",): local.key, ("ktid",): ktid, ("rollen",): list(local.rollen)}


def new_membership(local: LocalMembership, ktid: str) -> dict[str, Any]:
    return built(membership_fields(local, ktid))


def summary_of_person(datensatz: Mapping[str, Any]) -> dict[str, Any]:
    """What a person deciding a confirmation needs to see of a Schulconnex person."""
    p = datensatz.get("person") or {}
    name = p.get("name") or {}
    return {
        "id": p.get("id"),
        "referrer": p.get("referrer"),
        "familienname": name.get("familienname"),
        "vorname": name.get("vorname"),
        "geburtsdatum": (p.get("geburt") or {}).get("datum"),
        "geburtsort": (p.get("geburt") or {}).get("geburtsort"),
        "rollen": sorted(
            {k.get("rolle") for k in datensatz.get("personenkontexte") or [] if k.get("rolle")}
        ),
        "revision": p.get("revision"),
    }


def summary_of_group(gruppe: Mapping[str, Any], members: int) -> dict[str, Any]:
    return {
        "id": gruppe.get("id"),
        "referrer": gruppe.get("referrer"),
        "bezeichnung": gruppe.get("bezeichnung"),
        "typ": gruppe.get("typ"),
        "laufzeit": gruppe.get("laufzeit"),
        "mitglieder": members,
        "revision": gruppe.get("revision"),
    }
