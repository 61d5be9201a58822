#!/usr/bin/env bash
# Create .venv/ in the repository root on first use and install hx into it (editable, with the
# dev extra). Later calls only reinstall when pyproject.toml changed. Extra args: more extras,
# e.g. `scripts/bootstrap.sh video,ray`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="dev${1:+,$1}"
stamp="$venv/.hx-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $extras"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: an unpinned torch resolves to the newest CUDA build (GBs).
    # Set HX_TORCH to install another build, e.g. HX_TORCH='torch==2.11.0'.
    "$venv/bin/python" -m pip install -q "${HX_TORCH:-torch==2.13.0}"
    "$venv/bin/python" -m pip install -q -e "$root[$extras]"
    echo "$want" > "$stamp"
fi
