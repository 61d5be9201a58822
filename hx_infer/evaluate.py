"""`hx-infer eval`: how closely a model's mattes match hand-made person masks, per crop type.

DATA is a folder in `hx-train prepare`'s layout: DATA/images/<stem>.* with DATA/masks/<stem>.*
(0 = background, 255 = person), matched by stem; a prepare root (DATA/val/images, DATA/val/masks)
is evaluated on its held-out val split.

Each photo is scored on up to three crops, so the figures say how the model does on whole photos,
portraits and profile pictures. Crops are fixed by the mask alone, so every run scores the same
pixels. With the person's box from the mask (mask > 127; rows top..bottom, height h = bottom - top):

    full   the whole photo.
    upper  upper body: rows from top - 0.10 h down to top + round(0.55 h) (exclusive), columns
           from the person's leftmost to rightmost pixel within those person rows, widened by
           0.10 h on each side; clamped to the photo.
    head   head and shoulders: the same with top + round(0.30 h).

The rule and its fractions live in hx_infer.crops, which hx-train's person-band views read too,
so eval scores the views training crops. A photo whose mask is empty has no person box: it is scored on `full` only
and reported as skipped for the other crops. The same crop is cut from photo and mask.

The model sees a crop exactly as `hx-infer run` shows it a photo: letterbox -> backend ->
unletterbox -> to_uint8. The `full` crop goes through run.photos.matte_input, the decode of
`hx-infer run --outputs alpha`, so its per-image scores are those of the mattes that run writes;
the other crops are cut from the full-resolution decode. With refine="guided" the `full` crop's
model input is that same decode (as `hx-infer run` shows the model a photo whatever it writes),
and every matte is refined along the full-resolution pixels of its crop, as
`hx-infer run --refine guided` refines a photo's (the same decode, radius and filter).

Per image and crop (alpha: the matte, uint8; mask: uint8):
    iou         |A & M| / |A | M| with A = alpha > 127 (alpha/255 > 0.5), M = mask > 127;
                1.0 when both are empty.
    mae         mean |alpha/255 - mask/255| over the crop's pixels.
    boundary    boundaries are A (resp. M) minus its 3x3 erosion, the photo's edge counting as
                inside (a person cut off by the frame has no boundary there). Precision: the
                share of A's boundary pixels within `tolerance` pixels (Euclidean) of M's;
                recall the reverse; F = 2PR / (P + R). Both boundaries empty: P = R = F = 1.
Per crop: n, mean / median / 10th percentile of IoU, mean MAE, mean boundary P, R and F.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from .backends.base import Backend
from .crops import CROPS, Box, crop_box
from .io.images import DecodeError, photo_size, read_photo
from .io.pairs import find_pairs, read_mask
from .model import ModelDir
from .run.config import parse_names
from .run.options import DEFAULT_MAX_PIXELS, REFINES
from .run.photos import matte_input
from .transforms import Letterbox, letterbox, refine_matte, to_uint8, unletterbox

DEFAULT_TOLERANCE = 3  # px
# The disk _near dilates by is (2t + 1)^2 pixels: at 100 px a 1-megapixel crop takes about half a
# second, and at 50000 px the disk alone would be 149 GiB. Mattes are scored within a few pixels.
MAX_TOLERANCE = 100  # px


class EvalError(ValueError):
    """Nothing can be evaluated: bad DATA, option or model. The message is one line naming it."""


# ---------------------------------------------------------------------------------------------
# Metrics: pure functions of a matte and a mask of the same [H, W] shape, both uint8


def _check_pair(alpha: np.ndarray, mask: np.ndarray) -> None:
    if alpha.shape != mask.shape or alpha.ndim != 2:
        raise ValueError(f"expected two [H, W] arrays of one shape, got {list(alpha.shape)} and {list(mask.shape)}")


def iou(alpha: np.ndarray, mask: np.ndarray) -> float:
    """IoU of alpha > 127 and mask > 127 ([H, W] uint8 each); 1.0 when both are empty."""
    _check_pair(alpha, mask)
    a, m = alpha > 127, mask > 127
    union = np.count_nonzero(a | m)
    return 1.0 if union == 0 else np.count_nonzero(a & m) / union


def alpha_mae(alpha: np.ndarray, mask: np.ndarray) -> float:
    """mean |alpha/255 - mask/255| ([H, W] uint8 each), in [0, 1]."""
    _check_pair(alpha, mask)
    diff = np.abs(alpha.astype(np.int16) - mask.astype(np.int16))
    return float(diff.mean(dtype=np.float64) / 255)


def boundary(region: np.ndarray) -> np.ndarray:
    """bool [H, W] -> bool [H, W]: the region's pixels with a 3x3 neighbour outside it.

    OpenCV erodes with the outside of the image counting as inside the region, so a region
    that runs off the frame has no boundary along the frame.
    """
    eroded = cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8))
    return region & (eroded == 0)


def _near(edge: np.ndarray, tolerance: float) -> np.ndarray:
    """bool [H, W]: the pixels within `tolerance` (Euclidean) of a True pixel of `edge`.

    A dilation by the disk of pixel offsets at most `tolerance` long: exact, and several times
    faster than an exact distance transform (cv2.DIST_MASK_PRECISE took 8 ms a crop on ccp).
    """
    r = int(tolerance)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (dy * dy + dx * dx <= tolerance * tolerance).astype(np.uint8)
    return cv2.dilate(edge.astype(np.uint8), disk) > 0


def boundary_scores(alpha: np.ndarray, mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
                    ) -> tuple[float, float, float]:
    """(precision, recall, F) of the matte's boundary against the mask's, matched within
    `tolerance` pixels (Euclidean). Both boundaries empty: (1, 1, 1); only one empty: (0, 0, 0)."""
    _check_pair(alpha, mask)
    predicted, truth = boundary(alpha > 127), boundary(mask > 127)
    n_predicted, n_truth = np.count_nonzero(predicted), np.count_nonzero(truth)
    if n_predicted == 0 and n_truth == 0:
        return 1.0, 1.0, 1.0
    if n_predicted == 0 or n_truth == 0:
        return 0.0, 0.0, 0.0
    precision = np.count_nonzero(predicted & _near(truth, tolerance)) / n_predicted
    recall = np.count_nonzero(truth & _near(predicted, tolerance)) / n_truth
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def score(alpha: np.ndarray, mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, float]:
    """Every per-image figure for one matte: iou, mae, boundary_precision, boundary_recall, boundary_f."""
    precision, recall, f = boundary_scores(alpha, mask, tolerance)
    return {"iou": iou(alpha, mask), "mae": alpha_mae(alpha, mask),
            "boundary_precision": precision, "boundary_recall": recall, "boundary_f": f}


# ---------------------------------------------------------------------------------------------
# Crops


def parse_crops(crops: str | Iterable[str]) -> tuple[str, ...]:
    """'full,head' or ('full', 'head') -> ('full', 'head'), in the order given, no repeats."""
    return parse_names(crops, CROPS, "--crops", "crop", EvalError)


# ---------------------------------------------------------------------------------------------
# DATA


@dataclass(frozen=True)
class EvalPlan:
    """What one evaluation will score, checked before the model runs."""

    folder: Path  # the folder holding images/ and masks/
    pairs: tuple[tuple[Path, Path], ...]  # (photo, mask), sorted by photo name
    unpaired: tuple[Path, ...]  # photos with no mask of their stem (reported, not scored)
    crops: tuple[str, ...]
    tolerance: float


def data_folder(data: Path) -> Path:
    """DATA itself when it holds images/ and masks/, else DATA/val (a prepare root)."""
    data = Path(data)
    if not data.is_dir():
        raise EvalError(f"DATA {data}: no such folder")
    for folder in (data, data / "val"):
        if (folder / "images").is_dir() and (folder / "masks").is_dir():
            return folder
    raise EvalError(f"DATA {data}: no images/ and masks/ folders in it (nor val/images/ and val/masks/ "
                    f"as hx-train prepare writes)")


def plan_eval(model: ModelDir, data: Path, crops: str | Iterable[str] = CROPS,
              tolerance: float = DEFAULT_TOLERANCE) -> EvalPlan:
    """Check the model, DATA and options (cheap: lists files, decodes nothing); raise EvalError."""
    if model.target != "alpha":
        raise EvalError(f"model {model.root} paints the person on white (target rgb) and makes no matte "
                        f"to score; eval needs an alpha model")
    if not 0 <= tolerance <= MAX_TOLERANCE:  # also refuses nan, which no comparison holds for
        raise EvalError(f"--boundary-tolerance must be from 0 to {MAX_TOLERANCE} pixels, got {tolerance}")
    crops = parse_crops(crops)
    folder = data_folder(data)
    pairs, unpaired = find_pairs(folder, EvalError)
    if not pairs:
        raise EvalError(f"DATA {folder}: no photo in images/ has a mask of the same stem in masks/")
    return EvalPlan(folder, tuple(pairs), tuple(unpaired), crops, tolerance)


# What evaluate() returns and `--json` holds; a file with them is an earlier result.
_RESULT_KEYS = {"crops", "images", "pairs", "boundary_tolerance_px"}
_MAX_RESULT_BYTES = 256 << 20  # ~10^6 crop records; a larger file is not read to tell what it is


def check_json_path(path: Path) -> None:
    """EvalError unless `path` may receive the results: a new file, or an earlier eval result.
    Never the user's notes, a model card (the model would be dead) or a run report."""
    from .io.images import PHOTO_EXTENSIONS
    from .report import has_json_keys

    path = Path(path)
    if path.is_dir() or path.suffix.lower() in PHOTO_EXTENSIONS:
        raise EvalError(f"--json {path}: give the path of a .json file")
    # A dangling link counts as there: replacing it would lose where it points.
    if (path.exists() or path.is_symlink()) and not has_json_keys(path, _RESULT_KEYS, _MAX_RESULT_BYTES):
        raise EvalError(f"--json {path}: exists and is not an hx-infer eval result; not replaced "
                        f"(remove it, or choose another path)")


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class _Item:
    """One crop of one photo, ready for the model."""

    photo: Path
    crop: str
    box: Box
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    geometry: Letterbox
    mask: np.ndarray  # [h, w] uint8: the mask cut to `box`
    guide: np.ndarray | None = None  # [h, w, 3] uint8 RGB of the crop, for refine="guided"


class _PairError(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(reason)
        self.path, self.reason = path, reason


def _why(e: Exception) -> str:
    """DecodeError's reason, or the OS's words without the path (the caller names the file)."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _items(photo: Path, mask_path: Path, crops: tuple[str, ...], size: int,
           refine: str = "none") -> tuple[list[_Item], list[str]]:
    """The model inputs of one pair, and the person crops it has none for (empty mask)."""
    guided = refine == "guided"
    try:
        mask = read_mask(mask_path)
    except (DecodeError, OSError) as e:
        raise _PairError(mask_path, f"cannot read mask ({_why(e)})") from None
    try:
        width, height = photo_size(photo)
        if mask.shape != (height, width):
            raise _PairError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]}, "
                                        f"photo {photo.name} is {width}x{height}")
        items = []
        boxes = {crop: crop_box(mask, crop) for crop in crops if crop != "full"}
        # run --refine guided decodes at full size too, for the guide; so does eval then.
        rgb = read_photo(photo, DEFAULT_MAX_PIXELS) if guided or (boxes and None not in boxes.values()) else None
        if "full" in crops:
            x, geometry, _ = matte_input(photo, size, DEFAULT_MAX_PIXELS)  # what run shows the model, any outputs
            items.append(_Item(photo, "full", (0, 0, width, height), x, geometry, mask, rgb if guided else None))
        if not boxes or None in boxes.values():
            return items, list(boxes)
        for crop, (x0, y0, x1, y1) in boxes.items():
            cut = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            x, geometry = letterbox(cut, size)
            items.append(_Item(photo, crop, (x0, y0, x1, y1), x, geometry, mask[y0:y1, x0:x1],
                               cut if guided else None))
        return items, []
    except (DecodeError, OSError) as e:
        raise _PairError(photo, f"cannot read photo ({_why(e)})") from None


def _score_batch(items: list[_Item], backend: Backend, tolerance: float) -> list[dict]:
    x = np.stack([item.x for item in items])  # [N, 3, S, S] float32
    out = np.asarray(backend.infer(x))  # [N, 1, S, S] float32 in [0, 1]
    size = x.shape[-1]
    records = []
    for item, item_out in zip(items, out):
        restored = unletterbox(item_out, item.geometry)  # [h, w] float32
        refine = "guided" if item.guide is not None else "none"
        alpha = to_uint8(refine_matte(restored, item.guide, refine, size))  # [h, w] uint8, as hx-infer run writes it
        records.append({"path": str(item.photo), "crop": item.crop, "box": list(item.box),
                        **score(alpha, item.mask, tolerance)})
    return records


def summarise(records: list[dict], skipped: int = 0) -> dict:
    """Per-crop figures from the per-image records of one crop; None where n is 0."""
    def column(key: str) -> np.ndarray:
        return np.array([r[key] for r in records], np.float64)

    n = len(records)
    ious = column("iou")
    return {
        "n": n,
        "skipped": skipped,
        "iou_mean": float(ious.mean()) if n else None,
        "iou_median": float(np.median(ious)) if n else None,
        "iou_p10": float(np.percentile(ious, 10)) if n else None,
        "mae_mean": float(column("mae").mean()) if n else None,
        "boundary_precision_mean": float(column("boundary_precision").mean()) if n else None,
        "boundary_recall_mean": float(column("boundary_recall").mean()) if n else None,
        "boundary_f_mean": float(column("boundary_f").mean()) if n else None,
    }


def evaluate(model: ModelDir, data: Path, backend: Backend, crops: str | Iterable[str] = CROPS,
             tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 8,
             log: Callable[[str], None] | None = None, progress: bool = False, refine: str = "none") -> dict:
    """Score `model` (run on `backend`) on the (photo, mask) pairs in DATA; return the results.

    Returns a JSON-ready dict: model, backend, device, data, pairs, crops {crop: summary},
    images (one record per photo and crop: path, crop, box, iou, mae, boundary_*), skipped
    (photos with no mask, empty masks), failures (unreadable photos or masks, sizes that
    differ), wall_s. Raises EvalError (bad DATA, options or model) before anything runs.
    log: called with one line per pair that failed or was skipped. progress: a tqdm bar.
    refine: "none" or "guided", as `hx-infer run --refine` (recorded in the results).
    """
    from tqdm import tqdm

    from . import __version__

    plan = plan_eval(model, data, crops, tolerance)
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    if refine not in REFINES:
        raise EvalError(f"--refine {refine!r}: choose from {', '.join(REFINES)}")
    say = log or (lambda line: None)
    start = time.perf_counter()
    skipped = [{"path": str(p), "reason": "no mask"} for p in plan.unpaired]
    for entry in skipped:
        say(f"{entry['path']}: skipped, no mask")
    failures: list[dict] = []
    records: list[dict] = []
    empty = dict.fromkeys(plan.crops, 0)  # crop -> photos skipped for an empty mask
    pending: list[_Item] = []
    bar = tqdm(total=len(plan.pairs), unit="pair", disable=None if progress else True, dynamic_ncols=True)
    try:
        for photo, mask_path in plan.pairs:
            try:
                items, missing = _items(photo, mask_path, plan.crops, model.size, refine)
            except _PairError as e:
                failures.append({"path": str(e.path), "reason": e.reason})
                say(f"{e.path}: {e.reason}")
            else:
                if missing:
                    for crop in missing:
                        empty[crop] += 1
                    reason = f"empty mask: no {', '.join(missing)} crop"
                    skipped.append({"path": str(photo), "reason": reason})
                    say(f"{photo}: skipped, {reason}")
                pending.extend(items)
                while len(pending) >= batch_size:
                    records.extend(_score_batch(pending[:batch_size], backend, plan.tolerance))
                    del pending[:batch_size]
            bar.update()
        if pending:
            records.extend(_score_batch(pending, backend, plan.tolerance))
    finally:
        bar.close()

    return {
        "hx_version": __version__,
        "model": {"path": str(model.root), "sha256": model.sha256, "preset": model.preset,
                  "size": model.size, "target": model.target},
        "backend": backend.name,
        "device": str(backend.device),
        "batch_size": batch_size,
        "refine": refine,
        "data": str(plan.folder),
        "pairs": len(plan.pairs),
        "boundary_tolerance_px": plan.tolerance,
        "crops": {crop: summarise([r for r in records if r["crop"] == crop], empty[crop]) for crop in plan.crops},
        "skipped": skipped,
        "failures": failures,
        "images": records,
        "wall_s": round(time.perf_counter() - start, 3),
    }


def format_results(results: dict) -> str:
    """The table `hx-infer eval` prints: one row per crop, then where the figures came from."""
    tolerance = results["boundary_tolerance_px"]
    lines = [f"{'crop':<6} {'n':>6} {'IoU mean':>9} {'median':>7} {'p10':>7} {'MAE':>7} "
             f"{f'boundary F@{tolerance:g}px':>16}"]
    for crop, s in results["crops"].items():
        if not s["n"]:
            lines.append(f"{crop:<6} {0:>6} {'-':>9} {'-':>7} {'-':>7} {'-':>7} {'-':>16}")
            continue
        lines.append(f"{crop:<6} {s['n']:>6} {s['iou_mean']:>9.4f} {s['iou_median']:>7.4f} {s['iou_p10']:>7.4f} "
                     f"{s['mae_mean']:>7.4f} {s['boundary_f_mean']:>16.4f}")
    model = results["model"]
    lines.append(f"model {model['path']} (sha256 {model['sha256'][:12]}), {results['backend']} on "
                 f"{results['device']}; {results['pairs']} pairs from {results['data']}; "
                 f"{len(results['skipped'])} skipped, {len(results['failures'])} failed; {results['wall_s']:.1f} s")
    return "\n".join(lines)
