#!/usr/bin/env bash
# Quick-start model: prepare a data set of photos + person masks, train the `lite` preset briefly on
# the CPU, export it to runs/quickstart/model. DATA defaults to the shared ccp set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="${1:-$root/../shared/data/ccp}"
run="$root/runs/quickstart"
"$root/scripts/bootstrap.sh" "train${HX_EXTRAS:+,$HX_EXTRAS}"
bin="$root/.venv/bin"
[ -d "$run/data/train" ] || "$bin/hx-train" prepare "$src" "$run/data" --seed 0
[ -f "$run/train/last.pt" ] || "$bin/hx-train" fit "$run/data" --out "$run/train" --preset lite \
    --size 128 --epochs "${HX_QUICK_EPOCHS:-3}" --epochs-decay 0 --batch-size 16 --device auto
[ -f "$run/model/model.json" ] || "$bin/hx-train" export "$run/train/best.pt" --out "$run/model"
