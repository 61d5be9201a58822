"""Draw the crops `hx-infer eval` scores on a few photos: the person's mask tinted green, the
`upper` box red, the `head` box blue (rules in hx_infer/evaluate.py). For checking the rules by eye.

    .venv/bin/python benchmarks/eval_crops.py ../shared/data/ccp --out /tmp/eval_crops.png --n 6

Photos are chosen as benchmarks/grid.py chooses them (--n, --seed); tiles are --height px tall,
in rows of --per-row. Needs no model. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from grid import REPO, choose, row, stack, tile  # noqa: F401 - REPO puts hx on sys.path

from hx_infer.evaluate import EvalError, crop_box, data_folder, find_pairs, read_mask  # noqa: E402
from hx_infer.io.images import DecodeError, atomic_write, encode_png, read_photo  # noqa: E402

COLOURS = {"upper": (255, 0, 0), "head": (0, 0, 255)}  # RGB
TINT = np.array([0, 100, 0], np.float32)


def draw(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The photo with the mask tinted and every person crop's box outlined."""
    picture = np.array(rgb)
    person = mask > 127
    picture[person] = (picture[person] * 0.6 + TINT).astype(np.uint8)
    line = max(2, round(max(mask.shape) / 250))
    for crop, colour in COLOURS.items():
        box = crop_box(mask, crop)
        if box is not None:
            x0, y0, x1, y1 = box
            cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), colour, line)
    return picture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="images/ + masks/, or a hx-train prepare root")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=300)
    parser.add_argument("--per-row", type=int, default=6)
    args = parser.parse_args()
    if min(args.n, args.per_row) < 1 or args.height < 8:
        parser.error("--n and --per-row must be at least 1, --height at least 8")
    try:
        pairs, _ = find_pairs(data_folder(args.data))
        tiles = [tile(draw(read_photo(photo), read_mask(mask)), args.height)
                 for photo, mask in choose(pairs, args.n, args.seed)]
    except EvalError as e:
        print(f"eval_crops: error: {e}", file=sys.stderr)
        return 2
    except DecodeError as e:
        print(f"eval_crops: error: a photo or mask cannot be read ({e})", file=sys.stderr)
        return 1
    picture = stack([row(tiles[i:i + args.per_row]) for i in range(0, len(tiles), args.per_row)])
    atomic_write(args.out, encode_png(picture))
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]}, {len(tiles)} photos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
