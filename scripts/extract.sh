#!/usr/bin/env bash
# The main job of the README: set up .venv/ if needed, then cut the people out of every photo in
# INPUT into OUTPUT. Extra options go to `hx-infer run` (see `hx-infer run --help`).
# Uses the model bundled in the package (the base install, no torch); while the package has none,
# it trains the quick-start model once (scripts/quickstart.sh, which adds the train extra) and uses that.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then echo "usage: scripts/extract.sh INPUT OUTPUT [hx-infer run options]" >&2; exit 2; fi
"$root/scripts/bootstrap.sh" "${HX_EXTRAS:-}"
model_args=()
if [ ! -f "$root/hx_infer/models/default/model.json" ]; then
    quick="$root/runs/quickstart/model"
    [ -f "$quick/model.json" ] || "$root/scripts/quickstart.sh"
    model_args=(--model "$quick")
fi
exec "$root/.venv/bin/hx-infer" run "$@" "${model_args[@]}"
