"""Mapping benchmark: records/s of compiled mapping definitions over 50k course-like rows.

Two definitions: ``issue-6`` is the issue's yardstick (20 fields, 3 transforms, a filter; target
>= 100,000 records/s) and ``course-export`` is a realistic web export (German dates, Europe/Berlin
times, lookups, number formats, concatenation, a conditional, nested targets). Each runs on the
engine services use (``compile_mapping``: generated Python) and, for comparison in the same run
on the same loaded machine, on the reference interpreter. Compilation (validation, code
generation, ``compile()``) is timed separately. Prints figures and writes
bench/results/mapping.json (the target: the ``issue-6`` streaming figure of the compiled
engine); asserts nothing.

    .venv/bin/python bench/mapping.py [--rows 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from mesh_common.mapping import compile_mapping, load_mapping
from mesh_common.mapping.interpreter import interpret_mapping

ISSUE_6: dict[str, Any] = {
    "name": "issue-6",
    "filter": {"op": "changed_since", "field": "updated_at"},
    "fields": [
        {"target": "title", "source": "title", "transform": [{"op": "trim"}]},
        {
            "target": "status",
            "source": "status",
            "transform": [
                {"op": "lookup", "table": {"open": "offen", "closed": "zu"}, "on_missing": "keep"}
            ],
        },
        {
            "target": "first_day",
            "source": "first_day",
            "transform": [{"op": "date", "format": "%d.%m.%Y"}],
        },
        *({"target": f"f{i}", "source": f"f{i}"} for i in range(17)),
    ],
}

COURSE_EXPORT: dict[str, Any] = {
    "name": "course-export",
    "tables": {"status": {"open": "Anmeldung möglich", "closed": "geschlossen"}},
    "filter": {
        "op": "and",
        "of": [
            {"op": "eq", "field": "publish", "value": True},
            {"op": "not_in", "field": "status", "value": ["cancelled", "finished"]},
            {"op": "changed_since", "field": "updated_at"},
        ],
    },
    "fields": [
        {"target": "id", "source": "number", "required": True},
        {
            "target": "title",
            "source": "title",
            "required": True,
            "transform": [{"op": "trim"}, {"op": "truncate", "length": 60, "ellipsis": "…"}],
        },
        {"target": "semester", "source": "semester.name"},
        {
            "target": "fee",
            "source": "fee",
            "transform": [{"op": "number", "places": 2, "decimal_sep": ",", "thousands_sep": "."}],
        },
        {
            "target": "status",
            "source": "status",
            "transform": [
                {"op": "lookup", "table": "status", "on_missing": "default", "default": "?"}
            ],
        },
        {
            "target": "bookable",
            "cond": {
                "when": {"op": "eq", "field": "web_bookable", "value": True},
                "then": {"const": True},
                "else": {"const": False},
            },
        },
        {
            "target": "dates.first_day",
            "source": "sessions.0.session_date",
            "transform": [{"op": "date", "format": "%d.%m.%Y"}],
        },
        {
            "target": "dates.last_day",
            "source": "sessions.-1.session_date",
            "transform": [{"op": "date", "format": "%d.%m.%Y"}],
        },
        {
            "target": "dates.starts",
            "source": "sessions.0.starts_at",
            "transform": [
                {"op": "datetime", "tz": "Europe/Berlin", "format": "%d.%m.%Y, %H:%M Uhr"}
            ],
        },
        {
            "target": "place",
            "concat": {"parts": ["location.name", "location.city"], "separator": ", "},
        },
        {"target": "lecturer", "concat": {"parts": ["lecturer.first_name", "lecturer.last_name"]}},
        {"target": "kind", "const": "course"},
    ],
}


def make_rows(n: int, seed: int = 6) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    base = datetime(2025, 9, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        start = base + timedelta(days=rnd.randrange(200), hours=rnd.randrange(8, 19))
        rows.append(
            {
                "number": f"252-{i:05d}",
                "title": f"  Kurs {i} Italienisch für Anfänger A1  ",
                "status": rnd.choice(["open", "open", "closed", "cancelled"]),
                "publish": rnd.random() < 0.9,
                "web_bookable": rnd.random() < 0.7,
                "fee": Decimal(rnd.randrange(1000, 40000)) / 100,
                "first_day": start.date().isoformat(),
                "updated_at": base + timedelta(minutes=rnd.randrange(100_000)),
                "semester": {"name": "Herbstsemester 2025"},
                "location": {"name": "VHS-Haus", "city": "Freiburg"},
                "lecturer": {"first_name": "Giulia", "last_name": "Rossi"},
                "sessions": [
                    {
                        "session_date": (start + timedelta(weeks=w)).date(),
                        "starts_at": (start + timedelta(weeks=w)).isoformat(),
                    }
                    for w in range(rnd.randrange(1, 6))
                ],
                **{f"f{k}": k * i for k in range(17)},
            }
        )
    return rows


def bench(
    name: str,
    defn: dict[str, Any],
    rows: list[dict[str, Any]],
    repeat: int,
    engine: str = "compiled",
) -> dict[str, float]:
    t0 = time.perf_counter()
    build = compile_mapping if engine == "compiled" else interpret_mapping
    compiled: Any = build(load_mapping(defn))
    compile_ms = (time.perf_counter() - t0) * 1000
    marker = datetime(2025, 9, 15, tzinfo=UTC)
    stream = kept = map_only = float("inf")
    mapped = skipped = failed = 0
    for _ in range(repeat):
        # Streaming: each result is consumed and dropped, as a sync loop writing batches does.
        t0 = time.perf_counter()
        mapped = skipped = 0
        for r in compiled.run(rows, since=marker):
            mapped += r.ok
            skipped += r.skipped
        stream = min(stream, time.perf_counter() - t0)
        failed = len(rows) - mapped - skipped
        # Kept: all 50k results held in one list; the cyclic GC's full passes show up here.
        t0 = time.perf_counter()
        results = list(compiled.run(rows, since=marker))
        kept = min(kept, time.perf_counter() - t0)
        del results
        t0 = time.perf_counter()
        for rec in rows:  # the field map alone, no filter
            compiled.map(rec)
        map_only = min(map_only, time.perf_counter() - t0)
    n = len(rows)
    print(
        f"{name:<14} {engine:<11} fields={len(defn['fields']):>2} compile={compile_ms:5.2f} ms  "
        f"stream={n / stream:>9,.0f} rec/s  kept={n / kept:>9,.0f} rec/s  "
        f"map-only={n / map_only:>9,.0f} rec/s  "
        f"(mapped {mapped}, filtered {skipped}, errors {failed})"
    )
    return {
        "compile_ms": compile_ms,
        "stream_per_s": n / stream,
        "kept_per_s": n / kept,
        "map_only_per_s": n / map_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = make_rows(args.rows)
    print(f"rows={args.rows} repeat={args.repeat} cpus={os.cpu_count()} (best run of each shown)")
    issue = bench("issue-6", ISSUE_6, rows, args.repeat)
    course = bench("course-export", COURSE_EXPORT, rows, args.repeat)
    issue_ref = bench("issue-6", ISSUE_6, rows, args.repeat, engine="interpreter")
    course_ref = bench("course-export", COURSE_EXPORT, rows, args.repeat, engine="interpreter")
    for label, fast, ref in (("issue-6", issue, issue_ref), ("course-export", course, course_ref)):
        print(
            f"{label}: generated code vs interpreter, stream x"
            f"{fast['stream_per_s'] / ref['stream_per_s']:.1f}, map-only x"
            f"{fast['map_only_per_s'] / ref['map_only_per_s']:.1f}"
        )
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")
    # The target is the streaming figure: a sync maps, writes and drops records as it goes.
    result = {
        "figures": {
            "issue-6": issue,
            "course-export": course,
            "interpreter": {"issue-6": issue_ref, "course-export": course_ref},
            "rows": args.rows,
            "load_average": list(load),
        },
        "targets": {
            "issue-6 (20 fields, 3 transforms, filter) rec/s": {
                "target": ">= 100000",
                "value": issue["stream_per_s"],
                "met": issue["stream_per_s"] >= 100_000,
            }
        },
    }
    out = Path(__file__).parent / "results" / "mapping.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
