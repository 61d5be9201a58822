"""`hx-train prepare` with several sources and the `coco` format, on tiny synthetic fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hx_train.cli import main
from hx_train.coco import decode_rle_string, polygons_mask, rle_mask
from hx_train.prepare import PrepareError, choose_val, prepare, read_sources, source_of

W, H = 40, 30


def save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), np.uint8)


def folders_source(root: Path, n: int, stem: str = "p") -> Path:
    for i in range(n):
        save(noise(i), root / "images" / f"{stem}{i:03d}.jpg")
        mask = np.zeros((H, W), np.uint8)
        mask[5:25, 10 + i % 10:20 + i % 10] = 255
        save(mask, root / "masks" / f"{stem}{i:03d}.png")
    return root


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def split_names(dst: Path) -> dict[str, set[str]]:
    return {part: {p.stem for p in (dst / part / "masks").iterdir()} for part in ("train", "val")}


# ------------------------------------------------------------------------------ several sources


def test_several_sources_are_prefixed_split_per_source_and_recorded(tmp_path):
    # Two sources with the same file names: the prefixes keep them apart.
    a = folders_source(tmp_path / "street", 120)
    b = folders_source(tmp_path / "indoor", 12)
    summary = prepare([a, b], tmp_path / "dst", min_val=30)

    names = split_names(tmp_path / "dst")
    every = names["train"] | names["val"]
    assert len(every) == 132 and not names["train"] & names["val"]
    assert {n.split("_")[0] for n in every} == {"street", "indoor"}
    # Per source: street keeps 30 val (more than 10 % of 120), indoor a third at most (12 // 3 = 4).
    val_by_source = {s: sum(n.startswith(s + "_") for n in names["val"]) for s in ("street", "indoor")}
    assert val_by_source == {"street": 30, "indoor": 4}

    record = json.loads((tmp_path / "dst" / "sources.json").read_text())
    rows = {r["name"]: r for r in record["sources"]}
    assert rows["street"]["path"] == str(a.resolve()) and rows["street"]["format"] == "folders"
    assert (rows["street"]["train"], rows["street"]["val"], rows["indoor"]["train"], rows["indoor"]["val"]) == \
        (90, 30, 8, 4)
    assert summary.train == 98 and summary.val == 34 and len(summary.sources) == 2
    # A source splits as it does prepared alone: the split does not depend on its neighbours.
    prepare(b, tmp_path / "alone", min_val=30)
    alone = split_names(tmp_path / "alone")["val"]
    assert {n.removeprefix("indoor_") for n in names["val"] if n.startswith("indoor_")} == alone


def test_source_names_collide_and_are_made_unique(tmp_path):
    a = folders_source(tmp_path / "x" / "data", 4)
    b = folders_source(tmp_path / "y" / "data", 4)
    c = folders_source(tmp_path / "z" / "DATA", 4)  # the same name on a case-insensitive disk
    prepare([a, b, c], tmp_path / "dst", min_val=0)
    sources = read_sources(tmp_path / "dst")
    assert [s["name"] for s in sources] == ["data", "data-2", "DATA-3"]
    assert source_of("data-2_p001.jpg", sources) == "data-2"
    assert source_of("data_p001.jpg", sources) == "data"
    # A set prepared before names lost their "_": the longest recorded prefix still decides.
    legacy = [{"name": "data", "prefix": "data_"}, {"name": "data_2", "prefix": "data_2_"}]
    assert source_of("data_2_p001.jpg", legacy) == "data_2" and source_of("data_p001.jpg", legacy) == "data"


def test_a_prefix_and_a_name_never_make_one_key(tmp_path):
    """Sources col/a (b_c.jpg) and col/a_b (c.jpg) both became a_b_c: one pair vanished uncounted,
    and the longest-prefix rule credited the other to the wrong source."""
    a = tmp_path / "col" / "a"
    ab = tmp_path / "col" / "a_b"
    for folder, stem, seed in ((a, "b_c", 1), (ab, "c", 2), (a, "d", 3), (ab, "d", 4)):
        save(noise(seed), folder / "images" / f"{stem}.jpg")
        mask = np.zeros((H, W), np.uint8)
        mask[5:25, 10:20] = 255
        save(mask, folder / "masks" / f"{stem}.png")
    dst = tmp_path / "dst"
    summary = prepare([a, ab], dst, val_fraction=0.0)
    assert summary.train == 4 and not summary.skipped
    sources = read_sources(dst)
    assert [(s["name"], s["train"]) for s in sources] == [("a", 2), ("a-b", 2)]
    # Every file is credited (as fit and eval_sources credit it) to the source it came from.
    by_source = {}
    for photo in sorted((dst / "train" / "images").iterdir()):
        by_source.setdefault(source_of(photo.name, sources), []).append(photo.stem)
    assert by_source == {"a": ["a_b_c", "a_d"], "a-b": ["a-b_c", "a-b_d"]}
    np.testing.assert_array_equal(read(dst / "train" / "images" / "a_b_c.jpg").shape, (H, W, 3))


def test_names_that_could_make_one_key_are_refused(tmp_path, monkeypatch):
    """The names prepare makes contain no "_"; were two ever to start alike, prepare stops
    rather than drop or mix pairs."""
    import hx_train.prepare as hxprepare

    a = folders_source(tmp_path / "a", 2)
    b = folders_source(tmp_path / "b", 2)
    monkeypatch.setattr(hxprepare, "source_names", lambda sources: ["a", "a_b"])
    with pytest.raises(PrepareError, match="a_b") as info:
        prepare([a, b], tmp_path / "dst")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "dst").exists()


def test_one_source_keeps_its_names_and_a_set_without_sources_json_is_one_source(tmp_path):
    folders_source(tmp_path / "src", 5)
    prepare(tmp_path / "src", tmp_path / "dst")
    names = split_names(tmp_path / "dst")
    assert names["train"] | names["val"] == {f"p{i:03d}" for i in range(5)}
    (tmp_path / "dst" / "sources.json").unlink()
    assert read_sources(tmp_path / "dst") == [{"name": "dst", "prefix": ""}]


def test_min_val_rule():
    keys = [f"k{i}" for i in range(200)]
    assert len(choose_val(keys, 0.1, 0, min_val=30)) == 30  # 10 % would be 20
    assert len(choose_val(keys[:90], 0.1, 0, min_val=30)) == 30  # 90 // 3
    assert len(choose_val(keys[:60], 0.1, 0, min_val=30)) == 20  # a third at most
    assert len(choose_val(keys[:60], 0.0, 0, min_val=30)) == 0  # no val asked for, none made
    assert len(choose_val(keys, 0.5, 0, min_val=30)) == 100


# ------------------------------------------------------------------------------ coco


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a bool mask: runs over the column-major pixels, 0s first."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    runs, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            runs.append(run)
            value, run = pixel, 1
    runs.append(run)
    return runs


def encode_rle_string(runs: list[int]) -> str:
    """pycocotools' rleToString, written from its description, to make compressed fixtures."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def ring(h: int = H, w: int = W) -> np.ndarray:
    """A person with a hole: a filled box minus an inner box (only RLE can carry a hole in COCO)."""
    m = np.zeros((h, w), bool)
    m[4:26, 6:30] = True
    m[10:18, 12:22] = False
    return m


def test_rle_decoding_both_kinds_keeps_holes():
    mask = ring()
    runs = rle_counts(mask)
    assert decode_rle_string(encode_rle_string(runs)) == runs
    np.testing.assert_array_equal(rle_mask({"size": [H, W], "counts": runs}), mask)
    np.testing.assert_array_equal(rle_mask({"size": [H, W], "counts": encode_rle_string(runs)}), mask)
    # pycocotools' own string for a 37x53 mask (box 5:30 x 10:40 minus 12:20 x 18:25, plus a
    # corner 0:3 x 50:53), so the decoder is checked against the reference, not only itself.
    reference = "g;i0<00000000000000^OL34ML34ML34ML34ML34ML34ML34?0000000000000000000000000000];ZOYE0000"
    expected = np.zeros((37, 53), bool)
    expected[5:30, 10:40] = True
    expected[12:20, 18:25] = False
    expected[0:3, 50:53] = True
    np.testing.assert_array_equal(rle_mask({"size": [37, 53], "counts": reference}), expected)
    with pytest.raises(ValueError):
        rle_mask({"size": [H, W], "counts": runs[:-1]})  # does not cover the image


def test_polygons_fill_whole_pixels_and_unite_their_parts():
    # A box from corner (10, 5) to (40, 30) covers columns 10..39 and rows 5..29, as in pycocotools;
    # a second part elsewhere is added, and an overlapping part does not cut a hole (no even-odd).
    box = [10.0, 5.0, 40.0, 5.0, 40.0, 30.0, 10.0, 30.0]
    inner = [15.0, 10.0, 20.0, 10.0, 20.0, 15.0, 15.0, 15.0]
    far = [0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]
    mask = polygons_mask([box, inner, far], 53, 37)
    expected = np.zeros((37, 53), bool)
    expected[5:30, 10:40] = True
    expected[0:4, 0:4] = True
    np.testing.assert_array_equal(mask, expected)


def coco_source(root: Path, *, category: str = "person") -> Path:
    """images/ + instances.json: a polygon person, an RLE person with a hole (compressed), a crowd
    region (uncompressed RLE), a dog that is not person, and an image whose file is missing."""
    for name, seed in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        save(noise(seed), root / "images" / name)
    hole = ring()
    crowd = np.zeros((H, W), bool)
    crowd[0:6, 30:40] = True
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
                   {"id": 3, "file_name": "c.jpg", "width": W, "height": H},
                   {"id": 4, "file_name": "gone.jpg", "width": W, "height": H}],
        "categories": [{"id": 7, "name": category}, {"id": 8, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": [[2.0, 2.0, 12.0, 2.0, 12.0, 22.0, 2.0, 22.0], [20.0, 20.0, 30.0, 20.0, 30.0, 28.0]]},
            {"id": 2, "image_id": 2, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": encode_rle_string(rle_counts(hole))}},
            {"id": 3, "image_id": 2, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": rle_counts(crowd)}},
            {"id": 4, "image_id": 3, "category_id": 8, "iscrowd": 0,
             "segmentation": [[0.0, 0.0, 20.0, 0.0, 20.0, 20.0]]},
        ],
    }
    (root / "instances.json").write_text(json.dumps(doc))
    return root


def test_coco_format_polygons_rle_crowd_and_missing_images(tmp_path):
    src = coco_source(tmp_path / "coco")
    summary = prepare(src / "instances.json", tmp_path / "dst", val_fraction=0.0)
    assert summary.fmt == "coco" and summary.train == 2
    reasons = {Path(s.source).name: s.reason for s in summary.skipped}
    assert reasons == {"gone.jpg": "no such file", "c.jpg": "empty mask"}  # the dog is not person

    b = read(tmp_path / "dst" / "train" / "masks" / "b.png") > 127
    crowd = np.zeros((H, W), bool)
    crowd[0:6, 30:40] = True
    np.testing.assert_array_equal(b, ring() | crowd)  # the hole stays, the crowd counts
    a = read(tmp_path / "dst" / "train" / "masks" / "a.png") > 127
    # The triangle (20, 20) (30, 20) (30, 28) holds column 25 from row 20 to the hypotenuse (y 24.4).
    assert a[2:22, 2:12].all() and a[20:24, 25].all() and not a[25:, 25].any()
    assert not a[0:2].any() and not a[10, 15:20].any()
    # The folder form (one .json beside images/) is detected as coco too.
    assert prepare(src, tmp_path / "dst2", val_fraction=0.0).fmt == "coco"


def test_coco_category_option_and_errors(tmp_path):
    src = coco_source(tmp_path / "coco", category="human")
    with pytest.raises(PrepareError, match="no category 'person'.*human"):
        prepare(src, tmp_path / "dst")
    assert prepare(src, tmp_path / "dst", category="human", val_fraction=0.0).train == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text('{"images": []}')
    with pytest.raises(PrepareError, match="not a COCO instances file"):
        prepare(tmp_path / "bad" / "x.json", tmp_path / "dst3", fmt="coco")


def test_bad_coco_image_entries_are_skipped_with_reasons(tmp_path):
    """A zero or negative width crashed in OpenCV or numpy; now the entry is listed and skipped."""
    src = coco_source(tmp_path / "coco")
    doc = json.loads((src / "instances.json").read_text())
    save(noise(5), src / "images" / "d.jpg")
    save(noise(6), src / "images" / "e.jpg")
    doc["images"][0]["width"] = 0  # a.jpg
    doc["images"][2]["height"] = -5  # c.jpg
    doc["images"] += [{"id": 5, "file_name": "d.jpg", "width": 10**6, "height": 10**6}, "e.jpg", 7]
    doc["annotations"] += [{"id": 9, "image_id": 5, "category_id": 7, "segmentation": [[0, 0, 9, 0, 9, 9]]}]
    (src / "instances.json").write_text(json.dumps(doc))
    summary = prepare(src, tmp_path / "dst", val_fraction=0.0)
    assert summary.train == 1  # b.jpg
    reasons = sorted(s.reason for s in summary.skipped)
    assert len(reasons) == 6, reasons  # a, c, d, "e.jpg", 7 and gone.jpg
    assert sum("width" in r or "height" in r for r in reasons) >= 3, reasons
    assert sum("not an object" in r for r in reasons) == 2, reasons


@pytest.mark.parametrize("change", [{"annotations": 5}, {"images": {"1": {}}}, {"images": 5},
                                    {"images": "a.jpg"}, {"annotation_image_id": [1]}, {"categories": 3}])
def test_a_malformed_coco_structure_is_one_line_naming_the_json(tmp_path, change):
    src = coco_source(tmp_path / "coco")
    doc = json.loads((src / "instances.json").read_text())
    if "annotation_image_id" in change:
        doc["annotations"][0]["image_id"] = change["annotation_image_id"]
    else:
        doc.update(change)
    (src / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(PrepareError) as info:
        prepare(src, tmp_path / "dst")
    message = str(info.value)
    assert "instances.json" in message and "\n" not in message
    assert not (tmp_path / "dst").exists()
    r = CliRunner().invoke(main, ["prepare", str(src), str(tmp_path / "dst")], prog_name="hx-train")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1].startswith("hx-train: ")


def test_cli_several_sources_and_one_line_errors(tmp_path):
    a = folders_source(tmp_path / "a", 6)
    c = coco_source(tmp_path / "c")
    runner = CliRunner()
    r = runner.invoke(main, ["prepare", str(a), str(c / "instances.json"), str(tmp_path / "dst"), "--min-val", "1"],
                      prog_name="hx-train")
    assert r.exit_code == 0, r.output
    assert "a: train" in r.stderr and "c: train" in r.stderr
    assert {s["format"] for s in read_sources(tmp_path / "dst")} == {"folders", "coco"}

    r = runner.invoke(main, ["prepare", str(c), str(tmp_path / "dst4"), "--category", "cat"], prog_name="hx-train")
    errors = [line for line in r.stderr.splitlines() if line.startswith("hx-train: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "no category 'cat'" in errors[0], r.stderr
    assert "Traceback" not in r.output
    r = runner.invoke(main, ["prepare", str(a)], prog_name="hx-train")
    assert r.exit_code == 2 and "needs SRC and DST" in r.stderr
