#!/usr/bin/env bash
# Train the general model on the GPU machine from the small copy scripts/gpu_data.sh made, export
# it, and leave what comes back (at most 8 files of 16 MiB) in $OUT: model.onnx, model.fp16.onnx,
# generator.pt, model.json, metrics.jsonl, train.log. With the device tool, from the repo root:
#
#   run(command="OUT=$OUT scripts/gpu_train.sh", carry=[".gpu-data", ".whl"], timeout_s=...)
#   OUT=/tmp/t scripts/gpu_train.sh --dry-run     here: 1 epoch on the CPU at 64 px
#
# The recipe is set by PRESET SIZE EPOCHS DECAY BATCH LR LAMBDA_GAN (defaults below) and fit's own
# defaults; fit stops by itself at the end of the schedule, LIMIT (s) only guards the lease.
# INIT=default PRESET=wide starts from the bundled model (it travels with the tracked tree).
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT}
WORK=$(mktemp -d /tmp/hx-gpu-train.XXXXXX)  # checkpoints (32+ MiB each) stay there
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if ! "$PY" -c "import simplejpeg" 2> /dev/null; then  # the GPU image lacks it; gpu_data.sh fetched it
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
        || { echo "simplejpeg missing and .whl/ not carried" >&2; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
PRESET=${PRESET:-slim} SIZE=${SIZE:-256} EPOCHS=${EPOCHS:-300} DECAY=${DECAY:-300} BATCH=${BATCH:-32}
LR=${LR:-1e-3} LAMBDA_GAN=${LAMBDA_GAN:-1} LIMIT=${LIMIT:-420} DEVICE=cuda
if [ $DRY = 1 ]; then SIZE=64 EPOCHS=1 DECAY=0 BATCH=8 LIMIT=300 DEVICE=cpu; fi
fit=("$PY" -m hx_train fit .gpu-data/general --out "$WORK/run" --preset "$PRESET" --size "$SIZE"
     --epochs "$EPOCHS" --epochs-decay "$DECAY" --batch-size "$BATCH" --lr "$LR" --lambda-gan "$LAMBDA_GAN"
     --seg-loss dice --seg-weight 10 --backgrounds .gpu-data/backgrounds --device "$DEVICE" --amp bf16
     --seed 0 --quiet ${INIT:+--init-from "$INIT"})
echo "${fit[*]}" | tee "$OUT/train.log"
timeout "$LIMIT" "${fit[@]}" >> "$OUT/train.log" 2>&1
echo "fit exit $?" >> "$OUT/train.log"
cp "$WORK/run/metrics.jsonl" "$OUT/" 2> /dev/null
ckpt="$WORK/run/best.pt"
[ -f "$ckpt" ] || { echo "no checkpoint: see train.log" >&2; tail -n 20 "$OUT/train.log"; exit 1; }
"$PY" -m hx_train export "$ckpt" --out "$WORK/model" >> "$OUT/train.log" 2>&1 \
    || { echo "export failed: see train.log" >&2; tail -n 20 "$OUT/train.log"; exit 1; }
cp "$WORK/model/"* "$OUT/"
tail -n 5 "$OUT/train.log"
ls -la "$OUT"
