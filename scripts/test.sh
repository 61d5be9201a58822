#!/usr/bin/env bash
# The test command of the README: set up .venv/ if needed, then run the whole suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" "${HX_EXTRAS:-}"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
