#!/usr/bin/env bash
# Regenerates constraints.txt (exact pins, no index URLs) from every pyproject in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"
command -v uv >/dev/null 2>&1 || { python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv; }
tmp=$(mktemp); trap 'rm -f $tmp' EXIT
for p in libs/* services/*; do [ -f "$p/pyproject.toml" ] && echo "-e $p"; done > "$tmp"
uv pip compile --quiet --python-version 3.11 --no-header --no-annotate --group pyproject.toml:dev "$tmp" \
  | grep -v '^-e ' | grep -v '^#' > constraints.txt
grep -qiE 'https?://' constraints.txt && { echo "constraints.txt names a URL" >&2; exit 1; } || true
echo "constraints.txt: $(wc -l < constraints.txt) pins"
