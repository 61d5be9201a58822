"""COCO instances JSON -> person masks: the `coco` source format of `hx-train prepare`.

Most labelling tools (CVAT, Label Studio, Roboflow, ...) export this format. What counts as person:
every annotation of one category (by name, "person" by default), whatever its kind:
  polygons          segmentation = [[x0, y0, x1, y1, ...], ...]: every part filled and united (COCO
                    draws an instance as the union of its polygons; holes need RLE)
  uncompressed RLE  segmentation = {"size": [h, w], "counts": [n0, n1, ...]}: alternating runs of 0
                    and 1, starting with 0, over the pixels in column-major order (crowd regions)
  compressed RLE    the same runs as COCO's ASCII string (pycocotools' rleToString), decoded here: a
                    dozen lines, not worth a compiled dependency
Coordinates are COCO's: (0, 0) is the top-left corner of the top-left pixel.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hx_infer.run.options import DEFAULT_MAX_PIXELS

POLYGON_SHIFT = 3  # cv2.fillPoly fixed-point bits: vertices at 1/8 px instead of rounded to pixels
POLYGON_SUPERSAMPLE = 4  # polygons are filled at 4x and averaged down (polygons_mask)
MAX_PIXELS = DEFAULT_MAX_PIXELS  # an image entry's width x height; larger photos are skipped anyway


class CocoError(Exception):
    """The JSON cannot be used at all (unreadable, not COCO, no such category); one line."""


@dataclass(frozen=True)
class Objects:
    """The segmentations of one image's chosen-category annotations (hashable, for prepare's pairs)."""

    width: int
    height: int
    segmentations: tuple  # of the JSON values, as json.dumps strings


def find_json(src: Path) -> Path:
    """SRC itself when it is a .json file, else the only .json file in the folder SRC."""
    if src.is_file():
        return src
    found = sorted(src.glob("*.json"))
    if len(found) != 1:
        raise CocoError(f"{src}: expected one COCO .json file in the folder, found {len(found)}")
    return found[0]


def _image_path(json_path: Path, file_name: str) -> Path:
    """Where a `file_name` is: under images/ beside the JSON, else beside the JSON itself."""
    for folder in (json_path.parent / "images", json_path.parent):
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return json_path.parent / "images" / file_name


def list_images(src: Path, category: str = "person") -> tuple[list[tuple[Path, Objects]], list[tuple[Path, str]]]:
    """-> ([(photo path, its objects)], [(missing photo path, reason)]), sorted by file name.

    Images with no annotation of `category` are listed too (with no objects): prepare skips them
    as "empty mask", as it does person-free photos of every format.
    """
    json_path = find_json(Path(src))
    try:
        doc = json.loads(json_path.read_bytes())
        categories = {c["name"]: c["id"] for c in doc["categories"]}
        images = doc["images"]
        annotations = doc.get("annotations", [])
    except OSError as e:
        raise CocoError(f"{json_path}: cannot read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CocoError(f"{json_path}: not a COCO instances file ({type(e).__name__}: {e})") from None
    # The rest is iterated and indexed below: a wrong type is a wrong file, not a bad entry.
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise CocoError(f"{json_path}: not a COCO instances file (\"images\" and \"annotations\" must be lists, "
                        f"got {type(images).__name__} and {type(annotations).__name__})")
    if category not in categories:
        names = ", ".join(sorted(categories)[:20]) or "none"
        raise CocoError(f"{json_path}: no category {category!r} (--category); it has {names}")
    wanted = categories[category]
    by_image: dict[object, list[str]] = {}
    for ann in annotations:
        if isinstance(ann, dict) and ann.get("category_id") == wanted and "segmentation" in ann:
            image_id = ann.get("image_id")
            # A person whose image cannot be told would be missing from its mask unseen.
            if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
                raise CocoError(f"{json_path}: annotation {str(ann.get('id'))[:20]} has image_id "
                                f"{json.dumps(image_id)[:40]}, not a number or string")
            by_image.setdefault(image_id, []).append(json.dumps(ann["segmentation"]))
    found, missing = [], []
    entries = [im for im in images if isinstance(im, dict)]
    missing += [(json_path, f"image entry is not an object: {json.dumps(im)[:80]}")
                for im in images if not isinstance(im, dict)]
    for image in sorted(entries, key=lambda im: str(im.get("file_name", ""))):
        try:
            path = _image_path(json_path, str(image["file_name"]))
            objects = Objects(int(image["width"]), int(image["height"]), tuple(by_image.get(image["id"], ())))
        except (KeyError, TypeError, ValueError):
            missing.append((json_path, f"image entry without file_name/width/height/id: {str(image)[:80]}"))
            continue
        # The mask is drawn on this canvas (4x finer for polygons): it must exist and fit in memory.
        if not (0 < objects.width and 0 < objects.height and objects.width * objects.height <= MAX_PIXELS):
            missing.append((path, f"image entry with unusable width/height {objects.width}x{objects.height}"))
            continue
        if path.is_file():
            found.append((path, objects))
        else:
            missing.append((path, "no such file"))
    return found, missing


def decode_rle_string(counts: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (the inverse of pycocotools' rleToString).

    Each run is 5-bit groups as chr(48 + group) with 0x20 = "more groups follow" and 0x10 in the
    last group = negative; from the fourth run on, a run is stored as the difference from the run
    two before it.
    """
    runs: list[int] = []
    data = counts.encode("ascii")
    p = 0
    while p < len(data):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE ends inside a run")
            c = data[p] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:  # pycocotools: runs from the fourth on are deltas
            value += runs[-2]
        runs.append(value)
    return runs


def rle_mask(rle: dict) -> np.ndarray:
    """An RLE segmentation (counts as a list or a compressed string) -> [h, w] bool."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = decode_rle_string(counts) if isinstance(counts, str) else [int(n) for n in counts]
    if any(n < 0 for n in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {height}x{width}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(width, height).T  # column-major: the runs go down each column first


def polygons_mask(polygons: list, width: int, height: int) -> np.ndarray:
    """COCO polygons ([[x0, y0, x1, y1, ...], ...], pixel-corner coordinates) -> [h, w] bool.

    A pixel is person when the polygons cover more than half of it: cv2.fillPoly also fills every
    pixel an edge touches (a 30 px wide box comes out 31 wide), so the parts are filled at
    POLYGON_SUPERSAMPLE times the resolution and averaged down. Within a few pixels of
    pycocotools' own rasteriser.
    """
    k = POLYGON_SUPERSAMPLE
    fine = np.zeros((height * k, width * k), np.uint8)
    for polygon in polygons:
        points = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(points) >= 3:
            # cv2 puts integer coordinates at pixel centres, COCO at pixel corners: shift by half
            # a fine pixel. One part at a time: fillPoly given several applies even-odd holes.
            fixed = np.round((points * k - 0.5) * (1 << POLYGON_SHIFT)).astype(np.int32)
            cv2.fillPoly(fine, [fixed], 255, lineType=cv2.LINE_8, shift=POLYGON_SHIFT)
    return cv2.resize(fine, (width, height), interpolation=cv2.INTER_AREA) > 127


def objects_mask(objects: Objects, size: tuple[int, int]) -> np.ndarray:
    """The union of an image's segmentations -> [H, W] bool for the photo's size (W, H).

    The JSON's own width/height are the canvas; prepare resizes the mask to the photo if they differ.
    Raises CocoError on a malformed segmentation.
    """
    mask = np.zeros((objects.height, objects.width), bool)
    try:
        for text in objects.segmentations:
            segmentation = json.loads(text)
            if isinstance(segmentation, dict):
                part = rle_mask(segmentation)
                if part.shape != mask.shape:
                    part = cv2.resize(part.astype(np.uint8), (objects.width, objects.height),
                                      interpolation=cv2.INTER_NEAREST).astype(bool)
            else:
                part = polygons_mask(segmentation, objects.width, objects.height)
            mask |= part
    except (ValueError, KeyError, TypeError, UnicodeEncodeError) as e:
        raise CocoError(f"{type(e).__name__}: {e}") from None
    return mask
