"""A service reaches other services only through mesh_contracts and typed clients.

It never imports their packages.

Also: a service imports only the workspace libraries its pyproject declares, and libs never import
services (except the embedded launcher, whose whole job is to start them all).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
SERVICE_PACKAGES = {f"{s}_service" for s in SERVICES}
LIB_PACKAGES = {"mesh_common", "mesh_contracts", "coursedb"}
LAUNCHER = "mesh_embedded"


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(base: Path) -> list[Path]:
    return [p for p in base.rglob("*.py") if ".venv" not in p.parts]


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_no_other_service(service: str) -> None:
    own = f"{service}_service"
    offenders = []
    for path in python_files(ROOT / "services" / service):
        bad = (imported_top_levels(path) & SERVICE_PACKAGES) - {own}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_only_declared_libs(service: str) -> None:
    meta = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    declared = {
        d.split(">")[0].split("=")[0].strip().replace("-", "_")
        for d in meta["project"]["dependencies"]
    }
    used: set[str] = set()
    for path in python_files(ROOT / "services" / service / "src"):
        used |= imported_top_levels(path) & LIB_PACKAGES
    assert used <= declared, f"{service} uses undeclared workspace libs {sorted(used - declared)}"


def test_libs_import_no_service() -> None:
    offenders = []
    for lib in (ROOT / "libs").iterdir():
        if lib.name == LAUNCHER or not lib.is_dir():
            continue
        for path in python_files(lib):
            bad = imported_top_levels(path) & SERVICE_PACKAGES
            if bad:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    # Guard against a checker that silently finds nothing.
    f = tmp_path / "x.py"
    f.write_text("from booking_service.models import metadata\nimport profile_service\n")
    assert imported_top_levels(f) >= {"booking_service", "profile_service"}
