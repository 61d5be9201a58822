"""A model's val figures per source of a prepared set, as `hx-infer eval` scores them, and a picture
of its best-chosen and worst photos per source.

    .venv/bin/python benchmarks/eval_sources.py MODEL DATA [--backgrounds DIR] [--grid PNG] [--json PATH]
    .venv/bin/python benchmarks/eval_sources.py default runs/general --backgrounds ../shared/data/backgrounds \\
        --grid docs/results.png

DATA is a `hx-train prepare` root with several sources (DATA/sources.json): each source's val pairs
are scored on their own (full / upper / head crops: IoU mean, median, 10th percentile, alpha MAE,
boundary F), with hx_infer.evaluate.evaluate, the code behind `hx-infer eval`. --backgrounds: the
person-free photos that `hx-train fit --backgrounds` held out (the same rule: hx_train.prepare's
choose_val with its default share and minimum, seed --seed) are run too, and the share of each
photo called person (alpha > 127) is reported: mean and 90th percentile. --grid: per source, --n
photos drawn by the seed and the --worst lowest full-photo IoUs, as rows of (photo | alpha | cutout
on white), written atomically. --refine guided scores the refined mattes instead (hx-infer eval
--refine). --split train --limit N scores N training photos a source instead:
a model that scores no better on the photos it learned from than on val ones lacks capacity, one
far better overfits. Prints a markdown table; --json saves everything. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing hx
sys.path.insert(0, str(REPO / "benchmarks"))

from grid import row, stack, tile  # noqa: E402  (benchmarks/grid.py)

from hx_infer import Extractor  # noqa: E402
from hx_infer.compose import composite, parse_background  # noqa: E402
from hx_infer.evaluate import evaluate  # noqa: E402
from hx_infer.io.images import atomic_write, encode_png, read_photo  # noqa: E402
from hx_train.data import find_backgrounds  # noqa: E402
from hx_train.prepare import MIN_VAL, VAL_FRACTION, choose_val, read_sources  # noqa: E402


def source_folders(data: Path, scratch: Path, split: str = "val", limit: int = 0, seed: int = 0) -> dict[str, Path]:
    """Per source, a folder of links to its pairs of `split` (images/, masks/), named without the
    prefix; with `limit`, that many of them drawn by `seed`."""
    folders = {}
    for source in read_sources(data):
        prefix, folder = source["prefix"], scratch / source["name"]
        photos = sorted(p for p in (data / split / "images").iterdir() if p.name.startswith(prefix))
        if limit and len(photos) > limit:
            picked = np.random.default_rng(seed).choice(len(photos), size=limit, replace=False)
            photos = [photos[i] for i in sorted(picked)]
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True)
        for photo in photos:
            mask = data / split / "masks" / f"{photo.stem}.png"
            (folder / "images" / photo.name[len(prefix):]).symlink_to(photo.resolve())
            (folder / "masks" / mask.name[len(prefix):]).symlink_to(mask.resolve())
        folders[source["name"]] = folder
    return folders


def held_out_backgrounds(folder: Path, seed: int) -> list[Path]:
    """The person-free photos `hx-train fit --backgrounds FOLDER --seed SEED` kept out of training."""
    photos = find_backgrounds(folder)
    held_out = choose_val([p.name for p in photos], VAL_FRACTION, seed, MIN_VAL)
    return [p for p in photos if p.name in held_out]


def background_shares(extractor: Extractor, folder: Path, seed: int) -> dict:
    shares = [float((extractor.alpha(read_photo(p)) > 127).mean()) for p in held_out_backgrounds(folder, seed)]
    return {"n": len(shares), "fp_mean": float(np.mean(shares)), "fp_p90": float(np.percentile(shares, 90))}


def grid_rows(extractor: Extractor, results: dict, n: int, worst: int, seed: int, height: int) -> list:
    white = parse_background("white")
    full = sorted((r for r in results["images"] if r["crop"] == "full"), key=lambda r: r["path"])
    picked = np.random.default_rng(seed).choice(len(full), size=min(n, len(full)), replace=False)
    chosen = [full[i] for i in sorted(picked)]
    chosen += [r for r in sorted(full, key=lambda r: r["iou"]) if r not in chosen][:worst]
    rows = []
    for record in chosen:
        rgb = read_photo(Path(record["path"]))
        alpha = extractor.alpha(rgb)
        print(f"  {record['path']}: IoU {record['iou']:.3f}")
        rows.append(row([tile(rgb, height), tile(alpha, height), tile(composite(rgb, alpha, white), height)]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or 'default')")
    parser.add_argument("data", type=Path, help="a hx-train prepare root with sources.json")
    parser.add_argument("--backgrounds", type=Path, help="person-free photos (fit --backgrounds)")
    parser.add_argument("--seed", type=int, default=0, help="fit's seed (held-out backgrounds) and the grid's")
    parser.add_argument("--grid", type=Path, help="PNG of photo | alpha | cutout rows per source")
    parser.add_argument("--n", type=int, default=2, help="grid: photos per source drawn by the seed")
    parser.add_argument("--worst", type=int, default=2, help="grid: lowest-IoU photos per source")
    parser.add_argument("--height", type=int, default=200, help="grid: tile height in pixels")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="train: score the photos the model learned from (does it fit them? underfitting or overfitting)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many photos a source, drawn by --seed")
    parser.add_argument("--refine", choices=("none", "guided"), default="none",
                        help="score the mattes of `hx-infer run --refine` (the grid and backgrounds stay unrefined)")
    args = parser.parse_args()

    report: dict = {"model": args.model, "data": str(args.data), "split": args.split, "refine": args.refine,
                    "sources": {}}
    rows: list = []
    print("| source | crop | n | IoU mean | median | p10 | MAE | boundary F@3px |\n|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch, Extractor(args.model, backend="ort", device="cpu") as extractor:
        for name, folder in source_folders(args.data, Path(scratch), args.split, args.limit, args.seed).items():
            results = evaluate(extractor.model, folder, extractor.backend, refine=args.refine)
            report["sources"][name] = {"crops": results["crops"], "images": results["images"]}
            for crop, s in results["crops"].items():
                print(f"| {name} | {crop} | {s['n']} | {s['iou_mean']:.3f} | {s['iou_median']:.3f} | "
                      f"{s['iou_p10']:.3f} | {s['mae_mean']:.3f} | {s['boundary_f_mean']:.2f} |")
            if args.grid:
                rows += grid_rows(extractor, results, args.n, args.worst, args.seed, args.height)
        if args.backgrounds:
            report["backgrounds"] = shares = background_shares(extractor, args.backgrounds, args.seed)
            print(f"\nheld-out person-free photos: {shares['n']}, share called person: mean "
                  f"{shares['fp_mean']:.3f}, p90 {shares['fp_p90']:.3f}")
        report["model_sha256"] = extractor.model.sha256
    if args.grid and rows:
        picture = stack(rows)
        atomic_write(args.grid, encode_png(picture))
        print(f"wrote {args.grid} ({picture.shape[1]}x{picture.shape[0]})")
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
