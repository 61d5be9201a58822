#!/usr/bin/env bash
# The one prepared check for a GPU machine (H100/H200; python3 with torch CUDA and torchvision;
# no TensorRT, no onnxruntime-gpu; hx not pip-installed). Run it from the repository root:
#
#   OUT=/some/folder benchmarks/gpu_check.sh            on the GPU machine
#   OUT=/tmp/check benchmarks/gpu_check.sh --dry-run    here: the CPU-capable steps at tiny sizes
#
# Steps, each with its own time limit; a failed step does not stop the others (total < 6 min):
#   env         nvidia-smi, versions
#   pytest      the gpu-marked tests of the whole suite (python3 -m pytest -m gpu)
#   models      random-weight base and lite models at 256 px (speed does not depend on weights)
#   bench-base  hx-infer bench, torch CUDA fp16 and bf16, batches 1..256, base 256 px
#   bench-lite  the same for lite 256 px
#   e2e         benchmarks/e2e_1080p.py: 1920x1080 JPEGs -> alpha / composite / rgba, per stage
# Kept in $OUT (8 files at most): summary.txt (one line per step), steps.log (everything each
# step printed), bench-base.json/.png, bench-lite.json/.png, e2e.json.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
WORK=$(mktemp -d /tmp/hx-gpu-check.XXXXXX)  # models and photos: large, not worth bringing back
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HX_DEBUG=1  # an internal error shows its traceback in steps.log
mkdir -p "$OUT"
: > "$OUT/summary.txt"
: > "$OUT/steps.log"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, never stop the script
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS log="$WORK/$name.log"
    timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
    local rc=$? note=""
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && note=" (timed out)"
    { echo "===== $name (limit ${limit} s): $*"; cat "$log"; } >> "$OUT/steps.log"
    echo "----- $name: last lines"
    tail -n 25 "$log"
    printf '%-11s exit %3d%s after %3d s\n' "$name" "$rc" "$note" "$((SECONDS - start))" | tee -a "$OUT/summary.txt"
}

versions() {
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version(), platform.machine())
for name in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorrt", "cv2", "numpy", "PIL", "click"):
    try:
        module = importlib.import_module(name)
        print(f"{name:12s} {getattr(module, '__version__', '?')}")
    except Exception as e:
        print(f"{name:12s} -- ({type(e).__name__}: {e})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
import os
print("cores", len(os.sched_getaffinity(0)))
EOF
}

if [ $DRY -eq 1 ]; then
    # here: a 64 px lite model stands in for both, the CPU backend, a handful of photos
    SIZE=64; BASE=$WORK/lite$SIZE; LITE=$WORK/lite$SIZE
    BENCH=(--device cpu --backend ort --batch-sizes 1,2 --iterations 2 --warmup 1)
    E2E=(--device cpu --n 6 --batch-size 3 --outputs alpha,composite)
    MODELS="w('$LITE', 'lite', $SIZE, log=print)"
else
    SIZE=256; BASE=$WORK/base$SIZE; LITE=$WORK/lite$SIZE
    BENCH=(--device cuda --backend torch --precision fp16 --precision bf16 --batch-sizes 1,8,32,128,256
           --iterations 20 --warmup 3)
    E2E=(--device cuda --backend torch --n 1000)
    MODELS="w('$BASE', 'base', $SIZE, log=print); w('$LITE', 'lite', $SIZE, log=print)"
fi

export PY
export -f versions  # timeout runs programs, not shell functions
step env 15 bash -c versions
step pytest 70 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors
step models 40 "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from random_model import write_random_model as w; $MODELS"
step bench-base 70 "$PY" -m hx_infer.cli bench --model "$BASE" "${BENCH[@]}" \
    --json "$OUT/bench-base.json" --plot "$OUT/bench-base.png"
step bench-lite 35 "$PY" -m hx_infer.cli bench --model "$LITE" "${BENCH[@]}" \
    --json "$OUT/bench-lite.json" --plot "$OUT/bench-lite.png"
step e2e 90 "$PY" benchmarks/e2e_1080p.py --model "$BASE" "${E2E[@]}" --json "$OUT/e2e.json"

echo "===== summary (targets, GPU: torch base 256 fp16 batch 256 >= 20,000 img/s on an H200;"
echo "      batch-1 p50 <= 0.5 ms; e2e 1080p alpha >= 1,000 img/s, composite >= 1,500 img/s)"
cat "$OUT/summary.txt"
rm -rf "$WORK"
