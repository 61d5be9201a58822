#!/usr/bin/env bash
# A small copy of the general training set for the GPU machine, where only 64 MiB travel a call
# (working tree + carried paths) and ../shared does not: .gpu-data/general (hx-train prepare of
# ccp + pennfudan + coco, seed 0, the split of runs/general) and .gpu-data/backgrounds, every photo
# shrunk to SIDE px on its longer side as JPEG of QUALITY; plus .whl/, the simplejpeg wheel fit's
# JPEG decoder needs there (its image lacks it). Both folders are in .git/info/exclude; carry them:
#
#   scripts/gpu_data.sh [SIDE=288] [QUALITY=75]     then run scripts/gpu_train.sh with the device tool
#
# The tracked tree travels too (42 MiB with the 41 MB bundled model), so the defaults are what fits
# beside it (19 MiB); the script ends with exit 1 when the total would not travel.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
side="${1:-288}" quality="${2:-75}"
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
from hx_infer.io.images import atomic_write, encode_jpeg, read_photo
from hx_infer.io.pairs import photo_files
from hx_train.prepare import fit_within
src, dst, side, quality = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst.mkdir(parents=True)
for path in photo_files(src):
    atomic_write(dst / (path.stem + ".jpg"), encode_jpeg(fit_within(read_photo(path), side), quality))
print(f"{dst}: {len(list(dst.iterdir()))} person-free photos")
PY
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$root/.whl" "simplejpeg==$("$py" -c 'import simplejpeg; print(simplejpeg.__version__)')"
du -sh --apparent-size "$out/general" "$out/backgrounds" "$root/.whl"
tracked=$(git -C "$root" ls-files -z | (cd "$root" && xargs -0 du -cb --apparent-size) | tail -1 | cut -f1)
made=$(du -sb --apparent-size "$out" "$root/.whl" | awk '{s += $1} END {print s}')
total_mib=$(( (tracked + made) / 1048576 ))
echo "tracked tree + these: ${total_mib} MiB of the 64 MiB a device call carries"
if (( tracked + made > 64 * 1048576 )); then
    echo "gpu_data.sh: ${total_mib} MiB would not travel; choose a smaller SIDE or QUALITY" >&2
    exit 1
fi
