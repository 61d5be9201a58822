"""Compositing people onto person-free photos (`hx-train fit --backgrounds`), source balancing,
and the per-source / per-crop validation record."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from hx_train import data as hxdata
from hx_train.config import TrainConfig, TrainError
from hx_train.prepare import prepare
from hx_train.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CANVAS, SIZE = 128, 64
BRIGHT, DARK = 250, 10


def still(config: TrainConfig) -> TrainConfig:
    """No rotation, flips or colour jitter and no pastes of the old kind: pixels keep their values."""
    return dataclasses.replace(config, rotate_deg=0.0, p_flip=0.0, brightness=0.0, contrast=0.0,
                               saturation=0.0, hue=0.0, p_paste=0.0, p_plate=0.0, p_upper_body=0.0,
                               p_head=0.0)


def people_split(n: int = 8) -> hxdata.Split:
    """n canvases: a bright person box on mid grey, its mask exactly the box."""
    photos = torch.full((n, 3, CANVAS, CANVAS), 128, dtype=torch.uint8)
    masks = torch.zeros((n, 1, CANVAS, CANVAS), dtype=torch.uint8)
    boxes = torch.zeros((n, 4, 4))
    for i in range(n):
        x0, y0 = 20 + 4 * (i % 8), 10 + 2 * (i % 8)
        photos[i, :, y0:y0 + 90, x0:x0 + 40] = BRIGHT
        masks[i, 0, y0:y0 + 90, x0:x0 + 40] = 255
        person = hxdata.person_boxes(masks[i, 0].numpy(), (0.55, 0.30))
        boxes[i, hxdata.PHOTO] = torch.tensor([0, 0, CANVAS, CANVAS], dtype=torch.float32)
        boxes[i, hxdata.PERSON:] = torch.from_numpy(person)
    return hxdata.Split([f"p{i}" for i in range(n)], photos, masks, boxes)


def background_split(n: int = 3) -> hxdata.Split:
    """Dark person-free canvases, each letterboxed (a band of pad above and below)."""
    photos = torch.zeros((n, 3, CANVAS, CANVAS), dtype=torch.uint8)
    photos[:, :, 16:112] = DARK
    boxes = torch.full((n, 4, 4), float("nan"))
    boxes[:, hxdata.PHOTO] = torch.tensor([0, 16, CANVAS, 112], dtype=torch.float32)
    return hxdata.Split([f"b{i}" for i in range(n)], photos, torch.zeros((n, 1, CANVAS, CANVAS), dtype=torch.uint8),
                        boxes)


def augment(config: TrainConfig, seed: int = 0, backgrounds: hxdata.Split | None = None):
    split = people_split()
    generator = torch.Generator().manual_seed(seed)
    augmenter = hxdata.Augmenter(config, CANVAS, backgrounds if backgrounds is not None else background_split())
    return augmenter(split.photos, split.masks, split.boxes, generator)


def test_composites_paste_people_where_the_mask_says_on_the_background():
    # One person a view: where two overlap, the front one's soft edge rightly mixes its own
    # surroundings into the other (that is what its alpha says), so exact values need one.
    config = still(TrainConfig(size=SIZE, p_composite=1.0, p_empty=0.0, composite_people=1,
                               composite_min_height=0.2, composite_max_height=0.6))
    photo, mask = augment(config)
    grey = (photo.mean(1, keepdim=True) + 1) * 127.5  # back to 0..255
    valid = photo.abs().sum(1, keepdim=True) > 0  # pad is exactly 0.0
    assert (mask > 0.95).any() and ((mask < 0.05) & valid).any()
    # Same geometry on photo and mask: the bright person exactly where the mask is person, the
    # dark background where it is not. (On the one-pixel soft edge the donor view's own resampling
    # already mixed in some of its mid-grey surroundings: a few grey levels, bounded below.)
    expected = DARK * (1 - mask) + BRIGHT * mask
    solid = valid & ((mask < 0.02) | (mask > 0.98))
    assert (grey[solid] - expected[solid]).abs().max() < 3.0
    assert (grey[valid] - expected[valid]).abs().max() < 0.25 * (128 - DARK)
    assert float(mask[~valid].abs().max()) == 0.0
    # Pasted people are small: no view is one person filling the frame.
    heights = hxdata.person_heights(mask)
    assert heights.max() < 0.95


def test_several_people_per_composite_unite_into_one_mask():
    config = still(TrainConfig(size=SIZE, p_composite=1.0, p_empty=0.0, composite_people=4,
                               composite_min_height=0.15, composite_max_height=0.3))
    photo, mask = augment(config, seed=1)
    counts = [cv2.connectedComponents((m[0].numpy() > 0.5).astype(np.uint8))[0] - 1 for m in mask]
    assert max(counts) >= 2  # groups: several separate people in one view
    assert float(mask.max()) <= 1.0 and float(mask.min()) >= 0.0  # a union, never a sum


def test_empty_views_are_backgrounds_with_an_all_zero_target():
    config = still(TrainConfig(size=SIZE, p_composite=0.0, p_empty=1.0))
    photo, mask = augment(config)
    assert float(mask.abs().max()) == 0.0
    grey = (photo + 1) * 127.5
    # The dark background inside its letterbox band, pad (exactly 0.0 -> 127.5) outside it.
    valid = photo.abs().sum(1) > 0
    assert valid.any() and (grey.mean(1)[valid] < DARK + 8).all()


def test_no_backgrounds_leaves_views_alone_and_shares_follow_the_config():
    config = still(TrainConfig(size=SIZE, p_composite=0.5, p_empty=0.25))
    split = people_split(64)
    generator = torch.Generator().manual_seed(0)
    plain = hxdata.Augmenter(config, CANVAS)(split.photos, split.masks, split.boxes, torch.Generator().manual_seed(0))
    assert (hxdata.person_heights(plain[1]) > 0).all()  # every view keeps its person
    photo, mask = hxdata.Augmenter(config, CANVAS, background_split())(split.photos, split.masks, split.boxes,
                                                                      generator)
    empty = (mask.flatten(1).amax(1) == 0).float().mean().item()
    assert 0.1 < empty < 0.45  # ~p_empty (+ composites whose people all fell outside the frame)


def test_composites_taller_than_the_frame_are_close_ups_cut_by_it():
    # composite_max_height above 1: a person 1.5 frames tall always runs past the top or the
    # bottom of the view, as in a close-up; at most 0.6 frames tall, never both.
    def cut(max_height: float) -> list[bool]:
        config = still(TrainConfig(size=SIZE, p_composite=1.0, p_empty=0.0, composite_people=1,
                                   composite_min_height=min(0.6, max_height), composite_max_height=max_height))
        photo, mask = augment(config, seed=3)
        valid = photo.abs().sum(1) > 0  # [B, S, S]; the background is letterboxed
        result = []
        for view_valid, view_mask in zip(valid, mask[:, 0] > 0.5):
            rows = torch.nonzero(view_valid.any(1)).squeeze(1)
            if view_mask.any():
                top, bottom = view_mask[rows[0]].any(), view_mask[rows[-1]].any()
                result.append(bool(top or bottom) if max_height > 1 else bool(top and bottom))
        return result
    close_ups = cut(1.5)
    assert close_ups and all(close_ups)
    people_inside = cut(0.6)
    assert people_inside and not any(people_inside)


def test_white_balance_scales_each_channel_and_leaves_the_geometry():
    split = people_split()

    def views(white_balance: float):
        config = still(TrainConfig(size=SIZE, white_balance=white_balance))
        return hxdata.Augmenter(config, CANVAS)(split.photos, split.masks, split.boxes,
                                                torch.Generator().manual_seed(0))
    plain_photo, plain_mask = views(0.0)
    cast_photo, cast_mask = views(0.3)
    assert torch.equal(plain_mask, cast_mask)  # the same views: only colour changes
    background = (plain_mask < 0.01) & (plain_photo.abs().sum(1, keepdim=True) > 0)  # mid grey, 128

    def channel_means(photo: torch.Tensor) -> torch.Tensor:  # [B, 3] of the grey background, 0..255
        grey = (photo + 1) * 127.5
        return (grey * background).sum((2, 3)) / background.sum((2, 3))
    plain, cast = channel_means(plain_photo), channel_means(cast_photo)
    assert (plain.amax(1) - plain.amin(1)).max() < 0.5  # no cast without the option
    ratios = cast / plain
    assert ((ratios > 0.7 - 1e-3) & (ratios < 1.3 + 1e-3)).all()
    assert ((ratios.amax(1) - ratios.amin(1)) > 0.02).float().mean() > 0.5  # channels apart: a cast
    with pytest.raises(TrainError, match="--white-balance"):
        TrainConfig(white_balance=1.0).check()


def test_person_heights_and_source_weights():
    mask = torch.zeros((2, 1, 10, 10))
    mask[0, 0, 2:7, 3] = 1.0
    assert hxdata.person_heights(mask).tolist() == [0.5, 0.0]
    split = people_split(4)
    split.sources = ["big", "big", "big", "small"]
    weights = hxdata.source_weights(split, 1.0)
    shares = {s: sum(w for w, n in zip(weights.tolist(), split.sources) if n == s) for s in ("big", "small")}
    assert shares["big"] == pytest.approx(shares["small"])  # balance 1: each source alike
    assert hxdata.source_weights(split, 0.0) is None
    split.sources = None
    assert hxdata.source_weights(split, 0.5) is None


def test_config_checks_the_new_shares():
    with pytest.raises(TrainError, match="--p-composite plus --p-empty"):
        TrainConfig(p_composite=0.7, p_empty=0.5).check()
    with pytest.raises(TrainError, match="composite heights"):
        TrainConfig(composite_min_height=0.5, composite_max_height=0.2).check()


def test_fit_records_val_per_source_crop_and_backgrounds(tmp_path, make_disc_photo):
    def source(root: Path, n: int, offset: int) -> Path:
        for i in range(n):
            rgb, mask = make_disc_photo(48, 40, seed=offset + i)
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / "images" / f"s{i}.png")
            Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        return root

    prepare([source(tmp_path / "one", 9, 0), source(tmp_path / "two", 6, 100)], tmp_path / "data", min_val=2)
    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    for i in range(4):
        Image.fromarray(np.full((30, 50, 3), 20 + i, np.uint8)).save(backgrounds / f"b{i}.jpg")
    config = TrainConfig(preset="lite", size=64, epochs=1, epochs_decay=0, batch_size=4, lambda_gan=0.0,
                         device="cpu", backgrounds=str(backgrounds), samples=0)
    result = fit(config, tmp_path / "data", tmp_path / "run")

    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    detail = record["val_sources"]
    assert set(detail) == {"one", "two", "backgrounds"}
    assert set(detail["one"]) == {"full", "upper", "head"} and detail["one"]["full"]["n"] == 2
    assert detail["backgrounds"]["n"] >= 1 and 0 <= detail["backgrounds"]["fp"] <= 1
    # The selection metric is the mean over sources of each source's full-photo IoU.
    assert record["val"]["iou"] == pytest.approx((detail["one"]["full"]["iou"] + detail["two"]["full"]["iou"]) / 2,
                                                 abs=1e-5)
    assert result["best_metric"] == record["val"]["iou"]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["val_sources"] == detail and ckpt["data"]["backgrounds"]["train"] + \
        ckpt["data"]["backgrounds"]["val"] == 4
