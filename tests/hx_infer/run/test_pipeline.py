"""hx_infer.run and the local engine through the Python API (Extractor), end to end on the CPU backends.

Photos are made here, tiny, in every format an archive holds; the model is conftest's 64 px
`tiny_model_dir`, fitted so that bright discs (the "person") get alpha ~1.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hx_infer import Extractor, load_model
from hx_infer.run.config import ConfigError, make_config
from hx_infer.run.options import RunOptions
from hx_infer.run.plan import Failed, Job, Skipped, plan_jobs

# ---------------------------------------------------------------------------------------------
# Photo fixtures


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims width x height: a decompression bomb by its header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def iou(alpha: np.ndarray, mask: np.ndarray) -> float:
    a, m = alpha > 127, mask > 127
    return float((a & m).sum() / max(1, (a | m).sum()))


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory, make_disc_photo):
    """A tree of photos in every mode hx must read -> (root, {rel: (width, height) upright, mask or None})."""
    root = tmp_path_factory.mktemp("photos")
    (root / "nested" / "deeper").mkdir(parents=True)
    expected: dict[str, tuple[tuple[int, int], np.ndarray | None]] = {}

    rgb, mask = make_disc_photo(90, 120, seed=1)
    Image.fromarray(rgb).save(root / "top.jpg", quality=95)
    expected["top.jpg"] = ((120, 90), mask)

    # Stored on its side with EXIF orientation 6 (rotate 90 degrees clockwise to view).
    rgb, mask = make_disc_photo(80, 60, seed=2)
    Image.fromarray(np.rot90(rgb).copy()).save(root / "nested/deeper/rot.jpg", exif=_exif_orientation(6),
                                               quality=95)
    expected["nested/deeper/rot.jpg"] = ((60, 80), mask)

    rgb, mask = make_disc_photo(40, 50, seed=3)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "nested/alpha.png")
    expected["nested/alpha.png"] = ((50, 40), mask)

    rgb, _ = make_disc_photo(35, 45, seed=4)
    Image.fromarray(rgb).convert("L").save(root / "nested/gray.jpg")
    expected["nested/gray.jpg"] = ((45, 35), None)

    wide = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(wide).save(root / "nested/deeper/w16.png")
    expected["nested/deeper/w16.png"] = ((40, 30), None)

    rgb, _ = make_disc_photo(48, 64, seed=5)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    expected["cmyk.jpg"] = ((64, 48), None)

    rgb, _ = make_disc_photo(44, 33, seed=6)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    expected["palette.png"] = ((33, 44), None)

    rgb, mask = make_disc_photo(50, 70, seed=7)
    Image.fromarray(rgb).save(root / "UPPER.JPG", quality=95)
    expected["UPPER.JPG"] = ((70, 50), mask)

    rgb, _ = make_disc_photo(23, 17, seed=8)
    Image.fromarray(rgb).save(root / "nested/small.png")
    expected["nested/small.png"] = ((17, 23), None)

    (root / "notes.txt").write_text("not a photo; ignored by extension")
    return root, expected


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".hx-tmp")]


def out_file(out: Path, kind: str, rel: str) -> Path:
    suffix = ".jpg" if kind == "composite" else ".png"
    return out / kind / Path(rel).with_suffix(suffix)


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_every_kind_lands_in_place_with_photo_size_and_mode(tmp_path, tiny_model_dir, photo_tree, backend):
    root, expected = photo_tree
    before = tree_digest(root)
    out = tmp_path / "out"
    with Extractor(tiny_model_dir, backend=backend, device="cpu", batch_size=3) as ex:
        report = ex.run(root, out, outputs="alpha,rgba,composite", workers=2)

    assert report["counts"] == {"processed": len(expected), "skipped": 0, "failed": 0}
    assert report["backend"] == backend and report["device"] == "cpu"
    for rel, (size, mask) in expected.items():
        for kind, mode, fmt in (("alpha", "L", "PNG"), ("rgba", "RGBA", "PNG"), ("composite", "RGB", "JPEG")):
            with Image.open(out_file(out, kind, rel)) as im:
                assert (im.size, im.mode, im.format) == (size, mode, fmt), (rel, kind)
        if mask is not None:  # the matte sits on the disc, upright: letterbox and EXIF are undone
            alpha = np.asarray(Image.open(out_file(out, "alpha", rel)))
            assert iou(alpha, mask) > 0.85, rel
            rgba = np.asarray(Image.open(out_file(out, "rgba", rel)))
            assert np.array_equal(rgba[..., 3], alpha)
    assert not (out / "rgba" / "notes.png").exists()
    assert json.loads((out / "hx-report.json").read_text()) == report
    assert tree_digest(root) == before  # inputs untouched
    assert temporaries(out) == []


def test_ort_and_torch_mattes_agree(tmp_path, tiny_model_dir, photo_tree):
    root, expected = photo_tree
    for backend in ("ort", "torch"):
        with Extractor(tiny_model_dir, backend=backend, device="cpu") as ex:
            ex.run(root, tmp_path / backend, outputs="alpha", workers=2)
    for rel in expected:
        a = np.asarray(Image.open(out_file(tmp_path / "ort", "alpha", rel)), np.int16)
        b = np.asarray(Image.open(out_file(tmp_path / "torch", "alpha", rel)), np.int16)
        assert np.abs(a - b).max() <= 1, rel


@pytest.mark.parametrize("spec, colour", [("white", (255, 255, 255)), ("#00ff00", (0, 255, 0)),
                                          ("image", (10, 20, 200))])
def test_composite_puts_the_person_on_the_background(tmp_path, tiny_model_dir, make_disc_photo, spec, colour):
    photos = tmp_path / "in"
    photos.mkdir()
    rgb, _ = make_disc_photo(96, 128, seed=11)
    Image.fromarray(rgb).save(photos / "p.png")
    if spec == "image":
        spec = str(tmp_path / "bg.png")
        Image.new("RGB", (300, 200), colour).save(spec)
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        ex.run(photos, tmp_path / "out", outputs="alpha,composite", background=spec, workers=1)
    alpha = np.asarray(Image.open(tmp_path / "out/alpha/p.png"))
    comp = np.asarray(Image.open(tmp_path / "out/composite/p.jpg")).astype(np.float32)
    outside, inside = alpha < 10, alpha > 245
    assert outside.sum() > 500 and inside.sum() > 500
    assert np.abs(comp[outside].mean(0) - colour).max() < 12  # background where the matte is 0
    assert np.abs(comp[inside].mean(0) - rgb[inside].mean(0)).max() < 12  # photo where it is 1


def test_guided_refine_keeps_the_matte_on_the_person(tmp_path, tiny_model_dir, make_disc_photo):
    photos = tmp_path / "in"
    photos.mkdir()
    rgb, mask = make_disc_photo(300, 400, seed=12)
    Image.fromarray(rgb).save(photos / "p.png")
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        ex.run(photos, tmp_path / "plain", outputs="alpha", workers=1)
        ex.run(photos, tmp_path / "guided", outputs="alpha", refine="guided", workers=1)
    plain = np.asarray(Image.open(tmp_path / "plain/alpha/p.png"))
    guided = np.asarray(Image.open(tmp_path / "guided/alpha/p.png"))
    assert guided.shape == mask.shape
    assert not np.array_equal(plain, guided)
    assert iou(guided, mask) > 0.9


# ---------------------------------------------------------------------------------------------
# Bad inputs, collisions, resume


def test_bad_inputs_are_reported_and_the_rest_done(tmp_path, tiny_model_dir, make_disc_photo):
    photos = tmp_path / "in"
    (photos / "sub").mkdir(parents=True)
    good = ["g1.jpg", "g2.png", "sub/g3.jpg", "a.jpg"]
    for i, rel in enumerate(good + ["a.png"]):
        Image.fromarray(make_disc_photo(30, 40, seed=i)[0]).save(photos / rel)
    jpeg = (photos / "g1.jpg").read_bytes()
    (photos / "zero.jpg").write_bytes(b"")
    (photos / "sub/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (photos / "text.png").write_text("hello, not a png")
    (photos / "bomb.png").write_bytes(png_with_header_size(20_000, 20_000))
    before = tree_digest(photos)
    logged: list[str] = []

    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=2) as ex:
        report = ex.run(photos, tmp_path / "out", outputs="alpha,rgba", workers=2, log=logged.append)

    reasons = {Path(f["path"]).relative_to(photos).as_posix(): f["reason"] for f in report["failures"]}
    assert reasons.keys() == {"zero.jpg", "sub/truncated.jpg", "text.png", "bomb.png", "a.png"}
    assert reasons["zero.jpg"] == "zero bytes"
    assert reasons["sub/truncated.jpg"] == "truncated image"
    assert reasons["text.png"] == "not an image"
    assert "megapixels over --max-pixels 100000000" in reasons["bomb.png"]
    assert reasons["a.png"] == f"output name collides with {photos / 'a.jpg'}"
    assert [f["path"] for f in report["failures"]] == sorted(f["path"] for f in report["failures"])
    assert report["counts"] == {"processed": len(good), "skipped": 0, "failed": 5}
    assert sorted(logged) == sorted(f"{f['path']}: {f['reason']}" for f in report["failures"])
    for rel in good:
        assert out_file(tmp_path / "out", "rgba", rel).is_file()
    with Image.open(tmp_path / "out/alpha/a.png") as im:  # a.jpg kept the name, a.png did not overwrite it
        first_size = im.size
    assert first_size == (40, 30)
    assert temporaries(tmp_path / "out") == []
    assert tree_digest(photos) == before


def test_max_pixels_limit_is_the_option_given(tmp_path, tiny_model_dir, make_disc_photo):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(make_disc_photo(30, 40)[0]).save(photos / "small.png")
    Image.fromarray(make_disc_photo(60, 80)[0]).save(photos / "large.png")
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        report = ex.run(photos, tmp_path / "out", outputs="alpha", max_pixels=40 * 30, workers=1)
    assert report["counts"]["processed"] == 1
    [failure] = report["failures"]
    assert failure["path"] == str(photos / "large.png")
    assert failure["reason"].endswith("over --max-pixels 1200")


def test_collisions_keep_the_first_in_sorted_order(tmp_path, tiny_model_dir):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    names = ["a.JPG", "a.b.jpg", "a.jpg", "a.png", "a-1.jpg", "a.b.png", "b.jpg", "sub/a.jpg", "a.tif"]
    for name in names:
        (root / name).write_bytes(b"x")  # never decoded: planning only
    config = make_config(root, tmp_path / "out", load_model(tiny_model_dir))
    planned = {Path(p.src).relative_to(root).as_posix(): p for p in plan_jobs(config)}
    collided = {rel: p.reason for rel, p in planned.items() if isinstance(p, Failed)}
    assert collided == {
        "a.jpg": f"output name collides with {root / 'a.JPG'}",
        "a.png": f"output name collides with {root / 'a.JPG'}",
        "a.tif": f"output name collides with {root / 'a.JPG'}",
        "a.b.png": f"output name collides with {root / 'a.b.jpg'}",
    }
    assert all(isinstance(planned[n], Job) for n in ("a.JPG", "a.b.jpg", "a-1.jpg", "b.jpg", "sub/a.jpg"))


def test_resume_skips_done_photos_and_overwrite_redoes_them(tmp_path, tiny_model_dir, photo_tree):
    root, expected = photo_tree
    out = tmp_path / "out"
    n = len(expected)
    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=4) as ex:
        assert ex.run(root, out, outputs="alpha,rgba", workers=2)["counts"]["processed"] == n
        first = tree_digest(out / "rgba")
        stamp = (out / "rgba/top.png").stat().st_mtime_ns

        again = ex.run(root, out, outputs="alpha,rgba", workers=2)
        assert again["counts"] == {"processed": 0, "skipped": n, "failed": 0}
        assert (out / "rgba/top.png").stat().st_mtime_ns == stamp  # not rewritten

        (out / "rgba/nested/deeper/rot.png").unlink()  # one output missing: only that photo is redone
        partial = ex.run(root, out, outputs="alpha,rgba", workers=2)
        assert partial["counts"] == {"processed": 1, "skipped": n - 1, "failed": 0}
        assert tree_digest(out / "rgba") == first

        # A new kind makes every photo due again.
        assert ex.run(root, out, outputs="alpha,composite", workers=2)["counts"]["processed"] == n

        redo = ex.run(root, out, outputs="alpha,rgba", overwrite=True, workers=2)
        assert redo["counts"] == {"processed": n, "skipped": 0, "failed": 0}
        assert tree_digest(out / "rgba") == first


def test_every_output_set_shows_the_model_the_same_reduced_decode(tmp_path, tiny_model_dir, make_disc_photo,
                                                                  monkeypatch):
    import hx_infer.run.photos as pipeline

    photos = tmp_path / "in"
    photos.mkdir()
    rgb, mask = make_disc_photo(600, 800, seed=13)
    Image.fromarray(rgb).save(photos / "big.jpg", quality=92)
    reduce_args = []

    def spy(real, position=None):
        def decode(path, *args, **kwargs):
            reduce_args.append(kwargs.get("reduce_to", args[position] if position is not None else None))
            return real(path, *args, **kwargs)
        return decode

    monkeypatch.setattr(pipeline, "decode_photo", spy(pipeline.decode_photo))
    monkeypatch.setattr(pipeline, "read_photo_and_view", spy(pipeline.read_photo_and_view, position=1))
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        ex.run(photos, tmp_path / "reduced", outputs="alpha", workers=1)
        ex.run(photos, tmp_path / "reduced2", outputs="alpha", workers=1)
        ex.run(photos, tmp_path / "full", outputs="alpha,rgba", workers=1)
    assert reduce_args == [64, 64, 64]  # the pixel run decodes at full size too, but shows the model this
    reduced = np.asarray(Image.open(tmp_path / "reduced/alpha/big.png"), np.int16)
    assert reduced.shape == (600, 800) and iou(reduced, mask) > 0.9
    # The same decode path every run: a resumed run, and a run that also writes cutouts, write the same matte.
    matte = (tmp_path / "reduced/alpha/big.png").read_bytes()
    assert (tmp_path / "reduced2/alpha/big.png").read_bytes() == matte == (tmp_path / "full/alpha/big.png").read_bytes()


# ---------------------------------------------------------------------------------------------
# Inputs given as a list, a single file, a glob


def test_list_inputs_keep_paths_below_the_current_folder(tmp_path, tiny_model_dir, make_disc_photo, monkeypatch):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    (here / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    Image.fromarray(make_disc_photo(30, 40)[0]).save(here / "sub/x.jpg")
    Image.fromarray(make_disc_photo(30, 40)[0]).save(elsewhere / "y.png")
    monkeypatch.chdir(here)
    (tmp_path / "out/alpha").mkdir(parents=True)
    Image.fromarray(make_disc_photo(30, 40)[0]).save(tmp_path / "out/alpha/z.png")
    lines = ["sub/x.jpg\n", f"{elsewhere / 'y.png'}\n", "\n", "sub/x.jpg\n", "missing.jpg\n",
             f"{tmp_path / 'out/alpha/z.png'}\n"]
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        report = ex.run(iter(lines), tmp_path / "out", outputs="alpha", workers=1)
    assert (tmp_path / "out/alpha/sub/x.png").is_file()
    assert (tmp_path / "out/alpha/y.png").is_file()
    assert report["input"] == "-"
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 3}
    assert {f["path"]: f["reason"] for f in report["failures"]} == {
        "sub/x.jpg": "listed more than once", "missing.jpg": "cannot read (No such file or directory)",
        str(tmp_path / "out/alpha/z.png"): "inside OUTPUT/alpha; hx never writes over a photo"}


def test_single_file_and_glob(tmp_path, tiny_model_dir, photo_tree):
    root, expected = photo_tree
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        one = ex.run(root / "nested/deeper/rot.jpg", tmp_path / "one", outputs="alpha", workers=1)
        pngs = ex.run(root, tmp_path / "pngs", outputs="alpha", glob="*.PNG", workers=1)
    assert one["counts"]["processed"] == 1
    with Image.open(tmp_path / "one/alpha/rot.png") as im:
        assert im.size == (60, 80)
    done = sorted(p.relative_to(tmp_path / "pngs/alpha").as_posix() for p in (tmp_path / "pngs/alpha").rglob("*.png"))
    assert done == sorted(r for r in expected if r.endswith(".png"))
    assert pngs["counts"]["processed"] == len(done)


# ---------------------------------------------------------------------------------------------
# Options and the array API


def test_bad_options_raise_one_line_config_errors(tmp_path, tiny_model_dir, tiny_rgb_model_dir, photo_tree):
    root, _ = photo_tree
    alpha_model = load_model(tiny_model_dir)
    rgb_model = load_model(tiny_rgb_model_dir)
    earlier = tmp_path / "earlier"  # a previous run's OUTPUT, given as INPUT
    (earlier / "rgba/sub").mkdir(parents=True)
    cases = [
        (dict(inputs=tmp_path / "nope", output_dir=tmp_path / "o", model=alpha_model), "INPUT"),
        (dict(inputs=root, output_dir=root / "out", model=alpha_model), "inside INPUT"),
        (dict(inputs=root, output_dir=root, model=alpha_model), "inside INPUT"),
        (dict(inputs=earlier / "rgba", output_dir=earlier, model=alpha_model), "inside OUTPUT/rgba"),
        (dict(inputs=earlier / "rgba/sub", output_dir=earlier, model=alpha_model), "inside OUTPUT/rgba"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=alpha_model, report=root / "top.jpg"), "--report"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=alpha_model, outputs="alpha,mask"), "--outputs"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=alpha_model, background="mauve"), "--background"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=alpha_model, refine="sharp"), "--refine"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=rgb_model, outputs="rgba"), "--outputs"),
        (dict(inputs=root, output_dir=tmp_path / "o", model=rgb_model, outputs="composite",
              background="black"), "--background"),
    ]
    for kwargs, option in cases:
        where = {name: kwargs[name] for name in ("inputs", "output_dir", "model")}
        options = RunOptions(**{name: value for name, value in kwargs.items() if name not in where})
        with pytest.raises(ConfigError) as e:
            make_config(**where, options=options)
        assert option in str(e.value) and "\n" not in str(e.value), kwargs
    with pytest.raises(ConfigError, match="--batch-size"):
        Extractor(tiny_model_dir, batch_size=0)


def test_rgb_model_writes_the_painted_photo_at_photo_size(tmp_path, tiny_rgb_model_dir, photo_tree):
    root, expected = photo_tree
    with Extractor(tiny_rgb_model_dir, backend="ort", device="cpu") as ex:
        report = ex.run(root, tmp_path / "out", outputs="composite", background="#FFFFFF", workers=2)
    assert report["counts"]["processed"] == len(expected)
    for rel, (size, _) in expected.items():
        with Image.open(out_file(tmp_path / "out", "composite", rel)) as im:
            assert (im.size, im.mode, im.format) == (size, "RGB", "JPEG")
    assert not (tmp_path / "out/alpha").exists()


def test_extractor_alpha_returns_the_photo_size(tiny_model_dir, tiny_rgb_model_dir, make_disc_photo):
    rgb, mask = make_disc_photo(23, 17)
    big, big_mask = make_disc_photo(150, 200, seed=3)
    with Extractor(tiny_model_dir, backend="ort", device="cpu") as ex:
        small = ex.alpha(rgb)
        matte = ex.alpha(big)
        with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
            ex.alpha(rgb.astype(np.float32))
    assert small.shape == (23, 17) and small.dtype == np.uint8
    assert matte.shape == (150, 200) and iou(matte, big_mask) > 0.85
    with Extractor(tiny_rgb_model_dir, backend="ort", device="cpu") as ex, pytest.raises(ConfigError):
        ex.alpha(rgb)


def test_skipped_counts_in_plan(tmp_path, tiny_model_dir, photo_tree):
    """plan_jobs alone (no model run) sees which photos are done."""
    root, expected = photo_tree
    out = tmp_path / "out"
    (out / "alpha").mkdir(parents=True)
    (out / "alpha/top.png").write_bytes(b"done")
    config = make_config(root, out, load_model(tiny_model_dir), RunOptions(outputs="alpha"))
    planned = list(plan_jobs(config))
    assert [p.src for p in planned if isinstance(p, Skipped)] == [root / "top.jpg"]
    assert sum(isinstance(p, Job) for p in planned) == len(expected) - 1
