#!/usr/bin/env bash
# A small copy of the general training set for the GPU machine, where only 64 MiB travel a call
# (working tree + carried paths) and ../shared does not: .gpu-data/general (hx-train prepare of
# ccp + pennfudan + coco, seed 0, the split of runs/general) and .gpu-data/backgrounds, every photo
# shrunk to SIDE px on its longer side as JPEG of QUALITY; plus .whl/, the simplejpeg wheel fit's
# JPEG decoder needs there (its image lacks it). Both folders are in .git/info/exclude; carry them:
#
#   scripts/gpu_data.sh [SIDE=384] [QUALITY=80]     then run scripts/gpu_train.sh with the device tool
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
side="${1:-384}" quality="${2:-80}"
data="${HX_DATA:-$root/../shared/data}" out="$root/.gpu-data" py="$root/.venv/bin/python"
for ignored in /.gpu-data/ /.whl/; do
    grep -qxF "$ignored" "$root/.git/info/exclude" 2>/dev/null || echo "$ignored" >> "$root/.git/info/exclude"
done
rm -rf "$out"
"$root/.venv/bin/hx-train" prepare "$data/ccp" "$data/pennfudan" "$data/coco" "$out/general" --seed 0 \
    --max-side "$side" --jpeg-quality "$quality"
"$py" - "$data/backgrounds" "$out/backgrounds" "$side" "$quality" <<'PY'
import sys
from pathlib import Path
import cv2
from hx_infer.io.images import read_photo
from hx_infer.io.pairs import photo_files
src, dst, side, quality = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst.mkdir(parents=True)
for path in photo_files(src):
    rgb = read_photo(path)
    scale = min(1.0, side / max(rgb.shape[:2]))
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(dst / (path.stem + ".jpg")), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, quality])
print(f"{dst}: {len(list(dst.iterdir()))} person-free photos")
PY
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$root/.whl" "simplejpeg==$("$py" -c 'import simplejpeg; print(simplejpeg.__version__)')"
du -sh --apparent-size "$out/general" "$out/backgrounds" "$root/.whl"
