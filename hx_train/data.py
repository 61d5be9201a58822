"""The paired data set: decode a split of (photo, mask) pairs into memory once, augment on the device.

DATA/{train,val}/images/NAME.* pairs with DATA/{train,val}/masks/NAME.* (0/255 person masks), as
written by `hx-train prepare`.

Training photos are letterboxed once onto a canvas of side min(2*S, 1024) and kept as uint8; every
batch is then cropped, rotated, flipped and colour-jittered on the device with torch ops, and
resampled to S x S. Validation photos are letterboxed straight to S x S with no augmentation, the
way hx-infer prepares a photo: longer side scaled to S, centred, pad exactly 0.0 after
normalisation (x / 127.5 - 1, RGB).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from hx_infer.crops import BANDS, band_boxes, crop_box
from hx_infer.io.images import DecodeError
from hx_infer.io.images import read_photo as decode_photo
from hx_infer.io.pairs import find_pairs, photo_files
from hx_infer.io.pairs import read_mask as decode_mask
from hx_infer.transforms import fit as letterbox_geometry

from .config import TrainConfig, TrainError
from .prepare import source_of

MAX_CANVAS = 1024
# ITU-R BT.601 luma weights, for grey in contrast and saturation jitter.
LUMA = (0.299, 0.587, 0.114)
# Rows of Split.boxes.
PHOTO, PERSON, UPPER_BODY, HEAD = range(4)


class DataError(TrainError):
    """A split folder without pairs, or a photo or mask that cannot be used."""


def canvas_side(size: int) -> int:
    """Side of the training canvas: twice the model's input, so crops keep detail, capped for memory."""
    return min(2 * size, MAX_CANVAS)


# ---------------------------------------------------------------------------------------------
# Files


def _reason(error: Exception, path: Path) -> str:
    """The error's message on one line, without the path the caller already names."""
    text = str(error).replace(f"'{path}'", "").replace(str(path), "")
    return " ".join(text.split()).rstrip(" :") or type(error).__name__


def split_pairs(split_dir: Path) -> list[tuple[Path, Path]]:
    """(photo, mask) paths of one split (hx_infer.io.pairs.find_pairs), sorted by photo name;
    training needs every photo to have its mask."""
    images_dir, masks_dir = split_dir / "images", split_dir / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (DATA must be a folder written by hx-train prepare)")
    pairs, unpaired = find_pairs(split_dir, DataError)
    if unpaired:
        raise DataError(f"{unpaired[0]}: no mask named {unpaired[0].stem}.* in {masks_dir}")
    if not pairs:
        raise DataError(f"{images_dir}: no photos with masks found")
    return pairs


def read_photo(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB, decoded by hx-infer's own reader (EXIF orientation, colour modes)."""
    try:
        return decode_photo(path)
    except DecodeError as e:
        raise DataError(f"{path}: cannot read image ({_reason(e, path)})") from None


def read_mask(path: Path) -> np.ndarray:
    """[H, W] uint8, 0 = background, 255 = person, read as hx-infer eval reads it (hx_infer.io.pairs)."""
    try:
        return decode_mask(path)
    except DecodeError as e:
        raise DataError(f"{path}: cannot read mask ({_reason(e, path)})") from None


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scale `image` ([H, W] or [H, W, C] uint8) so its longer side is `side`, centre it on a zero
    square of that side. Returns the square and the image's box (x0, y0, x1, y1) in it.

    The geometry is hx_infer.transforms.fit's and the resizing that of hx_infer.transforms.letterbox
    (area when shrinking, bilinear when growing), kept here as uint8 to hold a data set in memory.
    """
    h, w = image.shape[:2]
    geometry = letterbox_geometry(w, h, side)
    new_w, new_h, x0, y0 = geometry.new_w, geometry.new_h, geometry.left, geometry.top
    if (new_w, new_h) != (w, h):
        shrinking = new_w < w or new_h < h
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    square = np.zeros((side, side) + image.shape[2:], dtype=np.uint8)
    square[y0:y0 + new_h, x0:x0 + new_w] = image
    return square, (x0, y0, x0 + new_w, y0 + new_h)


def person_boxes(mask: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """Boxes (x0, y0, x1, y1) of the person in `mask` ([H, W] uint8) and of the bands of the top
    `fractions` of their height, by hx_infer.crops' rule without a margin. [1 + len(fractions), 4]
    float32; all NaN when the mask holds no person.
    """
    boxes = band_boxes(mask, (1.0,) + tuple(fractions))
    if boxes is None:
        return np.full((1 + len(fractions), 4), np.nan, dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# A split in memory


@dataclass
class Split:
    """One split decoded into memory. N pairs, letterboxed onto squares of side `side`."""

    names: list[str]  # photo paths, in order
    photos: torch.Tensor  # [N, 3, side, side] uint8 RGB, pad 0
    masks: torch.Tensor  # [N, 1, side, side] uint8, 255 = person
    boxes: torch.Tensor  # [N, 4, 4] float32 (x0, y0, x1, y1) in pixels: rows PHOTO, PERSON,
    #                      UPPER_BODY, HEAD; the person rows are NaN where the mask is empty
    plates: torch.Tensor | None = None  # [N, 3, side, side] uint8: the photos with the person
    #                                     painted out (load_split(plates=True)), else None
    sources: list[str] | None = None  # each pair's source name (DATA/sources.json), None: one source
    crops: dict[str, Split] = field(default_factory=dict)  # load_split(crops=...): eval's person crops

    def __len__(self) -> int:
        return len(self.names)

    @property
    def side(self) -> int:
        return self.photos.shape[-1]


def paint_out(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A clean plate: photo [H, W, 3] uint8 with the person (mask [H, W] uint8 > 127, grown a
    little) filled in from the surrounding background. [H, W, 3] uint8.

    Telea inpainting of a person-sized hole is slow at full size and gives a smooth fill at any
    size, so the hole is filled at 1/4 scale and the fill is upsampled into it.
    """
    h, w = mask.shape
    small = (max(1, w // 4), max(1, h // 4))
    hole_small = cv2.dilate((cv2.resize(mask, small, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8),
                            np.ones((3, 3), np.uint8), iterations=2)
    filled = cv2.inpaint(cv2.resize(photo, small, interpolation=cv2.INTER_AREA), hole_small, 3, cv2.INPAINT_TELEA)
    hole = cv2.resize(hole_small, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    plate = photo.copy()
    plate[hole] = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)[hole]
    return plate


def find_backgrounds(folder: Path) -> list[Path]:
    """The person-free photos directly in `folder`, sorted by name."""
    if not Path(folder).is_dir():
        raise DataError(f"--backgrounds {folder}: no such folder")
    photos = photo_files(Path(folder), DataError)
    if not photos:
        raise DataError(f"--backgrounds {folder}: no photos in it")
    return photos


def load_split(split_dir: Path | None, side: int, *,
               fractions: tuple[float, float] = (BANDS["upper"], BANDS["head"]),
               workers: int = 0, pin: bool = False, plates: bool = False, crops: tuple[str, ...] = (),
               photos_only: list[Path] | None = None, sources: list[dict] | None = None,
               log: Callable[[str], None] = lambda _: None) -> Split:
    """Decode every pair in `split_dir` and letterbox it onto a `side` x `side` square.

    fractions: the upper-body and head-and-shoulders bands, as shares of the person's height.
    workers: decoding threads (0 = one per core, at most 8). pin: page-locked memory, so batches
    can be copied to a GPU asynchronously. plates: also keep each photo with its person painted
    out (paint_out), the person-free backgrounds Augmenter pastes people onto.
    crops: hx-infer eval's "upper" / "head" crops of each photo as well, cut by its rule
    (hx_infer.crops.crop_box) before letterboxing, into Split.crops; each pair is decoded once for
    all of them, and photos with an empty mask are left out of the crops.
    photos_only: person-free photos with all-zero masks instead of split_dir's pairs (backgrounds).
    sources: DATA/sources.json's sources, to name each pair's source (Split.sources).
    """
    pairs = ([(p, None) for p in photos_only] if photos_only is not None else split_pairs(split_dir))
    n = len(pairs)
    views = {"full": _Rows(n, side, fractions, pin, plates)}
    views.update((crop, _Rows(n, side, fractions, False, False)) for crop in crops)  # copied when kept
    has_person = np.zeros(n, bool)
    held = sum(rows.nbytes for rows in views.values())
    where = split_dir if photos_only is None else (photos_only[0].parent if photos_only else "backgrounds")
    log(f"decoding {n} {'pairs' if photos_only is None else 'person-free photos'} from {where} "
        f"({held / 2**20:.0f} MiB)")

    def load(i: int) -> None:
        photo_path, mask_path = pairs[i]
        photo = read_photo(photo_path)
        mask = read_mask(mask_path) if mask_path is not None else np.zeros(photo.shape[:2], np.uint8)
        if photo.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                            f"photo {photo_path.name} is {photo.shape[1]}x{photo.shape[0]}")
        views["full"].fill(i, photo, mask)
        has_person[i] = mask.max(initial=0) > 127
        if has_person[i]:  # eval's crops are cut around the person
            for crop in crops:
                x0, y0, x1, y1 = crop_box(mask, crop)
                views[crop].fill(i, photo[y0:y1, x0:x1], mask[y0:y1, x0:x1])

    # OpenCV and Pillow release the GIL while decoding and resizing, so threads are enough.
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(load, range(n)):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    names = [str(p) for p, _ in pairs]
    source_names = None
    if sources is not None and len(sources) > 1:
        source_names = [source_of(Path(name).name, sources) for name in names]
    split = views["full"].split(names, source_names)
    kept = np.flatnonzero(has_person)
    for crop in crops:
        split.crops[crop] = views[crop].split(names, source_names, kept)
    return split


class _Rows:
    """The tensors of a Split being decoded, filled one pair at a time from decoding threads."""

    def __init__(self, n: int, side: int, fractions: tuple[float, float], pin: bool, plates: bool):
        self.side, self.fractions = side, fractions
        self.photos = torch.empty((n, 3, side, side), dtype=torch.uint8, pin_memory=pin)
        self.masks = torch.empty((n, 1, side, side), dtype=torch.uint8, pin_memory=pin)
        self.boxes = torch.empty((n, 4, 4), dtype=torch.float32)
        self.plates = torch.empty((n, 3, side, side), dtype=torch.uint8, pin_memory=pin) if plates else None

    @property
    def nbytes(self) -> int:
        return self.photos.nbytes + self.masks.nbytes + (self.plates.nbytes if self.plates is not None else 0)

    def fill(self, i: int, photo: np.ndarray, mask: np.ndarray) -> None:
        square, box = letterbox(photo, self.side)
        mask_square, _ = letterbox(mask, self.side)
        self.photos[i] = torch.from_numpy(square).permute(2, 0, 1)
        self.masks[i, 0] = torch.from_numpy(mask_square)
        self.boxes[i, PHOTO] = torch.tensor(box, dtype=torch.float32)
        self.boxes[i, PERSON:] = torch.from_numpy(person_boxes(mask_square, self.fractions))
        if self.plates is not None:
            self.plates[i] = torch.from_numpy(paint_out(square, mask_square)).permute(2, 0, 1)

    def split(self, names: list[str], sources: list[str] | None, rows: np.ndarray | None = None) -> Split:
        """The filled rows (`rows`: only these, in order) as a Split."""
        if rows is None:
            return Split(names, self.photos, self.masks, self.boxes, self.plates, sources)
        index = torch.from_numpy(rows)
        return Split([names[i] for i in rows], self.photos[index], self.masks[index], self.boxes[index],
                     None, [sources[i] for i in rows] if sources is not None else None)


def gather(source: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """source[index] on `device`. From pinned memory the copy is asynchronous (non_blocking);
    PyTorch's pinned allocator keeps the staging buffer alive until the copy has finished."""
    if device.type == "cuda" and source.is_pinned():
        staging = torch.empty((len(index),) + source.shape[1:], dtype=source.dtype, pin_memory=True)
        torch.index_select(source, 0, index, out=staging)
        return staging.to(device, non_blocking=True)
    return source.index_select(0, index).to(device)


def source_weights(split: Split, balance: float) -> torch.Tensor | None:
    """Per-pair drawing weights [N] float64: a source of n pairs gets n^-balance per pair, so
    balance 0 draws every pair alike and 1 every source alike. None for one source (or balance 0):
    then an epoch is a plain permutation."""
    if split.sources is None or balance == 0 or len(set(split.sources)) < 2:
        return None
    counts = Counter(split.sources)
    return torch.tensor([counts[name] ** -balance for name in split.sources], dtype=torch.float64)


def batches(split: Split, batch_size: int, generator: torch.Generator,
            device: torch.device, weights: torch.Tensor | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """One epoch of shuffled batches: (photos [B, 3, C, C] uint8, masks [B, 1, C, C] uint8) on
    `device`, boxes [B, 4, 4] on the CPU, plates [B, 3, C, C] uint8 on `device` (None when the
    split has none). The last partial batch is dropped (steady batch-norm statistics, one
    compiled shape) unless the split is smaller than one batch.

    weights (source_weights): an epoch draws len(split) pairs with replacement by these weights
    instead of a permutation, so small sources are seen more often.
    The GPU runs asynchronously, so gathering the next batch on the CPU overlaps the current step.
    """
    if weights is None:
        order = torch.randperm(len(split), generator=generator)
    else:
        order = torch.multinomial(weights, len(split), replacement=True, generator=generator)
    size = min(batch_size, len(split))
    for start in range(0, len(split) - size + 1, size):
        index = order[start:start + size]
        plates = None if split.plates is None else gather(split.plates, index, device)
        yield gather(split.photos, index, device), gather(split.masks, index, device), split.boxes[index], plates


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


# ---------------------------------------------------------------------------------------------
# Tensors the networks see


def box_mask(boxes: torch.Tensor, side: int, device: torch.device) -> torch.Tensor:
    """[B, 4] pixel boxes -> [B, 1, side, side] bool, True at pixel centres inside the box."""
    centres = torch.arange(side, device=device, dtype=torch.float32) + 0.5
    b = boxes.to(device=device, dtype=torch.float32)
    inside_x = (centres >= b[:, 0, None]) & (centres < b[:, 2, None])  # [B, side]
    inside_y = (centres >= b[:, 1, None]) & (centres < b[:, 3, None])
    return (inside_y[:, None, :, None] & inside_x[:, None, None, :])


def normalise(photos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 in [-1, 1], exactly 0.0 where `valid` ([B, 1, S, S]) is False."""
    return (photos.float() / 127.5 - 1.0) * valid


def make_target(photo: torch.Tensor, mask: torch.Tensor, target: str) -> torch.Tensor:
    """What G should output, in [-1, 1]. photo: [B, 3, S, S] in [-1, 1]; mask: [B, 1, S, S] in [0, 1].

    alpha -> [B, 1, S, S] the mask; rgb -> [B, 3, S, S] the person painted on white.
    """
    if target == "alpha":
        return mask * 2.0 - 1.0
    return photo * mask + (1.0 - mask)


def validation_batches(split: Split, batch_size: int, device: torch.device,
                       count: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first `count` (default all) pairs in order, as hx-infer would see them:
    (photo [B, 3, S, S] in [-1, 1] pad 0, mask [B, 1, S, S] in [0, 1], valid [B, 1, S, S] bool)."""
    n = len(split) if count is None else min(count, len(split))
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(start + batch_size, n))
        valid = box_mask(split.boxes[index, PHOTO], split.side, device)
        photo = normalise(gather(split.photos, index, device), valid)
        mask = gather(split.masks, index, device).float() / 255.0
        yield photo, mask, valid


# ---------------------------------------------------------------------------------------------
# Augmentation on the device

N_DRAWS = 20  # uniform numbers drawn per image per batch: 0-10 views, 11-14 colour, 15-19 paste


def person_heights(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] masks in [0, 1] -> [B] height of the person (top to bottom row with mask > 0.5)
    as a share of S; 0 where there is none."""
    rows = (mask > 0.5).any(3)[:, 0]  # [B, S]
    S = rows.shape[1]
    index = torch.arange(S, device=mask.device)
    top = torch.where(rows, index, S).amin(1)
    bottom = torch.where(rows, index, -1).amax(1)
    return ((bottom - top + 1).clamp_min(0)).float() / S


def sampling_grid(theta: torch.Tensor, side: int, device: torch.device) -> torch.Tensor:
    """F.affine_grid(theta, [B, *, side, side], align_corners=False), [B, side, side, 2] float32,
    as two broadcast multiply-adds: affine_grid's batched matrix product of every pixel's
    (x, y, 1) is the slowest step of augmenting on a CPU (11 ms against 2 ms at batch 16, 256²)."""
    theta = theta.to(device, torch.float32)
    centres = (torch.arange(side, device=device, dtype=torch.float32) * 2 + 1) / side - 1  # pixel centres
    x, y = centres.view(1, 1, side), centres.view(1, side, 1)

    def row(i: int) -> torch.Tensor:
        return theta[:, i, 0, None, None] * x + (theta[:, i, 1, None, None] * y + theta[:, i, 2, None, None])
    return torch.stack([row(0), row(1)], -1)


def paste_person(photo: torch.Tensor, mask: torch.Tensor, donor: torch.Tensor, donor_mask: torch.Tensor,
                 valid: torch.Tensor, active: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste donor views (donor [B, 3, S, S] in [-1, 1], donor_mask [B, 1, S, S] in [0, 1]) over
    photo / mask where `active` ([B] bool): scaled by `scale` [B] about the centre and moved to
    `shift` [B, 2] ([-1, 1] coordinates). The donor mask is the alpha of the photos' composite
    (photo * (1 - alpha) + person * alpha); the masks unite. Only inside `valid` ([B, 1, S, S] bool)."""
    B, device = photo.shape[0], photo.device
    zero = torch.zeros_like(scale)
    # output -> source: x_src = (x_out - shift) / scale
    theta = torch.stack([torch.stack([1 / scale, zero, -shift[:, 0] / scale], 1),
                         torch.stack([zero, 1 / scale, -shift[:, 1] / scale], 1)], 1)
    grid = sampling_grid(theta, photo.shape[-1], device)
    # Premultiplied: resampling the person's colour times its mask keeps the donor's own
    # surroundings out of the soft edge, which then blends person and new background only.
    warped = F.grid_sample(torch.cat([donor * donor_mask, donor_mask], 1), grid, mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    keep = (valid * active.to(device, torch.float32)[:, None, None, None]).float()
    alpha = warped[:, 3:4] * keep
    return photo * (1 - alpha) + warped[:, :3] * keep, mask + alpha * (1 - mask)


class Augmenter:
    """Random views of letterboxed photos, the same geometry for photo and mask.

    Each view is a rectangle R of the photo (a crop of the whole photo, or the upper body or head
    and shoulders of the person grown by a margin), rotated and maybe flipped, then letterboxed
    to S x S exactly as a photo of R's shape would be: everything outside R is pad (0.0).
    Then, in p_paste of the views, the next view of the batch (its person and mask, scaled by
    paste_min..1 and moved anywhere) is pasted over it and the mask becomes the union: groups,
    overlaps, people cut by the frame. In p_plate of the views the photo is first swapped for its
    clean plate (Split.plates), so that view is a person pasted onto a person-free background.
    All random numbers come from the CPU generator passed in, so a run replays exactly.
    """

    def __init__(self, config: TrainConfig, canvas: int, backgrounds: Split | None = None):
        """backgrounds: person-free photos on the canvas (load_split(photos_only=...)), for composites."""
        self.config = config
        self.canvas = canvas
        self.size = config.size
        self.backgrounds = backgrounds

    def __call__(self, photos: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                 generator: torch.Generator, plates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """photos [B, 3, C, C] uint8, masks [B, 1, C, C] uint8 (device), boxes [B, 4, 4] (CPU),
        plates [B, 3, C, C] uint8 or None -> (photo [B, 3, S, S] in [-1, 1] with pad 0,
        mask [B, 1, S, S] in [0, 1])."""
        device = photos.device
        draws = torch.rand((photos.shape[0], N_DRAWS), generator=generator, dtype=torch.float64)
        on_plate = draws[:, 15] < (self.config.p_plate if plates is not None else 0.0)
        theta, half_extent = self.views(boxes.double(), draws)
        colour = self.colour_transforms(draws) + (self.channel_gains(photos.shape[0], generator),)

        warped, valid = self.warp([photos, masks], theta, half_extent, boxes[:, PHOTO])  # [B, 4, S, S]

        colour = tuple(t.to(device, torch.float32) for t in colour)
        person = (self.jitter(warped[:, :3], valid, *colour) * 2.0 - 1.0) * valid
        person_mask = warped[:, 3:4] * valid
        photo, mask = person, person_mask
        if on_plate.any():
            # The same view of the clean plate, for those rows only (resampling canvases is most
            # of a CPU step).
            rows = torch.nonzero(on_plate).squeeze(1)  # CPU, for theta; rows_d indexes the device tensors
            rows_d = rows.to(device)
            plate, _ = self.warp([plates[rows_d]], theta[rows], half_extent[rows])
            row_valid = valid[rows_d]
            photo, mask = photo.clone(), mask.clone()
            photo[rows_d] = (self.jitter(plate, row_valid, *(t[rows_d] for t in colour)) * 2.0 - 1.0) * row_valid
            mask[rows_d] = 0.0
        pasted = on_plate | (draws[:, 16] < self.config.p_paste)
        if pasted.any():
            photo, mask = self.paste(photo, mask, person, person_mask, valid, pasted, draws)
        if self.backgrounds is not None:  # drawn last: runs without backgrounds replay unchanged
            photo, mask = self.composite(photo, mask, person, person_mask, colour, generator)
        return photo, mask

    def warp(self, canvases: list[torch.Tensor], theta: torch.Tensor, half_extent: torch.Tensor,
             photo_box: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resample the canvases (uint8 [B, k, C, C] each, stacked along channels) through theta to
        [B, K, S, S] float in [0, 1]; valid [B, 1, S, S] bool: inside the view's rectangle R and
        inside the photo, photo_box [B, 4] (canvas pixels; None: valid is not computed).

        Resampling is linear, so the canvases are sampled as 0..255 and the 4x smaller views are
        scaled, and a view pixel is inside the photo where its source point is: what bilinear
        sampling of a 0/1 box image thresholded at 0.5 gives, without sampling one."""
        S, device = self.size, canvases[0].device
        source = torch.empty((canvases[0].shape[0], sum(c.shape[1] for c in canvases), *canvases[0].shape[2:]),
                             dtype=torch.float32, device=device)
        start = 0
        for canvas in canvases:
            source[:, start:start + canvas.shape[1]].copy_(canvas)
            start += canvas.shape[1]
        grid = sampling_grid(theta, S, device)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        warped.div_(255.0).clamp_(0.0, 1.0)  # interpolating 255s can round a little above 255
        if photo_box is None:
            return warped, None
        centres = (torch.arange(S, device=device, dtype=torch.float32) + 0.5) * (2.0 / S) - 1.0
        half = half_extent.to(device, torch.float32)
        inside_x = centres.abs() <= half[:, 0, None]
        inside_y = centres.abs() <= half[:, 1, None]
        # the source point in canvas pixels, edges at integers: pixel k spans [k, k + 1)
        source_xy = (grid + 1.0) * (self.canvas / 2.0)
        box = photo_box.to(device, torch.float32)[:, None, None, :]  # [B, 1, 1, 4]
        in_photo = ((source_xy >= box[..., :2]) & (source_xy < box[..., 2:])).all(-1)  # [B, S, S]
        valid = (inside_y[:, None, :, None] & inside_x[:, None, None, :]) & in_photo[:, None]
        return warped, valid

    def paste(self, photo: torch.Tensor, mask: torch.Tensor, person: torch.Tensor, person_mask: torch.Tensor,
              valid: torch.Tensor, pasted: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Over each view where `pasted` ([B] bool, CPU), paste the person of the next view
        (person, person_mask: the views before any plate swap), scaled by paste_min..1 and
        centred anywhere in the middle of the square; alpha-composite the photos with the pasted
        mask as alpha, and take the union of the masks."""
        scale = self.config.paste_min + (1 - self.config.paste_min) * u[:, 17]
        shift = (2 * u[:, 18:20] - 1) * 0.6  # the pasted view's centre, in [-1, 1] coordinates
        return paste_person(photo, mask, person.roll(1, 0), person_mask.roll(1, 0), valid, pasted, scale, shift)

    def composite(self, photo: torch.Tensor, mask: torch.Tensor, person: torch.Tensor, person_mask: torch.Tensor,
                  colour: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace p_composite of the views by a view of a background photo with 1..composite_people
        of the batch's people pasted on (mask: their union), and p_empty by a background view alone
        (mask all zero). A pasted person's height is drawn log-uniform in composite_min_height..
        composite_max_height of the frame, its view's centre anywhere in the square, so people
        are cut by the frame too. Same shapes in and out as __call__."""
        cfg, bg = self.config, self.backgrounds
        B, device, K = photo.shape[0], photo.device, cfg.composite_people
        u = torch.rand((B, 14 + 3 * K), generator=generator, dtype=torch.float64)
        scene = u[:, 0] < cfg.p_empty + cfg.p_composite
        if not scene.any():
            return photo, mask
        # Only the scene rows are built (on a CPU the canvases' resampling is most of a step).
        rows = torch.nonzero(scene).squeeze(1)  # [R] indices into the batch, CPU
        u, R = u[rows], len(rows)
        empty = u[:, 0] < cfg.p_empty
        index = (u[:, 1] * len(bg)).long().clamp_max(len(bg) - 1)
        boxes = bg.boxes[index].double()  # person rows NaN: views() takes whole-photo crops
        view_u = torch.zeros((R, N_DRAWS), dtype=torch.float64)
        view_u[:, :11] = u[:, 3:14]
        theta, half_extent = self.views(boxes, view_u)
        warped, valid = self.warp([gather(bg.photos, index, device)], theta, half_extent, boxes[:, PHOTO])
        rows_d = rows.to(device)
        scene_photo = (self.jitter(warped[:, :3], valid, *(t[rows_d] for t in colour)) * 2.0 - 1.0) * valid
        scene_mask = torch.zeros((R, 1, *mask.shape[2:]), device=device, dtype=mask.dtype)

        heights = person_heights(person_mask).cpu().double()  # [B] share of S; .cpu(): a sync on CUDA
        n_people = 1 + (u[:, 2] * K).long().clamp_max(K - 1)
        low, high = math.log(cfg.composite_min_height), math.log(cfg.composite_max_height)
        for j in range(K):
            donors = (rows - (j + 1)) % B  # the people of other views of the batch
            donor_height = heights[donors]
            column = 14 + 3 * j
            wanted = torch.exp(low + (high - low) * u[:, column])
            scale = (wanted / donor_height.clamp_min(1e-3)).clamp(0.02, 4.0)
            shift = 2 * u[:, column + 1:column + 3] - 1
            active = (j < n_people) & (donor_height > 0) & ~empty
            if active.any():
                donors_d = donors.to(device)
                scene_photo, scene_mask = paste_person(scene_photo, scene_mask, person[donors_d],
                                                       person_mask[donors_d], valid, active, scale, shift)
        photo, mask = photo.clone(), mask.clone()
        photo[rows_d], mask[rows_d] = scene_photo, scene_mask
        return photo, mask

    def views(self, boxes: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """boxes [B, 4, 4], u [B, N_DRAWS] uniform -> theta [B, 2, 3] for affine_grid (output square
        -> canvas, normalised coordinates) and the half-extent of R in the output, [B, 2] in (0, 1]."""
        cfg, C = self.config, self.canvas
        photo, person = boxes[:, PHOTO], boxes[:, PERSON]
        lerp = lambda low, high, t: low + (high - low) * t  # noqa: E731

        # A crop keeping crop_min..1 of each side of the whole photo, anywhere inside it.
        pw, ph = photo[:, 2] - photo[:, 0], photo[:, 3] - photo[:, 1]
        rw, rh = pw * lerp(cfg.crop_min, 1.0, u[:, 0]), ph * lerp(cfg.crop_min, 1.0, u[:, 1])
        x0, y0 = photo[:, 0] + (pw - rw) * u[:, 2], photo[:, 1] + (ph - rh) * u[:, 3]
        whole = torch.stack([x0, y0, x0 + rw, y0 + rh], 1)

        # A band of the person grown by random margins; its lower cut moves up or down a little.
        margin = cfg.person_margin * (person[:, 3] - person[:, 1])

        def grown(band: torch.Tensor) -> torch.Tensor:
            return torch.stack([band[:, 0] - margin * u[:, 4], band[:, 1] - margin * u[:, 5],
                                band[:, 2] + margin * u[:, 6], band[:, 3] + margin * (u[:, 7] - 0.5)], 1)

        pick = u[:, 8]
        has_person = ~torch.isnan(person[:, 0])
        rect = whole
        rect = torch.where((has_person & (pick >= 1 - cfg.p_upper_body - cfg.p_head))[:, None],
                           grown(boxes[:, UPPER_BODY]), rect)
        rect = torch.where((has_person & (pick >= 1 - cfg.p_head))[:, None], grown(boxes[:, HEAD]), rect)
        rect = torch.cat([torch.maximum(rect[:, :2], photo[:, :2]), torch.minimum(rect[:, 2:], photo[:, 2:])], 1)
        too_small = ((rect[:, 2:] - rect[:, :2]) < 4).any(1)  # a sliver: a view of nothing
        rect = torch.where(too_small[:, None], whole, rect)

        rw, rh = rect[:, 2] - rect[:, 0], rect[:, 3] - rect[:, 1]
        side = torch.maximum(rw, rh)  # letterbox: R's longer side fills the output
        angle = torch.deg2rad(lerp(-cfg.rotate_deg, cfg.rotate_deg, u[:, 9]))
        flip = torch.where(u[:, 10] < cfg.p_flip, -1.0, 1.0).double()
        cos, sin, scale = torch.cos(angle), torch.sin(angle), side / C
        theta = torch.stack([
            torch.stack([scale * cos * flip, -scale * sin, (rect[:, 0] + rect[:, 2]) / C - 1], 1),
            torch.stack([scale * sin * flip, scale * cos, (rect[:, 1] + rect[:, 3]) / C - 1], 1),
        ], 1)
        return theta, torch.stack([rw / side, rh / side], 1)

    def colour_transforms(self, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Brightness, contrast, saturation factors [B] and hue rotation matrices [B, 3, 3]."""
        cfg = self.config
        brightness = 1 + cfg.brightness * (2 * u[:, 11] - 1)
        contrast = 1 + cfg.contrast * (2 * u[:, 12] - 1)
        saturation = 1 + cfg.saturation * (2 * u[:, 13] - 1)
        # Hue: rotate colours about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues' formula).
        angle = 2 * math.pi * cfg.hue * (2 * u[:, 14] - 1)
        c = 1 / math.sqrt(3)
        k = torch.full((3,), c, dtype=torch.float64)
        cross = torch.tensor([[0, -c, c], [c, 0, -c], [-c, c, 0]], dtype=torch.float64)  # k x .
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        hue = cos * torch.eye(3, dtype=torch.float64) + sin * cross + (1 - cos) * torch.outer(k, k)
        return brightness, contrast, saturation, hue

    def channel_gains(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """[B, 3] factors per colour channel (white_balance); ones, drawing nothing, when it is 0,
        so the generator's later draws are those of a run without the option."""
        if self.config.white_balance == 0:
            return torch.ones((batch, 3), dtype=torch.float64)
        u = torch.rand((batch, 3), generator=generator, dtype=torch.float64)
        return 1 + self.config.white_balance * (2 * u - 1)

    @staticmethod
    def jitter(rgb: torch.Tensor, valid: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
               saturation: torch.Tensor, hue: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        """rgb [B, 3, S, S] in [0, 1] -> jittered, clamped to [0, 1]. Factors [B]; hue [B, 3, 3];
        gains [B, 3], one factor per channel."""
        luma = torch.tensor(LUMA, device=rgb.device).view(1, 3, 1, 1)
        rgb = rgb * (gains * brightness[:, None]).view(-1, 3, 1, 1)
        grey = (rgb * luma).sum(1, keepdim=True)
        mean = (grey * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp_min(1)
        rgb = (rgb - mean.view(-1, 1, 1, 1)) * contrast.view(-1, 1, 1, 1) + mean.view(-1, 1, 1, 1)
        grey = (rgb * luma).sum(1, keepdim=True)
        rgb = grey + (rgb - grey) * saturation.view(-1, 1, 1, 1)
        rgb = torch.einsum("bij,bjhw->bihw", hue, rgb)
        return rgb.clamp(0.0, 1.0)
