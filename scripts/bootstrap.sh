#!/usr/bin/env bash
# Create .venv/ in the repository root on first use and install hx into it (editable). Argument:
# the extras to install, comma-separated, e.g. `scripts/bootstrap.sh dev,train,video`. Later calls
# only reinstall when pyproject.toml changed or an extra is asked for that is not installed yet;
# extras installed before are kept (test.sh and extract.sh share the venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.hx-installed"   # "<sha256 of pyproject.toml> <extras installed>"
hash="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
want="${1:-}"
had=""
[ -f "$stamp" ] && had="$(cut -s -d' ' -f2 "$stamp")"
# The extras wanted now plus those installed before, sorted, without repeats or empty names.
extras="$(printf '%s\n' ${had//,/ } ${want//,/ } | sort -u | paste -sd, -)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash $extras" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    if [[ ",$extras," == *,train,* ]]; then
        # torch first and pinned: an unpinned torch resolves to the newest CUDA build (GBs).
        # Set HX_TORCH to install another build, e.g. HX_TORCH='torch==2.11.0'.
        "$venv/bin/python" -m pip install -q "${HX_TORCH:-torch==2.13.0}"
    fi
    "$venv/bin/python" -m pip install -q -e "$root${extras:+[$extras]}"
    echo "$hash $extras" > "$stamp"
fi
