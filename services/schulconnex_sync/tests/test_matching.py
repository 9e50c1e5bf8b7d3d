"""Seed steps 4 and 8 as pure functions: every case of the seed's tables, decided by hashing."""

from __future__ import annotations

from schulconnex_sync_service.local import LocalGroup, LocalMembership, LocalPerson
from schulconnex_sync_service.matching import (
    GONE,
    PersonDecisions,
    RemotePerson,
    match_groups,
    match_memberships,
    match_persons,
    normalise,
)


def lp(
    i: int, first: str, last: str, born: str | None = None, kind: str = "participant"
) -> LocalPerson:
    return LocalPerson(f"{kind}:{i}", kind, i, last, first, born)


def rp(
    rid: str, first: str, last: str, born: str | None = None, ref: str | None = None
) -> RemotePerson:
    return RemotePerson(rid, ref, last, first, born, "1")


def by_remote(plan) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {d.remote_id: d for d in plan.decisions if d.remote_id}


def by_local(plan) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {d.local_key: d for d in plan.decisions if d.local_key}


def test_normalise_ignores_case_umlauts_accents_hyphens_and_spacing() -> None:
    assert normalise("Müller-Lüdenscheidt") == normalise("mueller  luedenscheidt")
    assert normalise("Strauß") == normalise("STRAUSS")
    assert normalise("Zoë  O\u2019Neil") == normalise("zoe oneil")
    # Decomposed umlaut (u + combining diaeresis) equals the composed one.
    assert normalise("Mu\u0308ller") == normalise("Müller") == "mueller"
    assert normalise("Anna") != normalise("Anne")


def test_the_six_person_cases() -> None:
    locals_ = {
        p.key: p
        for p in [
            lp(1, "Anna", "Alt", "1990-01-01"),  # case 1 by link
            lp(2, "Bert", "Bauer", "1985-05-05"),  # case 1 by referrer
            lp(3, "Clara", "Christ", "2001-03-03"),  # case 2: all attributes
            lp(4, "Dora", "Dorn", "1970-07-07"),  # case 3: remote lacks the birth date
            lp(5, "Emil", "Ernst", "1999-09-09"),  # case 6: nobody has him
            lp(6, "Frieda", "Fuchs", None, kind="lecturer"),  # case 3: lecturers have no date
        ]
    }
    remotes = [
        rp("r1", "Anna", "Alt", "1990-01-01"),
        rp("r2", "Bert", "Bauer", ref="participant:2"),
        rp("r3", "clara", "CHRIST", "2001-03-03"),
        rp("r4", "Dora", "Dorn"),
        rp("r5", "Xaver", "Xylo", "1960-01-01", ref="participant:999"),  # case 4
        rp("r6", "Yvonne", "Ypsilon"),  # case 5
        rp("r7", "Frieda", "Fuchs", "1965-06-06"),
    ]
    scope = set(locals_)
    plan = match_persons(locals_, remotes, {"participant:1": "r1"}, scope)
    r = by_remote(plan)
    assert (r["r1"].case, r["r1"].local_key, r["r1"].via) == (1, "participant:1", "link")
    assert (r["r2"].case, r["r2"].local_key, r["r2"].via) == (1, "participant:2", "referrer")
    assert (r["r3"].case, r["r3"].local_key) == (2, "participant:3")
    assert (r["r4"].case, r["r4"].local_key, r["r4"].candidates) == (3, None, ("participant:4",))
    assert r["r5"].case == 4
    assert r["r6"].case == 5
    assert (r["r7"].case, r["r7"].candidates) == (3, ("lecturer:6",))
    loc = by_local(plan)
    assert loc["participant:5"].case == 6
    # Candidates of a pending case 3 are held back, not created.
    assert loc["participant:4"].case == 0 and loc["lecturer:6"].case == 0
    assert plan.by_case() == {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 1, 0: 2}


def test_case_2_needs_uniqueness_on_both_sides() -> None:
    twins = {
        p.key: p
        for p in [lp(1, "Max", "Muster", "2000-01-01"), lp(2, "Max", "Muster", "2000-01-01")]
    }
    plan = match_persons(twins, [rp("r", "Max", "Muster", "2000-01-01")], {}, set(twins))
    d = by_remote(plan)["r"]
    assert d.case == 3 and set(d.candidates) == {"participant:1", "participant:2"}
    one = {"participant:1": lp(1, "Max", "Muster", "2000-01-01")}
    plan = match_persons(
        one,
        [rp("a", "Max", "Muster", "2000-01-01"), rp("b", "Max", "Muster", "2000-01-01")],
        {},
        set(one),
    )
    assert {d.case for d in plan.decisions if d.remote_id} == {3}


def test_different_birth_dates_are_no_match_and_the_link_wins_over_the_referrer() -> None:
    locals_ = {
        p.key: p
        for p in [lp(1, "Max", "Muster", "2000-01-01"), lp(2, "Moritz", "Muster", "2000-01-01")]
    }
    plan = match_persons(locals_, [rp("r", "Max", "Muster", "1999-12-31")], {}, set(locals_))
    assert by_remote(plan)["r"].case == 5
    # Link says participant:1, referrer says participant:2: the link table decides.
    plan = match_persons(
        locals_, [rp("r", "Max", "Muster", ref="participant:2")], {"participant:1": "r"}, set()
    )
    assert by_remote(plan)["r"].local_key == "participant:1"


def test_decisions_confirmed_matches_rejected_pairs_and_stale_links() -> None:
    locals_ = {"participant:4": lp(4, "Dora", "Dorn", "1970-07-07")}
    remote = [rp("r4", "Dora", "Dorn")]
    accepted = PersonDecisions(accepted_matches={"r4": "participant:4"})
    d = by_remote(match_persons(locals_, remote, {}, set(locals_), accepted))["r4"]
    assert (d.case, d.local_key, d.via) == (3, "participant:4", "confirmed")
    rejected = PersonDecisions(rejected_pairs={("r4", "participant:4")})
    plan = match_persons(locals_, remote, {}, set(locals_), rejected)
    assert by_remote(plan)["r4"].case == 5  # not that person: offered for import instead
    assert by_local(plan)["participant:4"].case == 6  # and ours is created
    plan = match_persons(locals_, [], {"participant:4": "gone"}, set(locals_))
    assert plan.stale_links == ["participant:4"]
    assert by_local(plan)["participant:4"].case == 6


def test_out_of_selection_persons_are_matched_but_not_created() -> None:
    locals_ = {
        p.key: p for p in [lp(1, "Anna", "Alt", "1990-01-01"), lp(2, "Bert", "Bauer", "1980-01-01")]
    }
    plan = match_persons(locals_, [rp("r1", "Anna", "Alt", "1990-01-01")], {}, {"participant:2"})
    r1 = by_remote(plan)["r1"]
    assert r1.case == 2 and not r1.in_scope  # recognised, so not offered for import
    assert [d.local_key for d in plan.decisions if d.case == 6] == ["participant:2"]


def _group(i: int) -> LocalGroup:
    return LocalGroup(f"course:{i}", i, f"252-{i}", f"Kurs {i}", "open", None, None, None, None)


def test_the_four_group_cases() -> None:
    selected = {g.key: g for g in [_group(1), _group(2), _group(3)]}
    every = {*selected, "course:9"}
    remotes = [
        {"id": "g1", "referrer": "course:1", "typ": "Kurs"},  # 1 by referrer
        {"id": "g2", "typ": "Kurs"},  # 1 by link
        {"id": "g3", "referrer": "course:777", "typ": "Kurs"},  # 2
        {"id": "g4", "typ": "Kurs"},  # 3, importable type
        {"id": "g5", "typ": "Klasse"},  # 3, not an importable type
        {"id": "g9", "referrer": "course:9", "typ": "Kurs"},  # 1, not selected
    ]
    decisions, stale = match_groups(
        selected, every, remotes, {"course:2": "g2", "course:8": "gone"}, ["Kurs"]
    )
    d = {x.remote_id or x.local_key: x for x in decisions}
    assert (d["g1"].case, d["g1"].local_key, d["g1"].via) == (1, "course:1", "referrer")
    assert (d["g2"].case, d["g2"].local_key, d["g2"].via) == (1, "course:2", "link")
    assert d["g3"].case == 2
    assert d["g4"].case == 3 and d["g4"].in_scope
    assert d["g5"].case == 3 and not d["g5"].in_scope
    assert d["g9"].case == 1 and not d["g9"].in_scope
    assert d["course:3"].case == 4
    assert stale == ["course:8"]


def test_the_four_membership_cases() -> None:
    members = [
        LocalMembership("registration:1", "course:1", "participant:1", ("Lern",), True),
        LocalMembership("registration:2", "course:1", "participant:2", ("Lern",), True),
        LocalMembership("registration:3", "course:1", "participant:3", ("Lern",), True),
        LocalMembership("course-lecturer:1:5", "course:1", "lecturer:5", ("Lehr",), True),
        LocalMembership("registration:4", "course:1", "participant:4", ("Lern",), False),
    ]
    kontexte = {
        "participant:1": "k1",
        "participant:2": "k2",
        "participant:3": "k3",
        "participant:9": "k9",
        "lecturer:5": "k5",
    }
    remote = [
        {"id": "z1", "referrer": "registration:1", "ktid": "k1", "rollen": ["Lern"]},  # 1 referrer
        {"id": "z2", "ktid": "k2", "rollen": ["Lern"]},  # 1 natural key (group, kontext)
        {"id": "z5", "ktid": "k5", "rollen": ["Lehr"]},  # 1 by link
        {"id": "z8", "referrer": "registration:888", "ktid": "k9", "rollen": ["Lern"]},  # 2
        {"id": "z9", "ktid": "k9", "rollen": ["Lern"]},  # 3
    ]
    out = match_memberships("course:1", members, remote, {"course-lecturer:1:5": "z5"}, kontexte)
    d = {x.remote_id or x.local_key: x for x in out}
    assert (d["z1"].case, d["z1"].via) == (1, "referrer")
    assert (d["z2"].case, d["z2"].local_key, d["z2"].via) == (1, "registration:2", "natural-key")
    assert (d["z5"].case, d["z5"].via) == (1, "link")
    assert d["z8"].case == 2
    assert d["z9"].case == 3
    assert d["registration:3"].case == 4
    assert "registration:4" not in d  # cancelled and never synced: nothing to do


def test_gone_needs_both_keys_and_loses_to_an_attribute_match() -> None:
    """Step 9 "Löschen": ours by link *and* referrer, the local record deleted. The referrer
    alone is the seed's case 4 (a restored backup), and a remote person that matches another
    local record by every attribute is linked to it instead (its UUID survives)."""
    locals_ = {p.key: p for p in [lp(2, "Bert", "Bauer", "1985-05-05")]}
    remotes = [
        rp("r1", "Anna", "Alt", "1990-01-01", ref="participant:1"),  # linked, deleted: gone
        rp("r7", "Gina", "Gans", ref="participant:7"),  # our key shape, no link: case 4
        rp("r8", "Hans", "Hahn", ref="participant:8"),  # linked elsewhere: case 4
        rp("r9", "Bert", "Bauer", "1985-05-05", ref="participant:9"),  # merged into 2: case 2
    ]
    links = {"participant:1": "r1", "participant:8": "other", "participant:9": "r9"}
    plan = match_persons(locals_, remotes, links, set(locals_))
    assert plan.gone == [("participant:1", "r1")]
    d = by_remote(plan)
    assert d["r7"].case == 4 and d["r8"].case == 4  # type: ignore[attr-defined]
    assert (d["r9"].case, d["r9"].local_key) == (2, "participant:2")  # type: ignore[attr-defined]


def test_gone_groups_and_memberships() -> None:
    selected = {g.key: g for g in [_group(1)]}
    remotes = [
        {"id": "g1", "referrer": "course:1", "typ": "Kurs"},
        {"id": "g5", "referrer": "course:5", "typ": "Kurs"},  # linked, course deleted: gone
        {"id": "g6", "referrer": "course:6", "typ": "Kurs"},  # no link: case 2
        {"id": "g7", "referrer": "fremd-7", "typ": "Kurs"},  # linked, not our referrer: 3
    ]
    links = {"course:5": "g5", "course:7": "g7"}
    decisions, _ = match_groups(selected, set(selected), remotes, links, ["Kurs"])
    d = {x.remote_id: x for x in decisions}
    assert (d["g5"].case, d["g5"].local_key) == (GONE, "course:5")
    assert d["g6"].case == 2 and d["g7"].case == 3

    members = [LocalMembership("registration:1", "course:1", "participant:1", ("Lern",), True)]
    remote = [
        {"id": "z1", "referrer": "registration:1", "ktid": "k1", "rollen": ["Lern"]},
        {"id": "z2", "referrer": "registration:2", "ktid": "k2", "rollen": ["Lern"]},  # gone
        {"id": "z3", "referrer": "registration:3", "ktid": "k3", "rollen": ["Lern"]},  # 2
        {"id": "z4", "referrer": "course-lecturer:1:4", "ktid": "k4", "rollen": ["Lehr"]},
    ]
    links = {"registration:2": "z2", "course-lecturer:1:4": "z4"}
    out = match_memberships("course:1", members, remote, links, {"participant:1": "k1"})
    d2 = {x.remote_id: x for x in out}
    assert (d2["z2"].case, d2["z2"].local_key) == (GONE, "registration:2")
    assert d2["z3"].case == 2 and d2["z4"].case == GONE
    # Lecturers not loaded in this run (not selected): their memberships are left alone.
    out = match_memberships(
        "course:1", members, remote, links, {"participant:1": "k1"}, loaded_kinds=["registration"]
    )
    assert "z4" not in {x.remote_id for x in out}
