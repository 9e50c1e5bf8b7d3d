"""`make bench`: run every benchmark under bench/ and print one table of targets.

Each benchmark script writes ``bench/results/<name>.json`` holding a ``targets`` mapping of
``{figure: {"target": "<= 1.3", "value": float, "met": bool}}`` next to its raw figures. This
runner executes them one after another (they share the machine's two cores, so never in
parallel), then prints the table and writes it to ``bench/results/latest.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mesh_common.secrets import generate_key

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SKIP = {"run_all.py"}


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name not in SKIP)
    # ``--only a,b``: run just these (e.g. after a failure); the table still lists every
    # bench from its latest result file.
    only = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else None
    # The benches build throwaway services and databases; those that store secrets need a data
    # key. A fresh one per run unless the caller set one (nothing outlives the run).
    env = dict(os.environ)
    env.setdefault("MESH_SECRET_KEY", generate_key())
    rows: list[tuple[str, str, str, str, str, str]] = []
    failures = []
    for script in scripts:
        if only is None or script.stem in only:
            print(f"== {script.name}", flush=True)
            started = time.monotonic()
            proc = subprocess.run([sys.executable, str(script)], cwd=BENCH.parent, env=env)
            print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
            if proc.returncode != 0:
                failures.append(script.name)
                continue
        result_file = RESULTS / f"{script.stem}.json"
        if not result_file.exists():
            continue
        data = json.loads(result_file.read_text())
        baseline = "; ".join(f"{k} {_fmt(v)}" for k, v in _ratios(data))
        for i, (figure, t) in enumerate((data.get("targets") or {}).items()):
            rows.append(
                (
                    script.stem,
                    figure,
                    str(t.get("target")),
                    _fmt(t.get("value")),
                    "yes" if t.get("met") else "NO",
                    baseline if i == 0 else "",
                )
            )
    table = [
        "| bench | figure | target | measured | met | ratio to the raw baseline (same run) |",
        "|---|---|---|---|---|---|",
    ]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = "\n".join(table)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (RESULTS / "latest.md").write_text(f"# Benchmarks ({stamp})\n\n{text}\n")
    print("\n" + text)
    if failures:
        print(f"\nfailed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _ratios(data: object, prefix: str = "") -> list[tuple[str, float]]:
    """Every number a bench recorded as a ratio to a raw baseline measured in the same run
    (keys naming ``ratio`` or ``over_raw``), outside its targets."""
    found: list[tuple[str, float]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "targets":
                continue
            name = f"{prefix}{key}"
            words = key.split("_")
            if isinstance(value, int | float) and ("ratio" in words or "over_raw" in key):
                found.append((name, float(value)))
            elif isinstance(value, dict):
                found += _ratios(value, f"{name}.")
    return found


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
