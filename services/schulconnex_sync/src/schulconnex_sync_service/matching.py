"""Seed steps 4 and 8: which local record is which Schulconnex record, as the seed's cases.

Pure functions over plain data, no IO. Matching is by **hashing**: every record is reduced once
to normalised keys, locals are put in dicts keyed by them, and each remote record costs a few
dict lookups. There is no pair-wise comparison (100,000 × 100,000 persons take about a second,
see bench/schulconnex_matching.py).

Persons (seed step 4, six cases):

1. **key**: the Schulconnex id is in our link table, or the person's ``referrer`` is one of our
   keys and that record exists → update automatically. Both keys are used; on a clash (link
   says A, referrer says B) the **link table wins**: we stored it ourselves when we created or
   linked the person, a referrer can be edited by anyone; the PUT then corrects the referrer.
2. **all attributes equal** (family name, first name, date of birth; normalised) on both
   sides and unique on both sides → link, then update automatically.
3. **some attributes missing** on one side but the present ones equal (or the full match is not
   unique) → needs a person to confirm which local record it is.
4. the ``referrer`` looks like one of our keys but no such record exists (a restored backup)
   → import after confirmation.
5. no match at all → import after confirmation.
6. a selected local person left over after 1-4 (and not a candidate of a pending case 3) →
   create in Schulconnex.

**Gone** (seed step 9 "Löschen", not a matching case of the seed): a Schulconnex person that
would be case 4 (our ``referrer``, no such local record) **and** that our link table links to
that very key is one this centre created or matched and has deleted since. It is not offered
for import but for deletion (:attr:`PersonPlan.gone`). The referrer alone is not enough: the
seed's case 4 is exactly "our key, unknown here" after a restored backup, so only both keys
together prove ownership. A person that matches another local record by attributes (case 2) is
linked to it instead: the Schulconnex id survives (a merge of two local duplicates).

The centre's database has no place of birth, so the attribute set compared is family name,
first name and date of birth (the seed lists "Geburt: Datum, Ort"); a Schulconnex
``geburtsort`` is therefore never required. Lecturers have no date of birth: they can only
reach case 3 (names) or case 1.

Groups (seed step 8, four cases): 1 key (link or ``referrer``) → update; 2 ``referrer`` ours
but unknown → import after confirmation; 3 no match → import after confirmation (only group
types configured as importable); 4 selected course left over → create. Memberships follow the
same four cases within each matched group; their natural key (group, personenkontext) counts as
a key, so a membership someone else created for the same person and group is adopted rather than
duplicated.

Groups and memberships can also be **gone** (:data:`GONE`, case 0): ours by both keys (the link
table links the Schulconnex id to a local key and the ``referrer`` is that key) and that key no
longer exists locally → delete (seed step 9), never for records without our link: those are
case 2 (import after confirmation) or belong to another system.
"""

# Names really contain these dashes and apostrophes; they are normalised away on purpose.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import gc
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from schulconnex_sync_service.local import (
    LocalGroup,
    LocalMembership,
    LocalPerson,
    is_our_membership_key,
    parse_key,
)

_TRANSLATE = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "-": " ",
        "‐": " ",
        "–": " ",
        ".": " ",
        ",": " ",
        "'": "",
        "’": "",
        "`": "",
        "´": "",
    }
)


def normalise(value: str | None) -> str:
    """Case, umlauts (ä = ae), accents, hyphens, punctuation and spacing do not matter:
    ``"Müller-Lüdenscheidt"`` and ``"mueller  luedenscheidt"`` are the same name."""
    if not value:
        return ""
    if value.isascii():
        if value.isalpha():
            return value.lower()  # the common case, ten times cheaper than the rest
        text = value.lower()
    else:
        text = unicodedata.normalize("NFC", value.casefold())
    text = text.translate(_TRANSLATE)
    if not text.isascii():
        text = "".join(
            ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
        )
    return " ".join(text.split())


class _Normaliser(dict[str, str]):
    """``normalise`` memoised for one matching run: names repeat a lot."""

    def __missing__(self, value: str) -> str:
        result = self[value] = normalise(value)
        return result


# --------------------------------------------------------------------------- persons


@dataclass(frozen=True, slots=True)
class RemotePerson:
    """The parts of a Schulconnex Personendatensatz the matching needs."""

    id: str
    referrer: str | None
    familienname: str
    vorname: str
    geburtsdatum: str | None
    revision: str

    @classmethod
    def of(cls, datensatz: Mapping[str, Any]) -> RemotePerson:
        p = datensatz["person"]
        name = p.get("name") or {}
        return cls(
            id=p["id"],
            referrer=p.get("referrer"),
            familienname=name.get("familienname") or "",
            vorname=name.get("vorname") or "",
            geburtsdatum=(p.get("geburt") or {}).get("datum"),
            revision=p["revision"],
        )


class PersonDecision(NamedTuple):
    """One outcome of step 4. ``case`` 0 means "pending confirmation of case 3 holds this
    local person back" (it is neither created nor updated until someone decides). A named
    tuple: a run makes one per person, and tuples are the cheapest records Python builds."""

    case: int
    local_key: str | None
    remote_id: str | None
    via: str  # link | referrer | attributes | confirmed | none
    candidates: tuple[str, ...] = ()
    in_scope: bool = True
    note: str = ""


@dataclass
class PersonDecisions:
    """What a person decided earlier (accepted / rejected confirmations)."""

    accepted_matches: dict[str, str] = field(default_factory=dict)  # remote id -> local key
    rejected_pairs: set[tuple[str, str]] = field(default_factory=set)  # (remote id, local key)
    accepted_imports: set[str] = field(default_factory=set)  # remote ids
    rejected_imports: set[str] = field(default_factory=set)


@dataclass
class PersonPlan:
    decisions: list[PersonDecision]
    stale_links: list[str]  # local keys whose linked remote person no longer exists
    # (local key, remote id): ours by link and referrer, the local record deleted → delete
    gone: list[tuple[str, str]] = field(default_factory=list)

    def by_case(self) -> Counter[int]:
        return Counter(d.case for d in self.decisions)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Matching allocates hundreds of thousands of small tuples and lists (no reference cycles)
    over a large live heap: the cyclic collector would scan that heap again and again, about
    half of the time at 100,000 persons. Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def match_persons(
    locals_: Mapping[str, LocalPerson],
    remotes: Iterable[RemotePerson],
    links: Mapping[str, str],
    scope: set[str],
    decisions: PersonDecisions | None = None,
) -> PersonPlan:
    """Classify every remote person and every selected local person into the seed's cases.

    ``links`` maps local key → Schulconnex id (the link table). Every local person takes part
    in matching; only those in ``scope`` are created (case 6) or updated.
    """
    with _no_cyclic_gc():
        return _match_persons(locals_, remotes, links, scope, decisions)


def _match_persons(
    locals_: Mapping[str, LocalPerson],
    remotes: Iterable[RemotePerson],
    links: Mapping[str, str],
    scope: set[str],
    decisions: PersonDecisions | None,
) -> PersonPlan:
    decisions = decisions or PersonDecisions()
    remotes = list(remotes)
    by_remote_id = {r.id: r for r in remotes}
    local_of_remote = {ext: key for key, ext in links.items()}
    stale = [key for key, ext in links.items() if ext not in by_remote_id]

    matched_local: dict[str, str] = {}  # local key -> remote id
    out: list[PersonDecision] = []
    unresolved: list[RemotePerson] = []

    # Case 1: a key. The link table first (our own record of the match), then the referrer.
    for r in remotes:
        key = local_of_remote.get(r.id)
        if key is not None and key in locals_ and key not in matched_local:
            matched_local[key] = r.id
            out.append(PersonDecision(1, key, r.id, "link", in_scope=key in scope))
            continue
        unresolved.append(r)
    rest: list[RemotePerson] = []
    for r in unresolved:
        key = r.referrer if parse_key(r.referrer) is not None else None
        if (
            key is not None
            and key in locals_
            and key not in matched_local
            and links.get(key) in (None, r.id)
            and (r.id, key) not in decisions.rejected_pairs
        ):
            matched_local[key] = r.id
            out.append(PersonDecision(1, key, r.id, "referrer", in_scope=key in scope))
            continue
        rest.append(r)

    # Confirmed case 3 decisions become links before any attribute matching.
    rest2: list[RemotePerson] = []
    for r in rest:
        chosen = decisions.accepted_matches.get(r.id)
        if chosen is not None and chosen in locals_ and chosen not in matched_local:
            matched_local[chosen] = r.id
            out.append(PersonDecision(3, chosen, r.id, "confirmed", in_scope=chosen in scope))
            continue
        rest2.append(r)

    # Index the unmatched locals once: normalised keys -> local keys. (The loops below are the
    # hot path of a first sync: locals bound to names, no per-record helper calls.)
    norm = _Normaliser()
    nget = norm.__getitem__
    full_index: dict[tuple[str, str, str], list[str]] = {}
    name_index: dict[tuple[str, str], list[str]] = {}
    for key, lp in locals_.items():
        if key in matched_local:
            continue
        fam, vor = nget(lp.familienname), nget(lp.vorname)
        nk = (fam, vor)
        bucket = name_index.get(nk)
        if bucket is None:
            name_index[nk] = [key]
        else:
            bucket.append(key)
        born = lp.geburtsdatum
        if born and fam and vor:
            fk = (fam, vor, born)
            bucket = full_index.get(fk)
            if bucket is None:
                full_index[fk] = [key]
            else:
                bucket.append(key)

    remote_keys: list[tuple[RemotePerson, tuple[str, str], tuple[str, str, str] | None]] = []
    remote_full_count: Counter[tuple[str, str, str]] = Counter()
    for r in rest2:
        fam, vor = nget(r.familienname), nget(r.vorname)
        rfk = (fam, vor, r.geburtsdatum) if r.geburtsdatum and fam and vor else None
        if rfk is not None:
            remote_full_count[rfk] += 1
        remote_keys.append((r, (fam, vor), rfk))

    rejected = decisions.rejected_pairs
    pending_candidates: set[str] = set()
    gone: list[tuple[str, str]] = []
    for r, nk, full in remote_keys:
        # Case 2: every attribute present on both sides and equal, unique on both sides.
        if full is not None:
            hits = full_index.get(full)
            if hits and remote_full_count[full] == 1:
                free = [k for k in hits if k not in matched_local]
                if rejected:
                    free = [k for k in free if (r.id, k) not in rejected]
                if len(free) == 1:
                    key = free[0]
                    matched_local[key] = r.id
                    out.append(PersonDecision(2, key, r.id, "attributes", (), key in scope))
                    continue
        # Case 3: the attributes present agree, but something is missing (or not unique).
        same_name = name_index.get(nk)
        if same_name:
            born = r.geburtsdatum
            candidates = tuple(
                k
                for k in same_name
                if k not in matched_local
                and (born is None or locals_[k].geburtsdatum in (None, born))
                and not (rejected and (r.id, k) in rejected)
            )
            if candidates:
                pending_candidates.update(candidates)
                out.append(
                    PersonDecision(
                        3,
                        None,
                        r.id,
                        "attributes",
                        candidates=candidates,
                        note="attributes agree but are incomplete or not unique",
                    )
                )
                continue
        # Case 4: it carries one of our keys that does not exist here; case 5: nothing.
        if parse_key(r.referrer) is not None and r.referrer not in locals_:
            if local_of_remote.get(r.id) == r.referrer:
                # Both keys say it is ours: we deleted the local record (not a restored backup).
                gone.append((str(r.referrer), r.id))
                continue
            out.append(PersonDecision(4, None, r.id, "none", note=f"referrer {r.referrer} unknown"))
        elif parse_key(r.referrer) is not None:
            # Our key, the record exists but is taken by another Schulconnex person (a
            # duplicate created elsewhere): a person decides, like case 4.
            out.append(
                PersonDecision(
                    4, None, r.id, "none", note=f"{r.referrer} is linked to another person"
                )
            )
        else:
            out.append(PersonDecision(5, None, r.id, "none"))

    # Case 6: selected local persons nobody claimed.
    for key in locals_:
        if key not in scope or key in matched_local:
            continue
        if key in pending_candidates:
            out.append(
                PersonDecision(0, key, None, "none", note="waiting for a confirmation (case 3)")
            )
        else:
            out.append(PersonDecision(6, key, None, "none"))
    return PersonPlan(out, stale, gone)


# --------------------------------------------------------------------------- groups

#: Case of a group or membership that is ours by both keys but gone locally: delete it.
GONE = 0


@dataclass(frozen=True, slots=True)
class GroupDecision:
    case: int  # 1..4, or GONE
    local_key: str | None
    remote_id: str | None
    via: str
    in_scope: bool = True
    note: str = ""


def match_groups(
    locals_: Mapping[str, LocalGroup],
    all_local_keys: set[str],
    remotes: Iterable[Mapping[str, Any]],
    links: Mapping[str, str],
    importable_types: Iterable[str],
    rejected_imports: set[str] | None = None,
) -> tuple[list[GroupDecision], list[str]]:
    """Seed step 8 for groups. ``locals_`` are the selected courses, ``all_local_keys`` every
    course key; ``remotes`` are ``gruppe`` objects. Returns decisions and stale local keys."""
    rejected_imports = rejected_imports or set()
    importable = set(importable_types)
    remotes = list(remotes)
    ids = {g["id"] for g in remotes}
    local_of_remote = {ext: key for key, ext in links.items()}
    stale = [key for key, ext in links.items() if ext not in ids]
    matched: dict[str, str] = {}
    out: list[GroupDecision] = []
    for g in remotes:
        key = local_of_remote.get(g["id"])
        via = "link"
        if key is None or key not in all_local_keys or key in matched:
            ref = g.get("referrer")
            key = ref if ref and ref.startswith("course:") and ref in all_local_keys else None
            via = "referrer"
            if key is not None and (key in matched or links.get(key) not in (None, g["id"])):
                key = None
        if key is not None:
            matched[key] = g["id"]
            out.append(GroupDecision(1, key, g["id"], via, in_scope=key in locals_))
            continue
        ref = g.get("referrer")
        if parse_key(ref) is not None and str(ref).startswith("course:"):
            if local_of_remote.get(g["id"]) == ref and ref not in all_local_keys:
                out.append(GroupDecision(GONE, ref, g["id"], "link", note="course deleted"))
                continue
            out.append(GroupDecision(2, None, g["id"], "none", note=f"referrer {ref} unknown"))
        elif g.get("typ") in importable:
            out.append(GroupDecision(3, None, g["id"], "none"))
        else:
            out.append(
                GroupDecision(
                    3,
                    None,
                    g["id"],
                    "none",
                    in_scope=False,
                    note=f"type {g.get('typ')!r} is not configured for import",
                )
            )
    for key in sorted(locals_):
        if key not in matched:
            out.append(GroupDecision(4, key, None, "none"))
    return out, stale


@dataclass(frozen=True, slots=True)
class MembershipDecision:
    case: int  # 1..4, or GONE
    local_key: str | None
    remote_id: str | None
    group_key: str
    via: str
    note: str = ""


def match_memberships(
    group_key: str,
    local_members: Iterable[LocalMembership],
    remote_members: Iterable[Mapping[str, Any]],
    links: Mapping[str, str],
    kontext_of_person: Mapping[str, str],
    *,
    local_of_remote: Mapping[str, str] | None = None,
    person_of_kontext: Mapping[str, str] | None = None,
    loaded_kinds: Iterable[str] = ("registration", "course-lecturer"),
) -> list[MembershipDecision]:
    """Seed step 8 for the memberships of one matched group.

    ``kontext_of_person`` maps a local person key to the id of its personenkontext in
    Schulconnex (known after step 5). Keys: the link table, our ``referrer``, then the natural
    key (group, personenkontext). The two inverse mappings may be passed in when the caller
    matches many groups (computed once instead of once per group).

    ``loaded_kinds`` are the kinds of local membership the caller loaded for this group
    (``registration`` with the participants, ``course-lecturer`` with the lecturers). A
    membership with our key of a kind that was not loaded is neither gone nor unknown: it is
    left alone (no decision)."""
    kinds = frozenset(loaded_kinds)
    locals_list = list(local_members)
    by_key = {m.key: m for m in locals_list}
    if person_of_kontext is None:
        person_of_kontext = {kt: pk for pk, kt in kontext_of_person.items()}
    if local_of_remote is None:
        local_of_remote = {ext: key for key, ext in links.items()}
    # Natural key: the personenkontext of a local membership's person.
    by_natural: dict[str, str] = {}
    for m in locals_list:
        kt = kontext_of_person.get(m.person_key)
        if kt is not None:
            by_natural.setdefault(kt, m.key)
    matched: dict[str, str] = {}
    out: list[MembershipDecision] = []
    for z in remote_members:
        key = local_of_remote.get(z["id"])
        via = "link"
        if key is None or key not in by_key or key in matched:
            ref = z.get("referrer")
            key, via = (ref, "referrer") if ref in by_key and ref not in matched else (None, via)
        if key is None:
            natural = by_natural.get(z.get("ktid", ""))
            if (
                natural is not None
                and natural not in matched
                and links.get(natural) in (None, z["id"])
            ):
                key, via = natural, "natural-key"
        if key is not None:
            matched[key] = z["id"]
            out.append(MembershipDecision(1, key, z["id"], group_key, via))
            continue
        ref = z.get("referrer")
        if is_our_membership_key(ref):
            if str(ref).partition(":")[0] not in kinds:
                continue  # not loaded in this run (participants or lecturers not selected)
            if local_of_remote.get(z["id"]) == ref and ref not in by_key:
                # Ours by both keys, and no longer a membership of this course here.
                out.append(MembershipDecision(GONE, ref, z["id"], group_key, "link", "gone"))
                continue
            out.append(
                MembershipDecision(2, None, z["id"], group_key, "none", f"referrer {ref} unknown")
            )
        else:
            person = person_of_kontext.get(z.get("ktid", ""))
            note = "" if person else "its personenkontext is not linked to a local person"
            out.append(MembershipDecision(3, None, z["id"], group_key, "none", note))
    for m in locals_list:
        if m.key not in matched and m.active:
            out.append(MembershipDecision(4, m.key, None, group_key, "none"))
    return out
