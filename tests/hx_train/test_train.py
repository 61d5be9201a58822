"""hx_train.data / losses / train: tiny synthetic data sets (a bright disc on noise), lite at 64 px."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hx_infer.crops import crop_box
from hx_train import data as hxdata
from hx_train.config import TrainConfig, TrainError
from hx_train.losses import discriminator_loss, generator_loss, segmentation_loss
from hx_train.models import build_discriminator, build_generator
from hx_train.train import (LAST, _Training, autocast_for, evaluate, fit, lr_factor, read_checkpoint, resolve,
                             resolve_amp, resume_config, train_step)

TINY = dict(preset="lite", size=64, batch_size=4, device="cpu", samples=3)


def make_dataset(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0,
                 width: int = 64, height: int = 80) -> Path:
    """DATA/{train,val}/{images,masks}: a light disc (the 'person') on dark noise, 0/255 masks."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            photo = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
            mask = np.zeros((height, width), np.uint8)
            r = int(rng.integers(width // 6, width // 3))
            centre = (int(rng.integers(r, width - r)), int(rng.integers(r, height - r)))
            cv2.circle(mask, centre, r, 255, -1)
            photo[mask > 0] = (230, 215, 200)
            cv2.imwrite(str(root / split / "images" / f"{i:03d}.png"), photo)
            cv2.imwrite(str(root / split / "masks" / f"{i:03d}.png"), mask)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- data --------------------------------------------------------------------------------------


def test_letterbox_centres_the_photo_on_zero_padding():
    image = np.full((30, 60, 3), 200, np.uint8)
    square, box = hxdata.letterbox(image, 64)
    assert square.shape == (64, 64, 3)
    assert box == (0, 16, 64, 48)  # 60x30 -> 64x32, centred vertically
    assert (square[16:48] == 200).all() and (square[:16] == 0).all() and (square[48:] == 0).all()
    valid = hxdata.box_mask(torch.tensor([box], dtype=torch.float32), 64, torch.device("cpu"))
    photo = hxdata.normalise(torch.from_numpy(square).permute(2, 0, 1)[None], valid)
    assert (photo[:, :, :16] == 0.0).all()  # pad is exactly 0.0 in normalised space
    assert torch.allclose(photo[:, :, 16:48], torch.tensor(200 / 127.5 - 1))


@pytest.mark.parametrize("height, width, side", [(80, 64, 64), (300, 550, 128), (37, 21, 64), (64, 64, 128)])
def test_validation_input_is_what_hx_infer_feeds_the_model(height, width, side):
    from hx_infer.transforms import letterbox as infer_letterbox

    rgb = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected, geometry = infer_letterbox(rgb, side)
    square, box = hxdata.letterbox(rgb, side)
    assert box == (geometry.left, geometry.top, geometry.left + geometry.new_w, geometry.top + geometry.new_h)
    valid = hxdata.box_mask(torch.tensor([box], dtype=torch.float32), side, torch.device("cpu"))
    ours = hxdata.normalise(torch.from_numpy(square).permute(2, 0, 1)[None], valid)[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_person_boxes_cover_the_top_of_the_mask():
    mask = np.zeros((100, 80), np.uint8)
    mask[20:80, 30:40] = 255  # a body
    mask[40:50, 10:70] = 255  # arms, below the head band
    boxes = hxdata.person_boxes(mask, (0.55, 0.30))
    np.testing.assert_array_equal(boxes[0], [10, 20, 70, 80])
    np.testing.assert_array_equal(boxes[1], [10, 20, 70, 53])  # 55% of 60 rows, arms inside
    np.testing.assert_array_equal(boxes[2], [30, 20, 40, 38])  # 30%: only the narrow top
    assert np.isnan(hxdata.person_boxes(np.zeros((8, 8), np.uint8), (0.5,))).all()


def _plain(**overrides) -> TrainConfig:
    """Geometry only: no colour jitter, so photo and mask can be compared pixel for pixel."""
    return TrainConfig(**{**TINY, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0,
                          "p_paste": 0, "p_plate": 0, **overrides})


def _white_where_masked(tmp_path: Path) -> hxdata.Split:
    root = make_dataset(tmp_path / "d", n_train=6, n_val=1)
    for path in (root / "train" / "masks").iterdir():  # photo = mask, so geometry shows up in both
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "train" / "images" / path.name), cv2.merge([mask] * 3))
    return hxdata.load_split(root / "train", hxdata.canvas_side(64), workers=1)


def test_augmentation_moves_photo_and_mask_together(tmp_path):
    split = _white_where_masked(tmp_path)
    config = _plain(p_head=0.3, p_upper_body=0.3, rotate_deg=15)
    augment = hxdata.Augmenter(config, split.side)
    g = torch.Generator().manual_seed(0)
    photos, masks, boxes, _ = next(hxdata.batches(split, 6, g, torch.device("cpu")))
    photo, mask = augment(photos, masks, boxes, g)
    assert photo.shape == (6, 3, 64, 64) and mask.shape == (6, 1, 64, 64)
    assert photo.min() >= -1 and photo.max() <= 1 and mask.min() >= 0 and mask.max() <= 1
    # Inside the photo area the photo is the mask; outside, both are pad (photo 0.0, mask 0).
    valid = photo != 0
    assert valid.any()
    assert torch.allclose(((photo + 1) / 2)[valid.expand_as(photo)],
                          mask.expand_as(photo)[valid.expand_as(photo)], atol=1e-4)
    assert (mask[~valid[:, :1]] == 0).all()


def test_sampling_grid_is_affine_grid():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.nn.functional.affine_grid(theta.float(), [5, 1, 48, 48], align_corners=False)
    assert torch.allclose(hxdata.sampling_grid(theta, 48, torch.device("cpu")), expected, atol=1e-6)


def test_view_validity_is_the_photo_box_sampled_and_thresholded():
    """warp's validity is computed from the photo box, not sampled; it must agree with sampling a
    0/1 box image bilinearly and keeping > 0.5 (how it was made before), but for rounding ties."""
    g = torch.Generator().manual_seed(1)
    B, C = 32, 128
    augment = hxdata.Augmenter(TrainConfig(**{**TINY, "rotate_deg": 20}), C)
    corner = torch.randint(0, 40, (B, 2), generator=g).float()
    size = torch.randint(20, 88, (B, 2), generator=g).float()
    photo_box = torch.cat([corner, corner + size], 1)
    boxes = torch.full((B, 4, 4), float("nan"))
    boxes[:, hxdata.PHOTO] = photo_box
    theta, half_extent = augment.views(boxes.double(), torch.rand((B, hxdata.N_DRAWS), generator=g, dtype=torch.float64))
    _, valid = augment.warp([torch.zeros((B, 1, C, C), dtype=torch.uint8)], theta, half_extent, photo_box)
    box_image = hxdata.box_mask(photo_box, C, torch.device("cpu")).float()
    sampled = torch.nn.functional.grid_sample(box_image, hxdata.sampling_grid(theta, 64, torch.device("cpu")),
                                              mode="bilinear", padding_mode="zeros", align_corners=False)
    _, inside_view = augment.warp([torch.zeros((B, 1, C, C), dtype=torch.uint8)], theta, half_extent,
                                  torch.tensor([[0.0, 0.0, C, C]]).expand(B, 4))
    expected = inside_view & (sampled > 0.5)
    assert valid.sum() > 0.3 * valid.numel()
    assert (valid != expected).float().mean() < 1e-3


def test_augmentation_replays_from_the_generator_state(tmp_path):
    split = _white_where_masked(tmp_path)
    augment = hxdata.Augmenter(TrainConfig(**TINY), split.side)
    outputs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        photos, masks, boxes, _ = next(hxdata.batches(split, 4, g, torch.device("cpu")))
        outputs.append(augment(photos, masks, boxes, g))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_pasting_adds_a_person_and_keeps_the_union_of_the_masks(tmp_path):
    split = _white_where_masked(tmp_path)
    views = {}
    for p_paste in (0.0, 1.0):
        augment = hxdata.Augmenter(_plain(p_paste=p_paste, paste_min=0.5), split.side)
        views[p_paste] = augment(split.photos, split.masks, split.boxes, torch.Generator().manual_seed(3))
    (photo0, mask0), (photo1, mask1) = views[0.0], views[1.0]
    assert (mask1 >= mask0 - 1e-6).all()  # the union: no person pixel is lost
    assert mask1.sum() > 1.2 * mask0.sum()  # and the pasted people add to it
    # Photo and mask still agree on the background and where an opaque pasted person covers it.
    covered = (mask0 < 1e-3) & (mask1 > 0.999)
    assert covered.any()
    solid = ((photo1 != 0) & ((mask1 < 1e-3) | covered)).expand_as(photo1)
    assert solid.any()
    assert torch.allclose(((photo1 + 1) / 2)[solid], mask1.expand_as(photo1)[solid], atol=1e-3)


def test_plates_paint_the_person_out_and_views_on_them_hold_only_the_pasted_person(tmp_path):
    photo = np.zeros((64, 48, 3), np.uint8)
    photo[:] = (0, 0, 200)  # blue background
    mask = np.zeros((64, 48), np.uint8)
    mask[10:60, 16:32] = 255
    photo[mask > 0] = (220, 30, 30)  # a red person
    plate = hxdata.paint_out(photo, mask)
    assert np.abs(plate[mask > 0].astype(int) - (0, 0, 200)).max() < 30  # background fills the hole
    assert np.array_equal(plate[:, :8], photo[:, :8])  # far from the person nothing changes

    split = _white_where_masked(tmp_path)
    black = torch.zeros_like(split.photos)  # plates that are black everywhere
    augment = hxdata.Augmenter(_plain(p_plate=1.0), split.side)
    out, out_mask = augment(split.photos, split.masks, split.boxes, torch.Generator().manual_seed(0), black)
    valid = out != 0
    empty = valid[:, :1] & (out_mask < 1e-3)
    assert empty.any() and torch.allclose(out[:, :1][empty], torch.tensor(-1.0), atol=1e-2)  # the black plate
    assert out_mask.amax((1, 2, 3)).min() > 0.5  # every view holds its pasted person


def test_head_crops_zoom_in_on_the_person(tmp_path):
    split = _white_where_masked(tmp_path)
    photos, masks, boxes = split.photos, split.masks, split.boxes
    coverage = {}
    for name, p_head in (("whole", 0.0), ("head", 1.0)):
        augment = hxdata.Augmenter(_plain(p_head=p_head, p_upper_body=0.0, crop_min=1.0, rotate_deg=0), split.side)
        _, mask = augment(photos, masks, boxes, torch.Generator().manual_seed(0))
        coverage[name] = mask.mean().item()
    assert coverage["head"] > 1.5 * coverage["whole"]


def test_missing_mask_and_corrupt_photo_are_named(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=3, n_val=1)
    (root / "train" / "masks" / "001.png").unlink()
    with pytest.raises(hxdata.DataError, match=r"001\.png: no mask"):
        hxdata.split_pairs(root / "train")
    (root / "val" / "images" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(hxdata.DataError, match=r"000\.png: cannot read image") as info:
        hxdata.load_split(root / "val", 64, workers=1)
    assert "\n" not in str(info.value)
    with pytest.raises(hxdata.DataError, match="no photos with masks"):
        (tmp_path / "empty" / "images").mkdir(parents=True)
        (tmp_path / "empty" / "masks").mkdir()
        hxdata.split_pairs(tmp_path / "empty")


# --- losses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gan", ["bce", "lsgan"])
@pytest.mark.parametrize("seg", ["none", "bce", "dice", "dice-people"])
def test_losses_are_named_terms_plus_total(gan, seg):
    torch.manual_seed(0)
    config = TrainConfig(gan_loss=gan, seg_loss=seg, lambda_l1=7.0, seg_weight=3.0)
    logits = torch.randn(2, 1, 6, 6)
    output, mask = torch.rand(2, 1, 8, 8) * 2 - 1, (torch.rand(2, 1, 8, 8) > 0.5).float()
    d = discriminator_loss(logits + 3, logits - 3, gan)
    assert torch.isclose(d["total"], 0.5 * (d["d_real"] + d["d_fake"]))
    g = generator_loss(logits, output, mask * 2 - 1, mask, config)
    expected = g["g_gan"] + 7.0 * g["g_l1"] + (3.0 * g["g_seg"] if seg != "none" else 0)
    assert ("g_seg" in g) == (seg != "none") and torch.isclose(g["total"], expected)
    # A perfect matte scores (almost) zero on L1 and the matte term.
    perfect = generator_loss(logits, mask * 2 - 1, mask * 2 - 1, mask, config)
    assert perfect["g_l1"] == 0 and perfect.get("g_seg", torch.tensor(0.0)) < 1e-3


def test_segmentation_loss_prefers_the_right_matte():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    for kind in ("bce", "dice", "dice-people"):
        right, wrong = segmentation_loss(mask * 2 - 1, mask, kind), segmentation_loss(1 - mask * 2, mask, kind)
        assert right < wrong


def test_unknown_segmentation_loss_names_every_choice():
    with pytest.raises(ValueError, match="choose none, bce, dice, dice-people"):
        segmentation_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), "lovasz")


def test_dice_people_leaves_views_with_nobody_out_of_the_dice_term():
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, :, 2:6, 2:6] = 1
    mask[1, :, 0:3, 0:3] = 1  # mask[2] is a view with nobody
    output = torch.rand(3, 1, 8, 8) * 2 - 1
    dice = segmentation_loss(output, mask, "dice")
    people = segmentation_loss(output, mask, "dice-people")
    assert torch.isclose(people, segmentation_loss(output[:2], mask[:2], "dice"))
    assert not torch.isclose(people, dice)
    # A faint guess on the empty view moves dice, not dice-people.
    fainter = output.clone()
    fainter[2] = -1
    assert torch.isclose(segmentation_loss(fainter, mask, "dice-people"), people)
    assert segmentation_loss(fainter, mask, "dice") < dice
    # A batch with nobody at all has no Dice term (not 0/0).
    assert segmentation_loss(output[2:], mask[2:], "dice-people") == 0


def test_lr_is_constant_then_decays_linearly_towards_zero():
    factors = [lr_factor(e, 3, 3) for e in range(6)]
    assert factors[:3] == [1.0, 1.0, 1.0]
    assert factors[3:] == pytest.approx([0.75, 0.5, 0.25])


# --- validation --------------------------------------------------------------------------------


def test_val_crops_are_cut_from_one_decode_and_leave_out_empty_masks(tmp_path, monkeypatch):
    # fit scores val whole and in eval's upper / head crops; each pair is read once for all three.
    root = make_dataset(tmp_path / "d", n_train=1, n_val=4)
    empty = sorted((root / "val" / "masks").iterdir())[1]
    cv2.imwrite(str(empty), np.zeros_like(cv2.imread(str(empty), cv2.IMREAD_GRAYSCALE)))
    reads = Counter()
    for name in ("read_photo", "read_mask"):
        decode = getattr(hxdata, name)
        monkeypatch.setattr(hxdata, name, lambda path, decode=decode: reads.update([path]) or decode(path))
    val = hxdata.load_split(root / "val", 64, workers=1, crops=("upper", "head"))
    mask_of = dict(hxdata.split_pairs(root / "val"))
    assert len(reads) == 8 and set(reads.values()) == {1}
    assert len(val) == 4 and set(val.crops) == {"upper", "head"} and not val.crops["head"].crops
    for crop, split in val.crops.items():
        assert split.names == [name for name in val.names if Path(name).stem != empty.stem]
        for row, name in enumerate(split.names):  # each row: the crop cut by eval's rule, letterboxed
            photo, mask = hxdata.read_photo(Path(name)), hxdata.read_mask(mask_of[Path(name)])
            x0, y0, x1, y1 = crop_box(mask, crop)
            square, _ = hxdata.letterbox(photo[y0:y1, x0:x1], 64)
            mask_square, _ = hxdata.letterbox(mask[y0:y1, x0:x1], 64)
            assert torch.equal(split.photos[row], torch.from_numpy(square).permute(2, 0, 1))
            assert torch.equal(split.masks[row, 0], torch.from_numpy(mask_square))
    assert not torch.equal(val.crops["upper"].masks, val.crops["head"].masks)


class _CopyFirstChannel(torch.nn.Module):
    def forward(self, photo):  # a 'generator' whose matte is the photo's red channel
        return photo[:, :1]


def test_evaluate_scores_a_perfect_matte(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=1, n_val=5)
    for path in (root / "val" / "masks").iterdir():
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / "val" / "images" / path.name), cv2.merge([mask] * 3))
    val = hxdata.load_split(root / "val", 64, workers=1)
    config = TrainConfig(**TINY)
    no_amp = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    metrics = evaluate(_CopyFirstChannel(), val, config, torch.device("cpu"), no_amp)
    assert metrics["iou"] == pytest.approx(1.0) and metrics["mae"] < 1e-3

    class Inverted(torch.nn.Module):
        def forward(self, photo):
            return -photo[:, :1]

    metrics = evaluate(Inverted(), val, config, torch.device("cpu"), no_amp)
    assert metrics["iou"] == 0.0 and metrics["mae"] > 0.1  # pad (0.0 -> 0.5) is never counted


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_learns_and_writes_the_run(dataset, tmp_path):
    run = tmp_path / "run"
    result = fit(TrainConfig(**TINY, epochs=4, epochs_decay=0), dataset, run)
    lines = read_metrics(run)
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]
    assert lines[-1]["loss"]["g_l1"] < lines[0]["loss"]["g_l1"]
    assert set(lines[0]["loss"]) == {"d_real", "d_fake", "d_total", "g_gan", "g_l1", "g_total"}
    assert set(lines[0]["val"]) == {"iou", "mae"} and lines[0]["img_per_s"] > 0
    assert result["epoch"] == 4 and result["best_metric"] == max(m["val"]["iou"] for m in lines)

    grid = cv2.imread(str(run / "samples" / "epoch_004.png"))
    assert grid.shape == (3 * 64, 3 * 64, 3)  # 3 samples x (photo | target | output)

    ckpt = read_checkpoint(run / LAST)
    assert ckpt["format"] == "hx-ckpt/1" and ckpt["epoch"] == 4
    assert ckpt["config"]["preset"] == "lite" and ckpt["config"]["amp"] == "off"
    assert ckpt["data"] == {"train": 12, "val": 4, "source": str(dataset)}
    reference = build_generator("lite", 64, "alpha").state_dict()
    assert list(ckpt["generator"]) == list(reference)
    assert all(ckpt["generator"][k].is_contiguous() for k in reference)
    best = read_checkpoint(run / "best.pt")
    assert best["val_metrics"]["iou"] == best["best_metric"] == result["best_metric"]
    # The checkpoint is plain data: it loads without unpickling arbitrary objects.
    torch.load(run / LAST, weights_only=True)


def test_rgb_target_tracks_psnr(dataset, tmp_path):
    run = tmp_path / "run"
    fit(TrainConfig(**{**TINY, "target": "rgb", "epochs": 1, "epochs_decay": 0, "samples": 1}), dataset, run)
    (line,) = read_metrics(run)
    assert set(line["val"]) == {"psnr"} and line["val"]["psnr"] > 0
    ckpt = read_checkpoint(run / LAST)
    assert ckpt["generator"]["model.model.3.weight"].shape[1] == 3  # 3 output channels
    assert ckpt["best_metric"] == line["val"]["psnr"]


class _StopAfter:
    """A log that presses Ctrl-C once the given epoch's checkpoint is written."""

    def __init__(self, epoch: int):
        self.prefix = f"epoch {epoch}/"

    def __call__(self, message: str) -> None:
        if message.startswith(self.prefix):
            raise KeyboardInterrupt


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = read_checkpoint(a / LAST), read_checkpoint(b / LAST)
    for part in ("generator", "discriminator"):
        assert ca[part].keys() == cb[part].keys()
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), f"{part}.{k}"
    for opt in ("opt_g", "opt_d"):
        for i, state in ca[opt]["state"].items():
            assert all(torch.equal(state[k], cb[opt]["state"][i][k]) for k in state)
        assert ca[opt]["param_groups"][0]["lr"] == cb[opt]["param_groups"][0]["lr"]
    assert ca["epoch"] == cb["epoch"] and ca["best_metric"] == cb["best_metric"]
    strip = lambda lines: [{k: v for k, v in m.items() if k not in ("seconds", "img_per_s")} for m in lines]  # noqa: E731
    assert strip(read_metrics(a)) == strip(read_metrics(b))


@pytest.mark.slow
def test_resume_after_an_interruption_reaches_the_same_weights(dataset, tmp_path):
    config = TrainConfig(**TINY, epochs=2, epochs_decay=2, seed=3)
    fit(config, dataset, tmp_path / "straight")

    with pytest.raises(KeyboardInterrupt):
        fit(config, dataset, tmp_path / "stopped", log=_StopAfter(2))
    assert read_checkpoint(tmp_path / "stopped" / LAST)["epoch"] == 2
    with pytest.raises(TrainError, match="exists: add --resume"):
        fit(config, dataset, tmp_path / "stopped")
    fit(config, dataset, tmp_path / "stopped", resume=True, command="hx-train fit again")
    _assert_same_run(tmp_path / "straight", tmp_path / "stopped")
    # Each invocation is on record: which epochs it made, where, how long it took.
    sessions = read_checkpoint(tmp_path / "stopped" / LAST)["sessions"]
    assert [s["epochs"] for s in sessions] == [[1, 2], [3, 4]]
    assert sessions[1]["command"] == "hx-train fit again" and sessions[1]["machine"]["device"] == "cpu"
    assert all(s["seconds"] > 0 for s in sessions)

    # Training for 2 epochs, then extending the schedule by 2 decay epochs, is the same run too.
    fit(TrainConfig(**{**TINY, "epochs": 2, "epochs_decay": 0, "seed": 3}), dataset, tmp_path / "extended")
    extended = resume_config(tmp_path / "extended", {"epochs_decay": 2})
    assert extended.preset == "lite" and extended.seed == 3
    fit(extended, dataset, tmp_path / "extended", resume=True)
    _assert_same_run(tmp_path / "straight", tmp_path / "extended")


def test_bad_options_and_folders_raise_train_error(dataset, tmp_path):
    cases = [
        (dict(preset="huge"), "--preset"),
        (dict(size=100), "--size"),
        (dict(batch_size=0), "--batch-size"),
        (dict(epochs=0, epochs_decay=0), "--epochs"),
        (dict(seg_loss="dice", target="rgb"), "--seg-loss"),
        # numpy's global seed takes 0..2**32 - 1; it failed after every photo was decoded
        (dict(seed=-1), "--seed"),
        (dict(seed=2**32), "--seed"),
        # infinite weights and rates passed ">= 0" and trained on NaN losses
        (dict(lr=float("inf")), "--lr"),
        (dict(lr=float("nan")), "--lr"),
        (dict(lambda_l1=float("inf")), "--lambda-l1"),
        (dict(seg_weight=float("inf")), "--seg-weight"),
        (dict(beta1=float("nan")), "--beta1"),
        (dict(rotate_deg=float("inf")), "--rotate-deg"),
    ]
    for overrides, option in cases:
        with pytest.raises(TrainError, match=option) as info:
            fit(TrainConfig(**{**TINY, **overrides}), dataset, tmp_path / "never")
        assert "\n" not in str(info.value)
    with pytest.raises(TrainError, match="no such folder"):
        fit(TrainConfig(**TINY), tmp_path / "nowhere", tmp_path / "never")
    with pytest.raises(TrainError, match="--resume"):
        fit(TrainConfig(**TINY), dataset, tmp_path / "never", resume=True)
    assert not (tmp_path / "never").exists()  # nothing created for a run that cannot start
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="--device cuda"):
            fit(TrainConfig(**{**TINY, "device": "cuda"}), dataset, tmp_path / "never")


def test_amp_on_the_cpu_is_fp32_unless_bf16_is_asked_for():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "off" and resolve_amp("off", cpu) == "off"
    assert resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(TrainError, match="--amp fp16 needs a CUDA GPU"):
        resolve_amp("fp16", cpu)
    assert resolve(TrainConfig(**TINY))[0].amp == "off"


@pytest.mark.slow
def test_cpu_bf16_autocast_trains_and_resumes_with_fp32_weights(dataset, tmp_path):
    """--amp bf16 on the CPU really runs in bf16 (its losses differ from fp32's), keeps fp32
    weights in plain layout in the checkpoint, and resumes."""
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0, amp="off"), dataset, tmp_path / "fp32")
    run = tmp_path / "bf16"
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0, amp="bf16"), dataset, run)
    (fp32,), (bf16,) = read_metrics(tmp_path / "fp32"), read_metrics(run)
    assert np.isfinite(bf16["loss"]["g_total"]) and bf16["loss"] != fp32["loss"]
    ckpt = read_checkpoint(run / LAST)
    assert ckpt["config"]["amp"] == "bf16" and ckpt["scaler"] == {}
    assert all(v.dtype == torch.float32 and v.is_contiguous()
               for v in ckpt["generator"].values() if v.is_floating_point())
    fit(TrainConfig(**TINY, epochs=2, epochs_decay=0, amp="bf16"), dataset, run, resume=True)
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2]


def test_checkpoints_without_what_init_from_and_resume_read_are_named(dataset, tmp_path):
    """An hx-ckpt/1 file lacking its config or epoch raised KeyError from --init-from; one
    lacking D or the optimisers, from --resume."""
    generator = build_generator("lite", 64).state_dict()
    config = {"preset": "lite", "size": 64, "target": "alpha"}
    cases = {"no-config": {"generator": generator, "epoch": 1},
             "no-epoch": {"config": config, "generator": generator},
             "no-generator": {"config": config, "epoch": 1}}
    for name, state in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"format": "hx-ckpt/1", **state}, path)
        with pytest.raises(TrainError) as info:
            fit(TrainConfig(**TINY, init_from=str(path)), dataset, tmp_path / "never")
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    assert not (tmp_path / "never").exists()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "hx-ckpt/1", "config": {**config, "epochs": 1, "epochs_decay": 0}, "generator": generator,
                "epoch": 1}, run / LAST)
    with pytest.raises(TrainError, match="last.pt") as info:
        fit(TrainConfig(**TINY, epochs=2, epochs_decay=0), dataset, run, resume=True)
    assert "\n" not in str(info.value)
    assert [p.name for p in run.iterdir()] == [LAST]


@pytest.mark.parametrize("left", ["best.pt", "metrics.jsonl", "config.json", "samples/epoch_003.png"])
def test_a_new_run_never_replaces_an_earlier_runs_files(dataset, tmp_path, left):
    """The guard looked at last.pt only: a folder left with an earlier run's best.pt or metrics
    (last.pt deleted to save space, say) lost them to the new run."""
    run = tmp_path / "run"
    (run / left).parent.mkdir(parents=True, exist_ok=True)
    (run / left).write_bytes(b"an earlier run's")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(TrainError) as info:
        fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, run)
    message = str(info.value)
    assert str(run) in message and left.split("/")[0] in message and "\n" not in message
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert (run / left).read_bytes() == b"an earlier run's"


def test_a_run_stopped_before_its_first_epoch_leaves_nothing_in_the_way(dataset, tmp_path, monkeypatch):
    """Ctrl-C before a first checkpoint: nothing of the run is kept, so the same command starts it
    again (there is nothing to --resume)."""
    import hx_train.train as hxtrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    config = TrainConfig(**TINY, epochs=1, epochs_decay=0)
    monkeypatch.setattr(hxtrain, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config, dataset, run)
    assert not run.exists() or list(run.iterdir()) == []
    monkeypatch.undo()
    fit(config, dataset, run)
    assert read_checkpoint(run / LAST)["epoch"] == 1


@pytest.mark.parametrize("stop_at", ["best.pt", "last.pt"])
def test_a_run_stopped_while_writing_its_first_checkpoint_leaves_nothing_in_the_way(dataset, tmp_path,
                                                                                  monkeypatch, stop_at):
    """The first epoch's metrics line (and best.pt) were written before last.pt: Ctrl-C while a
    first checkpoint was being written (seconds for a large preset) left them, so the same command
    was refused for holding an earlier run's files, and the CLI said nothing was saved."""
    import hx_train.train as hxtrain

    write = hxtrain._atomic_write

    def interrupted(path, *args, **kwargs):
        if Path(path).name == stop_at:
            raise KeyboardInterrupt
        return write(path, *args, **kwargs)

    run = tmp_path / "run"
    config = TrainConfig(**TINY, epochs=1, epochs_decay=0)
    monkeypatch.setattr(hxtrain, "_atomic_write", interrupted)
    if stop_at == "last.pt":  # best.pt is linked to last.pt; make it a write, as on a disk without links
        monkeypatch.setattr(hxtrain.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no links")))
        monkeypatch.setattr(hxtrain, "_link_or_copy", lambda source, dest: interrupted(dest, b""))
    with pytest.raises(KeyboardInterrupt):
        fit(config, dataset, run)
    assert not run.exists() or list(run.iterdir()) == []
    monkeypatch.undo()
    fit(config, dataset, run)
    assert read_checkpoint(run / LAST)["epoch"] == 1 and [m["epoch"] for m in read_metrics(run)] == [1]


KILLED_BETWEEN_BEST_AND_LAST = """
import os, sys
from pathlib import Path
import hx_train.train as hxtrain
from hx_train.config import TrainConfig

def killed(source, dest):  # kill -9 the instant after best.pt is in place, before last.pt is
    assert Path(source).name == "best.pt" and Path(source).is_file()
    os._exit(137)

hxtrain._link_or_copy = killed
hxtrain.fit(TrainConfig(**{config}), Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_a_run_killed_between_its_first_best_pt_and_last_pt_does_not_block_the_same_command(dataset, tmp_path):
    """kill -9 after a new run's first best.pt was in place but before its last.pt left RUN with
    best.pt alone, and the same command was refused for holding an earlier run's files."""
    run = tmp_path / "run"
    config = dict(**TINY, epochs=1, epochs_decay=0)
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_BEST_AND_LAST.format(config=config),
                             str(dataset), str(run)], cwd=Path(__file__).resolve().parents[2],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    assert sorted(p.name for p in run.iterdir() if p.name != ".hx-lock") == ["best.pt"]
    messages = []
    fit(TrainConfig(**config), dataset, run, log=messages.append)
    assert read_checkpoint(run / LAST)["epoch"] == 1 and [m["epoch"] for m in read_metrics(run)] == [1]
    assert os.path.samefile(run / LAST, run / "best.pt")  # this run's best.pt, not the killed one's
    assert any("best.pt" in m for m in messages)


@pytest.mark.parametrize("change", ["other options", "other data", "epoch 2", "not hx"])
def test_a_lone_best_pt_that_is_not_this_commands_first_epoch_is_kept(dataset, tmp_path, change):
    """Only the killed first epoch of this same command is replaced: a lone best.pt made with
    other options or data, of a later epoch, or not an hx checkpoint is an earlier run's result."""
    run = tmp_path / "run"
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, run)
    ckpt = torch.load(run / "best.pt", weights_only=True)  # not mmapped: best.pt is rewritten below
    for name in ("last.pt", "metrics.jsonl", "config.json"):
        (run / name).unlink()
    for grid in (run / "samples").iterdir():
        grid.unlink()
    (run / "samples").rmdir()
    data = dataset
    if change == "epoch 2":
        torch.save({**ckpt, "epoch": 2}, run / "best.pt")
    elif change == "not hx":
        (run / "best.pt").write_bytes(b"an earlier run's")
    elif change == "other data":
        data = tmp_path / "data"
        data.symlink_to(dataset)
    before = (run / "best.pt").read_bytes()
    config = TrainConfig(**{**TINY, "batch_size": 2} if change == "other options" else TINY, epochs=1, epochs_decay=0)
    with pytest.raises(TrainError, match="earlier run's best.pt"):
        fit(config, data, run)
    assert (run / "best.pt").read_bytes() == before and not (run / LAST).exists()


def test_a_metrics_line_lost_after_its_checkpoint_comes_back_on_resume(dataset, tmp_path):
    """The metrics line follows the checkpoint now; a run killed between the two gets the line
    back from the checkpoint when resumed."""
    run = tmp_path / "run"
    fit(TrainConfig(**TINY, epochs=2, epochs_decay=0), dataset, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # epoch 2's line cut short
    fit(TrainConfig(**TINY, epochs=3, epochs_decay=0), dataset, run, resume=True)
    again = (run / "metrics.jsonl").read_text().splitlines()
    assert again[:2] == lines and [json.loads(line)["epoch"] for line in again] == [1, 2, 3]


def test_a_rerun_removes_the_temporaries_a_killed_run_left(dataset, tmp_path):
    """kill -9 during a checkpoint write left RUN/.best.pt.<hex>.hx-tmp (a partial checkpoint,
    44 MB for wide) that no later run removed. Only names hx makes go; the user's stay."""
    run = tmp_path / "run"
    run.mkdir()
    stale = ".best.pt.0123456789ab.hx-tmp"
    (run / stale).write_bytes(b"partial checkpoint")
    mine = ["notes.hx-tmp", ".best.pt.tmp", "best.pt.0123456789ab.hx-tmp"]
    for name in mine:
        (run / name).write_bytes(b"the user's")
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, run)
    assert not (run / stale).exists()
    assert all((run / name).read_bytes() == b"the user's" for name in mine)

    (run / stale).write_bytes(b"partial checkpoint")
    (run / "samples" / ".epoch_002.png.0123456789ab.hx-tmp").write_bytes(b"partial grid")
    fit(TrainConfig(**TINY, epochs=2, epochs_decay=0), dataset, run, resume=True)
    left = sorted(p.name for p in run.rglob("*") if p.name.startswith(".") or "tmp" in p.name)
    assert left == sorted(mine[1:2] + mine[:1] + mine[2:])


def test_a_lock_left_by_a_killed_fit_does_not_block_and_is_taken_over(dataset, tmp_path, monkeypatch):
    """kill -9 leaves RUN/.hx-lock behind; the kernel dropped its flock with the process, so the
    next fit goes on, holds RUN itself while it trains, and removes the file when done."""
    import hx_train.train as hxtrain

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from hx_infer.io.lock import OutputLock\n"
        f"OutputLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)")],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean-up ran
    holder.wait()
    assert (run / ".hx-lock").read_text().startswith(f"pid {holder.pid} ")

    held_while_training = []

    def step(*args, **kwargs):
        if not held_while_training:
            fd = os.open(run / ".hx-lock", os.O_RDONLY)
            try:  # another open file of the lock: refused while this fit holds it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_while_training.append((run / ".hx-lock").read_text())
            finally:
                os.close(fd)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(hxtrain, "train_step", step)
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, run)
    assert read_checkpoint(run / LAST)["epoch"] == 1
    assert [holder.split()[:2] for holder in held_while_training] == [["pid", str(os.getpid())]]
    assert not (run / ".hx-lock").exists()  # released with the run


def test_resume_must_keep_the_networks(dataset, tmp_path):
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, tmp_path / "run")
    with pytest.raises(TrainError, match="--size 128 differs"):
        fit(TrainConfig(**{**TINY, "size": 128, "epochs": 2}), dataset, tmp_path / "run", resume=True)


def test_one_grad_scaler_steps_both_optimisers_and_updates_once_per_step():
    """The fp16 recipe, run on the CPU under bf16 autocast: the scaler's growth tracker counts
    iterations without overflow, so it must advance by exactly one per step."""
    torch.manual_seed(0)
    config = TrainConfig(**TINY)
    G, D = build_generator("lite", 64), build_discriminator("lite")
    opt_g, opt_d = (torch.optim.Adam(n.parameters(), lr=2e-4, betas=(0.5, 0.999)) for n in (G, D))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    before = [p.detach().clone() for p in (*G.parameters(), *D.parameters())]
    photo = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    for step in range(1, 3):
        terms = train_step(G, D, opt_g, opt_d, scaler, bf16, photo, mask * 2 - 1, mask, config)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values())
        assert scaler.state_dict()["_growth_tracker"] == step and scaler.get_scale() == 1024.0
    after = [p.detach() for p in (*G.parameters(), *D.parameters())]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))  # both optimisers stepped
    assert all(p.requires_grad for p in D.parameters())  # D is left trainable


def test_without_the_gan_term_d_never_runs_and_g_still_learns():
    config, device = resolve(TrainConfig(**TINY, lambda_gan=0, seg_loss="dice"))
    run = _Training.start(config, device)  # as fit sets up: networks, optimisers, scaler
    G, D = run.G, run.D
    d_before = [p.detach().clone() for p in D.parameters()]
    g_before = [p.detach().clone() for p in G.parameters()]
    photo = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    terms = train_step(G, D, run.opt_g, run.opt_d, run.scaler, autocast_for(config, device),
                       photo, mask * 2 - 1, mask, config)
    assert set(terms) == {"g_l1", "g_seg", "g_total"}
    assert torch.isclose(terms["g_total"], 100 * terms["g_l1"] + 10 * terms["g_seg"])
    assert all(torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
    assert all(p.grad is None for p in D.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))


# --- CUDA --------------------------------------------------------------------------------------

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_autocast_and_grad_scaler(dataset, tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    run = tmp_path / amp
    fit(TrainConfig(**{**TINY, "device": "cuda", "amp": amp, "epochs": 2, "epochs_decay": 0}), dataset, run)
    lines = read_metrics(run)
    assert all(np.isfinite(m["loss"]["g_total"]) for m in lines)
    ckpt = read_checkpoint(run / LAST)
    assert ckpt["config"]["device"] == "cuda" and ckpt["config"]["amp"] == amp
    if amp == "fp16":  # one scaler for both optimisers, updated once per iteration
        assert ckpt["scaler"]["scale"] > 0 and ckpt["scaler"]["_growth_tracker"] >= 0
    else:
        assert ckpt["scaler"] == {}
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in ckpt["generator"].values())
    assert all(v.dtype == torch.float32 for v in ckpt["generator"].values() if v.is_floating_point())
    fit(TrainConfig(**{**TINY, "device": "cuda", "amp": amp, "epochs": 3, "epochs_decay": 0}), dataset, run,
        resume=True)
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]


@gpu
@needs_cuda
def test_cuda_channels_last_and_compile_keep_plain_state_dicts(dataset, tmp_path):
    run = tmp_path / "compiled"
    fit(TrainConfig(**{**TINY, "device": "cuda", "compile": True, "epochs": 1, "epochs_decay": 0}), dataset, run)
    ckpt = read_checkpoint(run / LAST)
    for part, net in (("generator", build_generator("lite", 64)), ("discriminator", build_discriminator("lite"))):
        assert list(ckpt[part]) == list(net.state_dict())  # no `_orig_mod.` prefix
        net.load_state_dict(ckpt[part])
        assert all(v.is_contiguous() for v in ckpt[part].values())  # no channels_last strides
