#!/usr/bin/env bash
# Runs every test tier in order, stopping at the first failing tier. Exit status is pytest's.
# Under CI=true a test that needs a missing server fails instead of skipping (see mesh_common.testing).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p artifacts
PYTEST=(.venv/bin/pytest -p no:cacheprovider --junitxml=artifacts/junit.xml --durations=30)
echo "== lint" && .venv/bin/ruff check libs services tests bench deploy conftest.py
echo "== typecheck (mypy strict on mesh_common, mesh_contracts)"
.venv/bin/mypy libs/mesh_common/src libs/mesh_contracts/src
echo "== tests (unit, api, bus contract on memory + RabbitMQ, db on SQLite/PostgreSQL/MariaDB, e2e)"
"${PYTEST[@]}" "$@"
