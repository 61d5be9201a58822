"""hx_infer.remove: each input kind in, the same kind out, and the matte `hx-infer run` writes."""
from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import hx_infer
from hx_infer import Extractor
from hx_infer.api import extractor_for
from hx_infer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


@pytest.fixture
def model(tiny_model_dir):
    return {"model": tiny_model_dir, "backend": "ort", "device": "cpu"}


@pytest.fixture
def photo(tmp_path, make_disc_photo):
    """A JPEG file of a disc scene, its bytes, and what `hx-infer run` writes for it (alpha, rgba)."""
    rgb = make_disc_photo(70, 90, seed=3)[0]
    path = tmp_path / "in" / "p.jpg"
    path.parent.mkdir()
    Image.fromarray(rgb).save(path, quality=92)
    return path


def run_outputs(tmp_path, photo, model, outputs: str, *extra: str) -> dict[str, bytes]:
    out = tmp_path / f"out-{outputs.replace(',', '-')}-{'-'.join(extra)}"
    r = CliRunner().invoke(main, ["run", str(photo), str(out), "--model", str(model["model"]), "--backend", "ort",
                                  "--device", "cpu", "--outputs", outputs, "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return {kind: (out / kind / "p.png").read_bytes() for kind in outputs.split(",")}


def test_bytes_in_png_bytes_out_as_run_writes_them(tmp_path, photo, model):
    data = photo.read_bytes()
    assert hx_infer.remove(data, output="alpha", **model) == run_outputs(tmp_path, photo, model, "alpha")["alpha"]
    both = run_outputs(tmp_path, photo, model, "alpha,rgba")
    assert hx_infer.remove(data, **model) == both["rgba"]  # rgba is the default
    guided = run_outputs(tmp_path, photo, model, "rgba", "--refine", "guided")
    assert hx_infer.remove(bytearray(data), refine="guided", **model) == guided["rgba"]
    jpeg = hx_infer.remove(data, output="composite", background="#00ff00", **model)
    assert jpeg[:3] == b"\xff\xd8\xff" and Image.open(io.BytesIO(jpeg)).size == (90, 70)
    small = hx_infer.remove(data, png_compression="small", **model)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(small))), np.asarray(Image.open(io.BytesIO(both["rgba"]))))


def test_pil_in_pil_out_upright_like_run(tmp_path, photo, model):
    with Image.open(photo) as im:
        im.load()
        rgba = hx_infer.remove(im, **model)
        alpha = hx_infer.remove(im, output="alpha", **model)
        composite = hx_infer.remove(im, output="composite", **model)
    assert (rgba.mode, alpha.mode, composite.mode) == ("RGBA", "L", "RGB")
    assert rgba.size == alpha.size == composite.size == (90, 70)
    ran = np.asarray(Image.open(io.BytesIO(run_outputs(tmp_path, photo, model, "rgba")["rgba"])))
    assert np.array_equal(np.asarray(rgba), ran)
    # A photo the camera held sideways: EXIF orientation 6 turns it upright, as run does.
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = tmp_path / "sideways.jpg"
    Image.open(photo).save(sideways, exif=exif, quality=92)
    with Image.open(sideways) as im:
        assert hx_infer.remove(im, output="alpha", **model).size == (70, 90)


def test_arrays_in_arrays_out(photo, model, make_disc_photo):
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    rgba = hx_infer.remove(rgb, **model)
    assert rgba.shape == (70, 90, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], rgb)  # the photo's own pixels
    alpha = hx_infer.remove(rgb, output="alpha", **model)
    assert alpha.shape == (70, 90) and np.array_equal(rgba[..., 3], alpha)
    assert np.array_equal(alpha, Extractor(**model).alpha(rgb))
    with_alpha = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(hx_infer.remove(with_alpha, output="alpha", **model), alpha)  # its alpha is ignored
    grey = rgb[..., 1].copy()
    assert hx_infer.remove(grey, output="composite", **model).shape == (70, 90, 3)
    assert hx_infer.remove(grey, output="alpha", **model).shape == (70, 90)


def test_bad_inputs_are_one_line_value_errors(model, photo):
    for bad, words in [(np.zeros((4, 4, 3), np.float32), "uint8"), (np.zeros((4, 4, 2), np.uint8), "[H, W"),
                       ("me.jpg", "str"), (np.zeros((4, 4, 3), np.uint8).tolist(), "list"),
                       (np.zeros((0, 5, 3), np.uint8), "empty"), (np.zeros((5, 0), np.uint8), "empty"),
                       (Image.new("RGB", (0, 0)), "empty")]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            hx_infer.remove(bad, **model)
    with pytest.raises(ValueError, match="output="):
        hx_infer.remove(photo.read_bytes(), output="mask", **model)
    with pytest.raises(ValueError, match="--png-compression"):
        hx_infer.remove(photo.read_bytes(), png_compression="tiny", **model)
    from hx_infer.io.images import DecodeError

    with pytest.raises(DecodeError, match="not an image"):
        hx_infer.remove(b"plain text, not a photo", **model)


@pytest.mark.parametrize("quality", [95.5, "90", True, 0, 101, float("nan")])
def test_a_bad_jpeg_quality_is_refused_before_any_inference(model, photo, monkeypatch, quality):
    # OpenCV took 95.5 and True to a multi-line 'Overload resolution failed', "90" to a TypeError,
    # and only after the model had run
    def no_inference(*args, **kwargs):
        raise AssertionError("the model ran before jpeg_quality was checked")

    monkeypatch.setattr(hx_infer.api, "extractor_for", no_inference)
    for call in (lambda: hx_infer.remove(photo.read_bytes(), output="composite", jpeg_quality=quality, **model),
                 lambda: hx_infer.api.cut(photo.read_bytes(), output="composite", file_format="jpeg",
                                          jpeg_quality=quality, **model)):
        with pytest.raises(ValueError, match="--jpeg-quality .*: use a whole number from 1 to 100$"):
            call()


def test_one_extractor_per_model_backend_device(model):
    assert extractor_for(**model) is extractor_for(**model)
    assert extractor_for(model["model"], "ort", "auto") is not extractor_for(**model)


def test_alphas_batches_photos_of_any_size(model, make_disc_photo):
    extractor = Extractor(**model, batch_size=2)
    photos = [make_disc_photo(h, w, seed=i)[0] for i, (h, w) in enumerate([(40, 60), (80, 30), (50, 50)])]
    mattes = extractor.alphas(photos)
    assert [m.shape for m in mattes] == [(40, 60), (80, 30), (50, 50)]
    single = Extractor(**model, batch_size=1)
    for rgb, matte in zip(photos, mattes):
        assert np.array_equal(single.alpha(rgb), matte)  # ORT on the CPU: batch size changes no pixel
    with pytest.raises(ValueError, match="photo 1"):
        extractor.alphas([photos[0], photos[1].astype(np.float32)])


def test_alphas_takes_any_iterable_once(model, make_disc_photo):
    """A generator was iterated twice (checked, then letterboxed): the second pass was empty and
    alphas() returned [] without a word."""
    extractor = Extractor(**model, batch_size=2)
    photos = [make_disc_photo(h, w, seed=i)[0] for i, (h, w) in enumerate([(40, 60), (80, 30), (50, 50)])]
    expected = extractor.alphas(photos)
    for given in ((rgb for rgb in photos), iter(photos), tuple(photos), map(np.asarray, photos)):
        mattes = extractor.alphas(given)
        assert len(mattes) == 3 and all(np.array_equal(a, b) for a, b in zip(mattes, expected))
    with pytest.raises(ValueError, match="photo 1"):
        extractor.alphas(rgb if i != 1 else rgb.astype(np.float32) for i, rgb in enumerate(photos))


def test_background_may_be_a_path_object(tmp_path, photo, model, make_disc_photo):
    """background=pathlib.Path(...) raised AttributeError ('PosixPath' has no strip); other types
    are a one-line ValueError naming the argument."""
    from pathlib import Path

    behind = tmp_path / "behind.png"
    Image.fromarray(make_disc_photo(30, 40, seed=9)[0]).save(behind)
    data = photo.read_bytes()
    by_name = hx_infer.remove(data, output="composite", background=str(behind), **model)

    class Where:  # any os.PathLike, not only pathlib's
        def __fspath__(self):
            return str(behind)

    for path in (Path(behind), Where()):
        assert hx_infer.remove(data, output="composite", background=path, **model) == by_name
    for bad in (None, (0, 255, 0), b"#00ff00", 7):
        with pytest.raises(ValueError, match="background") as info:
            hx_infer.remove(data, output="composite", background=bad, **model)
        assert "\n" not in str(info.value) and type(bad).__name__ in str(info.value)


def test_extractor_run_takes_a_path_object_as_background(tmp_path, photo, model, make_disc_photo):
    """RunOptions parsed background with str methods: Extractor.run(background=Path(...)) raised
    AttributeError."""
    from pathlib import Path

    from hx_infer import Extractor

    behind = tmp_path / "behind.png"
    Image.fromarray(make_disc_photo(30, 40, seed=9)[0]).save(behind)
    with Extractor(**model) as extractor:
        by_path = extractor.run(photo, tmp_path / "a", outputs="composite", background=Path(behind), progress=False)
        by_name = extractor.run(photo, tmp_path / "b", outputs="composite", background=str(behind), progress=False)
        with pytest.raises(ValueError, match="background="):
            extractor.run(photo, tmp_path / "c", outputs="composite", background=7, progress=False)
    assert by_path["counts"] == by_name["counts"] == {"processed": 1, "skipped": 0, "failed": 0}
    made = [next((tmp_path / out / "composite").iterdir()).read_bytes() for out in ("a", "b")]
    assert made[0] == made[1]
