"""The ``coursedb`` command on a SQLite file: init, seed, stats, drop, and the URL precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from coursedb.cli import main


def test_init_seed_stats_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'coursedb.sqlite3'}"

    assert main(["--url", url, "init"]) == 0
    assert (tmp_path / "nested" / "coursedb.sqlite3").exists()

    args = ["--url", url, "seed", "--courses", "30", "--participants", "40", "--seed", "3"]
    assert main([*args, "--today", "2025-10-15"]) == 0
    out, err = capsys.readouterr()
    assert "courses 30/30" in err  # progress on stderr
    assert "rows/s" in out

    # Seeding again without --reset is refused (exit 2), with --reset it starts over.
    assert main(args) == 2
    assert "reset" in capsys.readouterr().err
    assert main([*args, "--reset", "--courses", "12"]) == 0
    capsys.readouterr()

    assert main(["--url", url, "stats"]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["courses", "12"] for line in out.splitlines()), out
    assert any(line.split() == ["participants", "40"] for line in out.splitlines()), out
    assert "registrations by status:" in out

    assert main(["--url", url, "drop"]) == 0
    capsys.readouterr()
    with pytest.raises(Exception, match="no such table"):
        main(["--url", url, "stats"])


def test_console_script_reads_coursedb_url(tmp_path: Path) -> None:
    """``python -m coursedb.cli`` (as ``make seed`` runs it) takes the URL from COURSEDB_URL."""
    db = tmp_path / "from-env.sqlite3"
    env = {**os.environ, "COURSEDB_URL": f"sqlite+aiosqlite:///{db}"}
    done = subprocess.run(
        [sys.executable, "-m", "coursedb.cli", "init"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert db.exists()
    assert not (tmp_path / "var").exists()  # the default path was not used
