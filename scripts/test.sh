#!/usr/bin/env bash
# The test command of the README: set up .venv/ if needed, then run the whole suite. The suite
# needs the dev and train extras (pytest; torch makes the tiny test models); the video, ray and
# serve extras are installed so their tests run too (HX_EXTRAS= to leave them out; they then skip).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" "dev,train,${HX_EXTRAS-video,ray,serve}"
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
