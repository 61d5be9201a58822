"""hx_infer.evaluate and `hx-infer eval`: metrics with known answers, crop rules, DATA checks,
the CLI end to end, and agreement with the mattes `hx-infer run --outputs alpha` writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hx_infer import Extractor
from hx_infer.cli import main
from hx_infer.evaluate import (CROPS, EvalError, alpha_mae, boundary, boundary_scores, crop_box, evaluate,
                               find_pairs, iou, parse_crops, plan_eval, read_mask)
from hx_infer.model import load_model_dir
from hx_infer_asserts import assert_one_line_error


def hx(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(main, [str(a) for a in args])


def rect(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """[H, W] uint8: 255 inside rows top:bottom, columns left:right."""
    image = np.zeros((height, width), np.uint8)
    image[top:bottom, left:right] = 255
    return image


@pytest.fixture
def data_dir(tmp_path, make_disc_photo) -> Path:
    """DATA/images + DATA/masks: four disc photos (PNG, and JPEGs large enough for the reduced
    decode of a matte-only run), one with an empty mask, one photo without a mask."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shapes = [(48, 40), (40, 56), (140, 100), (96, 150)]
    for i, (height, width) in enumerate(shapes):
        rgb, mask = make_disc_photo(height, width, seed=10 + i)
        suffix = "jpg" if height * width > 10_000 else "png"
        Image.fromarray(rgb).save(root / "images" / f"p{i}.{suffix}", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    rgb, _ = make_disc_photo(40, 40, seed=20)
    Image.fromarray(rgb).save(root / "images" / "nobody.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / "nobody.png")
    Image.fromarray(rgb).save(root / "images" / "unlabelled.png")
    return root


# ---------------------------------------------------------------------------------------------
# Metrics


def test_iou_of_two_rectangles():
    a = rect(50, 50, 10, 10, 30, 30)  # 20 x 20
    m = rect(50, 50, 20, 20, 40, 40)  # overlaps a in 10 x 10
    assert iou(a, m) == pytest.approx(100 / (400 + 400 - 100))
    assert iou(a, a) == 1.0
    assert iou(a, rect(50, 50, 40, 40, 50, 50)) == 0.0
    empty = np.zeros((50, 50), np.uint8)
    assert iou(empty, empty) == 1.0
    # the threshold is alpha / 255 > 0.5: 128 counts as person, 127 does not
    assert iou(np.full((4, 4), 128, np.uint8), np.full((4, 4), 255, np.uint8)) == 1.0
    assert iou(np.full((4, 4), 127, np.uint8), np.full((4, 4), 255, np.uint8)) == 0.0


def test_alpha_mae():
    m = rect(10, 10, 0, 0, 10, 5)  # left half person
    assert alpha_mae(np.full((10, 10), 255, np.uint8), m) == pytest.approx(0.5)
    assert alpha_mae(np.full((10, 10), 51, np.uint8), np.zeros((10, 10), np.uint8)) == pytest.approx(0.2)
    assert alpha_mae(m, m) == 0.0


def test_metrics_refuse_shapes_that_differ():
    with pytest.raises(ValueError, match="one shape"):
        iou(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))


def naive_boundary(region: np.ndarray) -> np.ndarray:
    """A pixel of the region with one of its 8 neighbours outside it; beyond the frame is inside."""
    padded = np.pad(region, 1, constant_values=True)
    h, w = region.shape
    outside = np.zeros_like(region)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            outside |= ~padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    return region & outside


def naive_boundary_scores(alpha, mask, tolerance):
    """Precision, recall, F from every pairwise distance between boundary pixels."""
    p = np.argwhere(naive_boundary(alpha > 127)).astype(float)
    t = np.argwhere(naive_boundary(mask > 127)).astype(float)
    d = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    precision = (d.min(1) <= tolerance).mean()
    recall = (d.min(0) <= tolerance).mean()
    return precision, recall, 2 * precision * recall / (precision + recall)


def test_boundary_is_the_edge_inside_the_region_and_not_the_frame():
    region = rect(10, 10, 2, 2, 7, 7) > 0
    edge = boundary(region)
    assert np.array_equal(edge, naive_boundary(region))
    assert edge.sum() == 5 * 5 - 3 * 3
    assert not boundary(np.ones((6, 6), bool)).any()  # a region filling the frame has no edge
    assert np.array_equal(boundary(rect(10, 10, 0, 0, 5, 10) > 0)[4], np.ones(10, bool))  # only row 4


def test_boundary_f_is_one_for_identical_masks_and_lower_for_a_shifted_one():
    m = rect(60, 60, 15, 15, 45, 40)
    assert boundary_scores(m, m, 3) == (1.0, 1.0, 1.0)
    assert boundary_scores(m, m, 0) == (1.0, 1.0, 1.0)
    shifted = rect(60, 60, 15, 21, 45, 46)  # 6 px to the right
    precision, recall, f = boundary_scores(shifted, m, 3)
    assert f < 1
    assert (precision, recall, f) == pytest.approx(naive_boundary_scores(shifted, m, 3))
    assert boundary_scores(shifted, m, 6)[2] == 1.0  # every edge pixel within 6 px of the other's
    nearer = rect(60, 60, 15, 17, 45, 42)  # 2 px: within the tolerance of 3, not of 1
    assert boundary_scores(nearer, m, 3)[2] == 1.0
    assert boundary_scores(nearer, m, 1)[2] < 1
    assert boundary_scores(nearer, m, 1) == pytest.approx(naive_boundary_scores(nearer, m, 1))


def test_boundary_f_with_an_empty_side():
    m = rect(20, 20, 5, 5, 15, 15)
    empty = np.zeros((20, 20), np.uint8)
    assert boundary_scores(empty, m) == (0.0, 0.0, 0.0)
    assert boundary_scores(m, empty) == (0.0, 0.0, 0.0)
    assert boundary_scores(empty, empty) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Crops


def person_mask() -> np.ndarray:
    """H 200 x W 100: person in rows 50..149 (h 100), a head (cols 40..59) on rows 50..79 and
    a body (cols 20..79) below."""
    mask = rect(200, 100, 50, 40, 80, 60)
    mask[80:150, 20:80] = 255
    return mask


def test_crop_boxes_follow_the_documented_rules():
    mask = person_mask()
    assert crop_box(mask, "full") == (0, 0, 100, 200)
    # margin round(0.10 * 100) = 10 above and on either side
    assert crop_box(mask, "head") == (40 - 10, 50 - 10, 60 + 10, 50 + 30)  # rows 50..79 hold the head only
    assert crop_box(mask, "upper") == (20 - 10, 50 - 10, 80 + 10, 50 + 55)  # reach down into the body
    empty = np.zeros((30, 30), np.uint8)
    assert crop_box(empty, "upper") is None and crop_box(empty, "head") is None
    assert crop_box(empty, "full") == (0, 0, 30, 30)


def test_crop_boxes_are_clamped_to_the_photo():
    mask = rect(100, 60, 0, 0, 100, 60)  # the person fills the frame
    assert crop_box(mask, "upper") == (0, 0, 60, 55)
    assert crop_box(mask, "head") == (0, 0, 60, 30)
    tiny = rect(50, 50, 49, 49, 50, 50)  # one pixel at the corner
    assert crop_box(tiny, "head") == (49, 49, 50, 50)


def test_parse_crops():
    assert parse_crops("head, full,head") == ("head", "full")
    assert parse_crops(CROPS) == CROPS
    for bad in ("", "full,legs"):
        with pytest.raises(EvalError, match="--crops"):
            parse_crops(bad)


# ---------------------------------------------------------------------------------------------
# DATA


def test_pairs_by_stem_and_unpaired_photos(data_dir):
    pairs, unpaired = find_pairs(data_dir)
    assert [p.name for p, _ in pairs] == ["nobody.png", "p0.png", "p1.png", "p2.jpg", "p3.jpg"]
    assert all(p.stem == m.stem for p, m in pairs)
    assert [p.name for p in unpaired] == ["unlabelled.png"]


def test_prepare_root_means_its_val_split(tmp_path, data_dir, tiny_model_dir):
    root = tmp_path / "prepared"
    root.mkdir()
    data_dir.rename(root / "val")
    plan = plan_eval(load_model_dir(tiny_model_dir), root)
    assert plan.folder == root / "val" and len(plan.pairs) == 5


def test_bad_data_raises_one_line_eval_errors(tmp_path, data_dir, tiny_model_dir, tiny_rgb_model_dir):
    model = load_model_dir(tiny_model_dir)
    (tmp_path / "bare").mkdir()
    (tmp_path / "nopairs" / "images").mkdir(parents=True)
    (tmp_path / "nopairs" / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "nopairs" / "images" / "a.png")
    cases = [(tmp_path / "missing", "no such folder"), (tmp_path / "bare", "no images/ and masks/"),
             (tmp_path / "nopairs", "no photo in images/ has a mask")]
    for data, needle in cases:
        with pytest.raises(EvalError, match=needle) as info:
            plan_eval(model, data)
        assert "\n" not in str(info.value)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(data_dir / "masks" / "p0.jpg")
    with pytest.raises(EvalError, match="a second mask for 'p0'"):
        plan_eval(model, data_dir)
    with pytest.raises(EvalError, match="target rgb"):
        plan_eval(load_model_dir(tiny_rgb_model_dir), data_dir)
    with pytest.raises(EvalError, match="--boundary-tolerance"):
        plan_eval(model, data_dir, tolerance=-1)


# ---------------------------------------------------------------------------------------------
# evaluate() and the CLI


def test_crops_run_through_the_same_path_as_extractor_alpha(data_dir, tiny_model_dir):
    """Each record's figures are those of Extractor.alpha (letterbox -> backend -> unletterbox ->
    to_uint8) on the cropped photo, against the cropped mask."""
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        results = evaluate(ex.model, data_dir, ex.backend, crops="upper,head", tolerance=2, batch_size=3)
        assert {r["crop"] for r in results["images"]} == {"upper", "head"}
        for record in results["images"]:
            photo = np.asarray(Image.open(record["path"]).convert("RGB"))
            mask = read_mask(data_dir / "masks" / (Path(record["path"]).stem + ".png"))
            x0, y0, x1, y1 = record["box"]
            assert (x0, y0, x1, y1) == crop_box(mask, record["crop"])
            alpha = ex.alpha(np.ascontiguousarray(photo[y0:y1, x0:x1]))
            assert record["iou"] == iou(alpha, mask[y0:y1, x0:x1])
            assert record["boundary_f"] == boundary_scores(alpha, mask[y0:y1, x0:x1], 2)[2]


def test_eval_cli_end_to_end(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "results" / "eval.json"
    r = hx("eval", tiny_model_dir, data_dir, "--backend", "ort", "--device", "cpu", "--json", out,
           "--batch-size", "2", "--quiet")
    assert r.exit_code == 0, r.output
    results = json.loads(out.read_text())
    assert set(results) >= {"model", "backend", "device", "data", "pairs", "crops", "images", "skipped",
                            "failures", "wall_s", "boundary_tolerance_px"}
    assert results["backend"] == "ort" and results["device"] == "cpu"
    assert results["model"]["sha256"] == load_model_dir(tiny_model_dir).sha256
    assert results["pairs"] == 5 and results["failures"] == []
    assert list(results["crops"]) == ["full", "upper", "head"]
    assert results["crops"]["full"]["n"] == 5
    for crop in ("upper", "head"):  # nobody.png has an empty mask: no person crops
        assert results["crops"][crop]["n"] == 4 and results["crops"][crop]["skipped"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in results["skipped"]}
    assert reasons == {"unlabelled.png": "no mask", "nobody.png": "empty mask: no upper, head crop"}
    for crop, summary in results["crops"].items():
        for key, value in summary.items():
            if key not in ("n", "skipped"):
                assert 0.0 <= value <= 1.0, (crop, key, value)
        assert summary["iou_p10"] <= summary["iou_median"] <= 1.0
    full = [rec["iou"] for rec in results["images"] if rec["crop"] == "full"]
    assert results["crops"]["full"]["iou_mean"] == pytest.approx(np.mean(full))
    assert results["crops"]["full"]["iou_mean"] > 0.7  # the tiny model finds the discs
    table = r.stdout.splitlines()
    assert table[0].split()[:3] == ["crop", "n", "IoU"]
    assert [line.split()[0] for line in table[1:4]] == ["full", "upper", "head"]
    assert "Traceback" not in r.output


@pytest.mark.parametrize("refine", ["none", "guided"])
def test_eval_scores_what_run_writes(tmp_path, data_dir, tiny_model_dir, refine):
    """IoU of each alpha PNG that `hx-infer run --outputs alpha [--refine R]` writes equals eval's full-crop IoU."""
    run = hx("run", data_dir / "images", tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort",
             "--device", "cpu", "--outputs", "alpha", "--refine", refine, "--quiet")
    assert run.exit_code == 0, run.output
    r = hx("eval", tiny_model_dir, data_dir, "--backend", "ort", "--device", "cpu", "--crops", "full",
           "--refine", refine, "--json", tmp_path / "eval.json", "--quiet")
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["refine"] == refine
    records = results["images"]
    assert len(records) == 5
    for record in records:
        stem = Path(record["path"]).stem
        alpha = np.asarray(Image.open(tmp_path / "out" / "alpha" / f"{stem}.png"))
        mask = read_mask(data_dir / "masks" / f"{stem}.png")
        assert record["iou"] == iou(alpha, mask), stem
        assert record["mae"] == alpha_mae(alpha, mask), stem


def test_unreadable_pairs_are_reported_and_exit_1(tmp_path, data_dir, tiny_model_dir):
    (data_dir / "images" / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data_dir / "masks" / "p0.png")  # wrong size
    r = hx("eval", tiny_model_dir, data_dir, "--backend", "ort", "--device", "cpu",
           "--json", tmp_path / "eval.json", "--quiet")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    failures = {Path(f["path"]).name: f["reason"] for f in json.loads((tmp_path / "eval.json").read_text())["failures"]}
    assert set(failures) == {"p1.png", "p0.png"}
    assert "mask is 10x10, photo p0.png is 40x48" in failures["p0.png"]
    assert any(line.startswith("hx-infer: ") and "p1.png" in line for line in r.stderr.splitlines())
    assert "full" in r.stdout  # the rest is still scored and printed


def test_bad_data_and_options_exit_2_with_one_line(tmp_path, data_dir, tiny_model_dir, tiny_rgb_model_dir):
    assert_one_line_error(hx("eval", tiny_model_dir, tmp_path / "nothing"), "DATA", "no such folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(hx("eval", tiny_model_dir, tmp_path / "empty"), "no images/ and masks/")
    assert_one_line_error(hx("eval", tiny_model_dir, data_dir, "--crops", "feet"), "--crops", "feet")
    assert_one_line_error(hx("eval", tiny_model_dir, data_dir, "--json", data_dir / "images" / "x.png"), "--json")
    assert_one_line_error(hx("eval", tiny_rgb_model_dir, data_dir), "target rgb")
    assert_one_line_error(hx("eval", tmp_path, data_dir), "not a model folder")
    assert_one_line_error(hx("eval", tiny_model_dir, data_dir, "--boundary-tolerance", "-1"), "-1")


def test_json_replaces_only_an_earlier_eval_result(tmp_path, data_dir, tiny_model_dir, monkeypatch):
    """--json never writes over the user's files: a model card (the model would be dead), notes,
    a run report or a dangling link are refused in one line before the model runs, and kept."""
    import shutil

    import hx_infer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    report = tmp_path / "hx-report.json"
    report.write_text(json.dumps({"counts": {}, "failures": [], "wall_s": 1.0}))
    dangling = tmp_path / "gone.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    kept = {path: path.read_bytes() for path in (model / "model.json", notes, report)}

    def never(*args, **kwargs):
        raise AssertionError("the model was opened before --json was checked")

    with monkeypatch.context() as m:
        m.setattr(hx_infer, "Extractor", never)
        for path in (model / "model.json", notes, report, dangling):
            assert_one_line_error(hx("eval", model, data_dir, "--json", path, "--quiet"),
                                  f"--json {path}", "not an hx-infer eval result")
    assert {path: path.read_bytes() for path in kept} == kept
    assert dangling.is_symlink() and not dangling.exists()

    out = tmp_path / "eval.json"
    args = ("eval", model, data_dir, "--backend", "ort", "--device", "cpu", "--crops", "full", "--json", out, "--quiet")
    assert hx(*args).exit_code == 0
    first = json.loads(out.read_text())
    r = hx(*args[:-3], "--boundary-tolerance", "1", "--json", out, "--quiet")  # an earlier result is replaced
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["boundary_tolerance_px"] == 1 != first["boundary_tolerance_px"]


def test_boundary_tolerance_must_be_finite_and_at_most_the_maximum(data_dir, tiny_model_dir):
    """nan and inf made an internal error, 50000 asked for a 149 GiB disk: one line, exit 2."""
    from hx_infer.evaluate import MAX_TOLERANCE

    for bad in ("nan", "inf", "-inf", "1e400", str(MAX_TOLERANCE + 1), "50000"):
        assert_one_line_error(hx("eval", tiny_model_dir, data_dir, "--boundary-tolerance", bad), "--boundary-tolerance")
    model = load_model_dir(tiny_model_dir)
    for bad in (float("nan"), float("inf"), MAX_TOLERANCE + 0.5):
        with pytest.raises(EvalError, match="--boundary-tolerance"):
            plan_eval(model, data_dir, tolerance=bad)
    assert plan_eval(model, data_dir, tolerance=MAX_TOLERANCE).tolerance == MAX_TOLERANCE
    assert f"0<=x<={MAX_TOLERANCE}" in hx("eval", "--help").stdout.replace("\n", " ").replace(" ", "")
