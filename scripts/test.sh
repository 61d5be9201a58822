#!/usr/bin/env bash
# The test command of the README: set up .venv/ if needed, then run the whole suite. The video, ray
# and serve extras are installed so their tests run too (HX_EXTRAS= to leave them out; they then skip).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" "${HX_EXTRAS-video,ray,serve}"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
