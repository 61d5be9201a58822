"""Would a second, zoomed-in pass find the people a whole-photo pass misses? A measurement, not
a feature: hx-infer does not do this.

    .venv/bin/python benchmarks/tiled_pass.py MODEL DATA --backgrounds DIR [--frac 0.7] [--trigger 0.03]
    .venv/bin/python benchmarks/tiled_pass.py default runs/general --backgrounds ../shared/data/backgrounds

Per source of a `hx-train prepare` root (DATA/sources.json), each val photo is decoded at full size
and run whole (hx_infer.Extractor.alpha; `hx-infer eval` decodes JPEGs reduced, so its figures
differ from these by a few thousandths). Where that matte calls under --trigger of the photo
person (alpha > 127), the photo is run again as 2 x 2 overlapping tiles, each --frac of each side, every tile letterboxed
to the model's input on its own (so a person comes out 1/frac times larger), and the tiles' mattes,
put back in place, are merged with the first by their maximum. Whole-photo IoU is reported both
ways (hx_infer.evaluate.iou), and for the held-out person-free photos of --backgrounds (the ones
`eval_sources.py` scores, same seed) the share of each photo called person: a pass that finds more
people also finds people where there are none. Model seconds per photo both ways. Never asserted
in tests.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing hx
sys.path.insert(0, str(REPO / "benchmarks"))

from eval_sources import held_out_backgrounds, source_folders  # noqa: E402  (benchmarks/eval_sources.py)

from hx_infer import Extractor  # noqa: E402
from hx_infer.evaluate import iou  # noqa: E402
from hx_infer.io.images import atomic_write, read_photo  # noqa: E402
from hx_infer.io.pairs import read_mask  # noqa: E402


def tiled_alpha(extractor: Extractor, rgb: np.ndarray, frac: float) -> np.ndarray:
    """The maximum of the mattes of 2 x 2 tiles, each `frac` of each side, at the corners."""
    h, w = rgb.shape[:2]
    th, tw = max(1, round(h * frac)), max(1, round(w * frac))
    corners = [(y, x) for y in (0, h - th) for x in (0, w - tw)]
    tiles = [np.ascontiguousarray(rgb[y:y + th, x:x + tw]) for y, x in corners]
    merged = np.zeros((h, w), np.uint8)
    for alpha, (y, x) in zip(extractor.alphas(tiles), corners):
        np.maximum(merged[y:y + th, x:x + tw], alpha, out=merged[y:y + th, x:x + tw])
    return merged


def both_passes(extractor: Extractor, rgb: np.ndarray, frac: float, trigger: float) -> tuple[np.ndarray, np.ndarray, bool, float, float]:
    """(whole-photo matte, with the tiled pass where it triggers, triggered, seconds, seconds)."""
    start = time.perf_counter()
    alpha = extractor.alpha(rgb)
    whole = time.perf_counter() - start
    triggered = float((alpha > 127).mean()) < trigger
    merged = np.maximum(alpha, tiled_alpha(extractor, rgb, frac)) if triggered else alpha
    return alpha, merged, triggered, whole, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or 'default')")
    parser.add_argument("data", type=Path, help="a hx-train prepare root with sources.json")
    parser.add_argument("--backgrounds", type=Path, help="person-free photos (fit --backgrounds)")
    parser.add_argument("--seed", type=int, default=0, help="fit's seed: which backgrounds were held out")
    parser.add_argument("--frac", type=float, default=0.7, help="each tile's share of each side")
    parser.add_argument("--trigger", type=float, default=0.03,
                        help="run the tiles where the whole-photo matte calls under this share person")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if not 0 < args.frac < 1:
        parser.error(f"--frac must be in (0, 1), got {args.frac}")

    report: dict = {"model": args.model, "frac": args.frac, "trigger": args.trigger, "sources": {}}
    seconds = {"whole": [], "with_tiles": []}
    print("| source | n | tiled | IoU whole | IoU with tiles | at IoU 0: whole, with tiles |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch, Extractor(args.model, backend="ort", device="cpu") as extractor:
        for name, folder in source_folders(args.data, Path(scratch)).items():
            rows = []
            for photo in sorted((folder / "images").iterdir()):
                mask = read_mask(folder / "masks" / f"{photo.stem}.png")
                alpha, merged, triggered, whole, total = both_passes(
                    extractor, read_photo(photo), args.frac, args.trigger)
                rows.append({"photo": photo.name, "tiled": triggered,
                             "iou_whole": iou(alpha, mask), "iou_with_tiles": iou(merged, mask)})
                seconds["whole"].append(whole)
                seconds["with_tiles"].append(total)
            a, b = (np.array([r[k] for r in rows]) for k in ("iou_whole", "iou_with_tiles"))
            tiled = sum(r["tiled"] for r in rows)
            report["sources"][name] = {"n": len(rows), "tiled": tiled, "iou_whole": float(a.mean()),
                                       "iou_with_tiles": float(b.mean()), "images": rows}
            print(f"| {name} | {len(rows)} | {tiled} | {a.mean():.3f} | {b.mean():.3f} | "
                  f"{int((a == 0).sum())}, {int((b == 0).sum())} |")
        if args.backgrounds:
            shares = np.array([[float((m > 127).mean()) for m in both_passes(
                extractor, read_photo(p), args.frac, args.trigger)[:2]]
                for p in held_out_backgrounds(args.backgrounds, args.seed)])
            report["backgrounds"] = {"n": len(shares), "fp_mean_whole": float(shares[:, 0].mean()),
                                     "fp_mean_with_tiles": float(shares[:, 1].mean()),
                                     "fp_p90_whole": float(np.percentile(shares[:, 0], 90)),
                                     "fp_p90_with_tiles": float(np.percentile(shares[:, 1], 90))}
            print(f"\nheld-out person-free photos: {len(shares)}, share called person (mean / p90): whole "
                  f"{shares[:, 0].mean():.3f} / {np.percentile(shares[:, 0], 90):.3f}, with tiles "
                  f"{shares[:, 1].mean():.3f} / {np.percentile(shares[:, 1], 90):.3f}")
    report["seconds_per_photo"] = {k: float(np.mean(v)) for k, v in seconds.items()}
    print(f"model seconds per val photo: whole {np.mean(seconds['whole']):.4f}, "
          f"with tiles {np.mean(seconds['with_tiles']):.4f}")
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
