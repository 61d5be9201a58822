"""A picture of a model's results on held-out photos: one row per photo, (photo | alpha | cutout on white).

    .venv/bin/python benchmarks/grid.py MODEL DATA --out docs/results.png
    .venv/bin/python benchmarks/grid.py MODEL ../shared/data/ccp --out /tmp/grid.png --n 4 --seed 1

DATA is what `hx-infer eval` takes: images/ + masks/ matched by stem, or a `hx-train prepare`
root (its val/ split). The photos are --n of DATA's pairs drawn by numpy's default_rng(--seed)
without replacement, in name order, so a seed always gives the same picture. Each matte is
made the way `hx-infer run` makes it (Extractor.alpha); the cutout is hx_infer.compose's
composite on white. Every tile is resized to --height pixels tall (aspect kept); rows are
stacked with a white gap and padded white on the right. The PNG is written atomically. Prints
each chosen photo with its IoU against its mask. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing hx

from hx_infer import Extractor  # noqa: E402
from hx_infer.backends.base import BACKENDS, BackendError  # noqa: E402
from hx_infer.compose import composite, parse_background  # noqa: E402
from hx_infer.evaluate import EvalError, data_folder, find_pairs, iou, read_mask  # noqa: E402
from hx_infer.io.images import DecodeError, atomic_write, encode_png, read_photo  # noqa: E402
from hx_infer.model import ModelError  # noqa: E402

GAP = 4  # px of white between tiles and between rows
WHITE = 255


def choose(pairs: list[tuple[Path, Path]], n: int, seed: int) -> list[tuple[Path, Path]]:
    """n of the pairs (all when there are fewer), drawn by `seed`, in name order."""
    picked = np.random.default_rng(seed).choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(picked)]


def tile(image: np.ndarray, height: int) -> np.ndarray:
    """[H, W] or [H, W, 3] uint8 -> [height, W * height / H, 3] uint8 RGB."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    shrinking = height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def row(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles of one height side by side, GAP px of white between them."""
    height = tiles[0].shape[0]
    gap = np.full((height, GAP, 3), WHITE, np.uint8)
    parts = [part for t in tiles for part in (t, gap)][:-1]
    return np.hstack(parts)


def stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows one under another, GAP px of white between them, padded white to the widest."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + GAP * (len(rows) - 1)
    canvas = np.full((height, width, 3), WHITE, np.uint8)
    y = 0
    for r in rows:
        canvas[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + GAP
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or 'default')")
    parser.add_argument("data", type=Path, help="images/ + masks/, or a hx-train prepare root")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write, e.g. docs/results.png")
    parser.add_argument("--n", type=int, default=6, help="photos (rows)")
    parser.add_argument("--seed", type=int, default=0, help="which photos")
    parser.add_argument("--height", type=int, default=256, help="tile height in pixels")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.n < 1 or args.height < 8:
        parser.error("--n must be at least 1 and --height at least 8")
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: give a .png path")

    white = parse_background("white")
    try:
        pairs, _ = find_pairs(data_folder(args.data))
        rows = []
        with Extractor(args.model, backend=args.backend, device=args.device) as extractor:
            for photo, mask_path in choose(pairs, args.n, args.seed):
                reading = photo
                rgb = read_photo(photo)
                reading = mask_path
                mask = read_mask(mask_path)
                alpha = extractor.alpha(rgb)  # [H, W] uint8, as hx-infer run writes it
                score = f"IoU {iou(alpha, mask):.3f}" if mask.shape == alpha.shape else "mask size differs"
                print(f"{photo}: {score}")
                rows.append(row([tile(rgb, args.height), tile(alpha, args.height),
                                 tile(composite(rgb, alpha, white), args.height)]))
    except (EvalError, ModelError, BackendError) as e:
        print(f"grid: error: {e}", file=sys.stderr)
        return 2
    except DecodeError as e:
        print(f"grid: error: {reading}: {e}", file=sys.stderr)
        return 1
    grid = stack(rows)
    atomic_write(args.out, encode_png(grid))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]}, {len(rows)} photos, model "
          f"{extractor.model.root}, {extractor.backend_name} on {extractor.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
