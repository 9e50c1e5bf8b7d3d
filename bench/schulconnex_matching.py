"""Schulconnex person matching (seed step 4): 100,000 local x 100,000 remote persons.

The persons are German names (a fixed pool of first and last names, so many share a name) with
dates of birth; the remote side is built so that every one of the six cases occurs in a realistic
mix: most persons are linked (case 1, link table or referrer), some match on all attributes
(case 2), some only partially (case 3: no date of birth on one side), some carry a referrer of
ours that does not exist (case 4), some are unknown (case 5), and the rest of the locals must be
created (case 6). Times ``match_persons`` alone (the normalisation of both sides included), best
of ``--repeat``; target <= 2 s. A second figure is the worst case for hashing, a first sync:
no links and no referrers at all, so every person of both sides is normalised and looked up by
its attributes. Writes bench/results/schulconnex_matching.json.

    .venv/bin/python bench/schulconnex_matching.py [--persons 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from schulconnex_sync_service.local import LocalPerson
from schulconnex_sync_service.matching import RemotePerson, match_persons

FIRST = (
    "Anna Ben Clara David Emma Felix Greta Hannah Ida Jonas Karl Lea Lukas Marie Mia Noah Ole "
    "Paul Quirin Rosa Sophie Tim Ute Valentin Wilhelm Yusuf Zoë Jürgen Özlem Björn Anne-Marie "
    "Hans-Peter Chantal Dieter Elif Frauke Gisela Horst Ingrid Jörg"
).split()
LAST = (
    "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch "
    "Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann "
    "Lange Schmitt Werner Schmitz Krause Meier Lehmann Schmid Schulze Maier Köhler Herrmann König "
    "Walter Mayer Huber Kaiser Fuchs Peters Lang Scholz Möller Weiß Jung Hahn Schubert Vogel "
    "Friedrich Keller Günther Frank Berger Winkler Roth Beck Lorenz Baumann Franke Albrecht "
    "Schuster Simon Ludwig Böhm Winter Kraus Martin Schumacher Krämer Vogt Stein Jäger Otto Sommer "
    "Groß Seidel Heinrich Brandt Haas Schreiber Graf Schulte Dietrich Ziegler Kuhn Kühn Pohl Engel "
    "Horn Busch Bergmann Thomas Voigt Sauer Arnold Wolff Pfeiffer"
).split()


def build(
    n: int, seed: int = 7
) -> tuple[dict[str, LocalPerson], list[RemotePerson], dict[str, str]]:
    rnd = random.Random(seed)
    base = dt.date(1940, 1, 1)
    locals_: dict[str, LocalPerson] = {}
    for i in range(1, n + 1):
        born = (base + dt.timedelta(days=rnd.randrange(0, 30_000))).isoformat()
        key = f"participant:{i}"
        locals_[key] = LocalPerson(key, "participant", i, rnd.choice(LAST), rnd.choice(FIRST), born)
    remotes: list[RemotePerson] = []
    links: dict[str, str] = {}
    people = list(locals_.values())
    for i, p in enumerate(people):
        roll = i % 100
        rid = f"r{i}"
        if roll < 70:  # case 1 via the link table
            links[p.key] = rid
            remotes.append(RemotePerson(rid, p.key, p.familienname, p.vorname, p.geburtsdatum, "1"))
        elif roll < 80:  # case 1 via referrer (no link yet)
            remotes.append(RemotePerson(rid, p.key, p.familienname.upper(), p.vorname, None, "1"))
        elif roll < 88:  # case 2 (or 3 where names and dates collide)
            remotes.append(
                RemotePerson(rid, None, p.familienname.lower(), p.vorname, p.geburtsdatum, "3")
            )
        elif roll < 92:  # case 3: the remote side has no date of birth
            remotes.append(RemotePerson(rid, None, p.familienname, p.vorname, None, "1"))
        # the remaining 8 %: not in Schulconnex (case 6)
    for j in range(n - len(remotes)):  # fill up to n remote persons: cases 4 and 5
        ref = f"participant:{n + 1 + j}" if j % 2 else None
        born = (base + dt.timedelta(days=rnd.randrange(0, 30_000))).isoformat()
        remotes.append(
            RemotePerson(f"x{j}", ref, rnd.choice(LAST) + "-X", rnd.choice(FIRST), born, "1")
        )
    return locals_, remotes, links


def first_sync(n: int, seed: int = 11) -> tuple[dict[str, LocalPerson], list[RemotePerson]]:
    """No keys anywhere: 85 % of the remote persons are local ones (names written
    differently), 5 % lack the date of birth, 10 % are strangers."""
    locals_, _, _ = build(n, seed)
    rnd = random.Random(seed)
    remotes = []
    for i, p in enumerate(locals_.values()):
        roll = i % 20
        if roll < 17:
            last = p.familienname.upper() if roll % 2 else p.familienname.replace("ü", "ue")
            remotes.append(RemotePerson(f"r{i}", None, last, p.vorname, p.geburtsdatum, "1"))
        elif roll == 17:
            remotes.append(RemotePerson(f"r{i}", None, p.familienname, p.vorname, None, "1"))
        else:
            remotes.append(
                RemotePerson(f"r{i}", None, rnd.choice(LAST) + "-Y", rnd.choice(FIRST), None, "1")
            )
    return locals_, remotes


def timed(
    locals_: dict[str, LocalPerson], remotes: list[RemotePerson], links: dict[str, str], repeat: int
) -> tuple[list[float], Counter[int]]:
    scope = set(locals_)
    times = []
    cases: Counter[int] = Counter()
    for _ in range(repeat):
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        plan = match_persons(locals_, remotes, links, scope)
        times.append(time.perf_counter() - started)
        CPU.append(time.process_time() - cpu)
        cases = plan.by_case()
    return times, cases


CPU: list[float] = []  # CPU seconds of every timed run (wall time suffers on a shared machine)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    locals_, remotes, links = build(args.persons)
    times, cases = timed(locals_, remotes, links, args.repeat)
    first_locals, first_remotes = first_sync(args.persons)
    first_times, first_cases = timed(first_locals, first_remotes, {}, args.repeat)
    best, first_best = min(times), min(first_times)
    result = {
        "local_persons": len(locals_),
        "remote_persons": len(remotes),
        "seconds_best": round(best, 3),
        "seconds_all": [round(t, 3) for t in times],
        "cases": {str(k): v for k, v in sorted(cases.items())},
        "first_sync_seconds_best": round(first_best, 3),
        "first_sync_seconds_all": [round(t, 3) for t in first_times],
        "first_sync_cases": {str(k): v for k, v in sorted(first_cases.items())},
        "cpu_seconds_all_runs": [round(t, 3) for t in CPU],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "targets": {
            "matching_100k_x_100k_s": {
                "target": "<= 2",
                "value": round(best, 3),
                "met": best <= 2.0,
            },
            "matching_first_sync_100k_x_100k_s": {
                "target": "<= 2",
                "value": round(first_best, 3),
                "met": first_best <= 2.0,
            },
        },
    }
    out = Path(__file__).resolve().parent / "results" / "schulconnex_matching.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"matching {len(locals_):,} local x {len(remotes):,} remote persons")
    print(f"  mixed (mostly linked): best {best:.3f} s of {[f'{t:.3f}' for t in times]}")
    print(f"    cases {dict(sorted(cases.items()))}  (0 = held back by a pending case 3)")
    print(
        f"  first sync (no keys):  best {first_best:.3f} s of {[f'{t:.3f}' for t in first_times]}"
    )
    print(f"    cases {dict(sorted(first_cases.items()))}")
    print(
        f"  target <= 2 s each (CPU seconds per run: {[round(t, 2) for t in CPU]}, "
        f"load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
