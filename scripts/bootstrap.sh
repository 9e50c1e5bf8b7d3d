#!/usr/bin/env bash
# Installs everything edumesh needs into .venv, from PyPI only, pinned by constraints.txt.
# Idempotent: re-running only installs what changed. Used by `make run` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: uv not found, installing it with pip" >&2
  "$PY" -m pip install --quiet --user uv || "$PY" -m pip install --quiet uv
  export PATH="$HOME/.local/bin:$PATH"
fi
stamp=.venv/.edumesh-installed
inputs=$(cat constraints.txt pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || uv venv --quiet --python "$PY" .venv
editables=()
for p in libs/* services/*; do [ -f "$p/pyproject.toml" ] && editables+=(-e "$p"); done
VIRTUAL_ENV=$PWD/.venv uv pip install --quiet -c constraints.txt "${editables[@]}" --group pyproject.toml:dev
echo "$inputs" > "$stamp"
echo "bootstrap: .venv ready" >&2
