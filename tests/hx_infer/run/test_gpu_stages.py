"""hx_infer.run.device: the device-side stages agree with the numpy path (transforms, compose) on CPU
tensors; the CUDA stream version and nvJPEG decoding run in the gpu-marked tests."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hx_infer import transforms
from hx_infer.engines import local
from hx_infer.run import device as gpu
from hx_infer.backends import BackendSpec
from hx_infer.backends.ort import OrtBackend
from hx_infer.compose import composite, parse_background, rgba_cutout
from hx_infer.io.images import DecodeError, read_photo
from hx_infer.model import load_model_dir

LEVELS = 2  # 2/255: two 8-bit grey levels
S = 64
# odd sizes, wide and tall, smaller and larger than the model, one line high
SIZES = [(97, 131), (300, 71), (31, 47), (64, 64), (1, 200), (241, 160), (20, 64), (130, 520)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


@pytest.fixture(scope="module")
def photos(make_disc_photo) -> list[np.ndarray]:
    """[H, W, 3] uint8 photos: textured background, a hard-edged bright disc."""
    return [make_disc_photo(h, w, seed=i)[0] for i, (h, w) in enumerate(SIZES)]


def chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)


def levels(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max())


def smooth_output(seed: int, channels: int = 1) -> np.ndarray:
    """[C, S, S] float32 in [0, 1], a model-like matte: blobs with soft edges."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 1, (channels, S, S)).astype(np.float32)
    return np.stack([cv2.GaussianBlur(c, (0, 0), 3) for c in noise]) * 3 - 1


# --- pure stages on CPU tensors ---------------------------------------------------------------


def test_letterbox_matches_the_numpy_path(photos):
    x, boxes = gpu.letterbox_batch([chw(p) for p in photos], S)
    assert x.shape == (len(photos), 3, S, S) and x.dtype == torch.float32
    for photo, got, box in zip(photos, x.numpy(), boxes):
        expected, expected_box = transforms.letterbox(photo, S)
        assert box == expected_box  # the same geometry, exactly
        assert np.abs(got - expected).max() * 127.5 <= 1.0 + 1e-4  # within one grey level
        pad = np.ones((S, S), bool)
        pad[box.top:box.top + box.new_h, box.left:box.left + box.new_w] = False
        assert (got[:, pad] == 0.0).all()


def test_letterbox_of_a_reduced_decode_takes_the_full_photos_geometry(photos):
    import cv2

    full = photos[-1]  # 130 x 520
    reduced = cv2.resize(full, (262, 66), interpolation=cv2.INTER_AREA)  # a rounded-up 1/2 decode
    out = torch.empty(3, S, S)
    box = gpu.letterbox_into(chw(reduced), S, out, src_size=(520, 130))
    expected, expected_box = transforms.letterbox(reduced, S, src_size=(520, 130))
    assert box == expected_box and (box.src_w, box.src_h) == (520, 130)
    assert np.abs(out.numpy() - expected).max() * 127.5 <= 1.0 + 1e-4


def test_strided_input_is_resized_like_a_contiguous_one(photos):
    photo = photos[0]
    wide = np.zeros((photo.shape[0], photo.shape[1] * 2, 3), np.uint8)
    wide[:, ::2] = photo
    strided = torch.from_numpy(wide)[:, ::2].permute(2, 0, 1)  # what a device upload view looks like
    assert torch.equal(gpu.resize_uint8(strided, 40, 50), gpu.resize_uint8(chw(photo), 40, 50))


@pytest.mark.parametrize("channels", [1, 3])
def test_unletterbox_and_uint8_match_the_numpy_path(photos, channels):
    for i, photo in enumerate(photos):
        _, box = transforms.letterbox(photo, S)
        out = smooth_output(i, channels)
        expected = transforms.unletterbox(out, box)  # [H, W] or [H, W, 3]
        got = gpu.unletterbox(torch.from_numpy(out), box)  # [C, H, W]
        assert tuple(got.shape) == (channels, photo.shape[0], photo.shape[1])
        got_hwc = got.permute(1, 2, 0).numpy()
        assert np.abs(got_hwc.reshape(expected.shape) - expected).max() <= 1e-5
        assert levels(gpu.to_uint8(got).permute(1, 2, 0).numpy().reshape(expected.shape),
                      transforms.to_uint8(expected)) <= 1


def test_to_uint8_rounds_and_clips_as_the_numpy_path():
    x = np.array([-1.0, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 2.0, np.nan, np.inf, -np.inf], np.float32)
    np.testing.assert_array_equal(gpu.to_uint8(torch.from_numpy(x)).numpy(), transforms.to_uint8(x))


@pytest.mark.parametrize("background", ["white", "#1e90ff", "image"])
def test_composite_and_rgba_match_compose(photos, make_disc_photo, tmp_path, background):
    if background == "image":
        Image.fromarray(make_disc_photo(50, 70, seed=9)[0]).save(tmp_path / "bg.png")
        background = str(tmp_path / "bg.png")
    bg = parse_background(background)
    for i, photo in enumerate(photos):
        h, w = photo.shape[:2]
        alpha = np.random.default_rng(i).integers(0, 256, (h, w), dtype=np.uint8)
        alpha[0, 0], alpha[-1, -1] = 0, 255
        stages = gpu.DeviceBatches(None, S, "alpha", ("composite",), bg, "cpu")
        got = gpu.composite(torch.from_numpy(photo), torch.from_numpy(alpha), stages.background_pixels(h, w)).numpy()
        assert levels(got, composite(photo, alpha, bg)) <= 1
        np.testing.assert_array_equal(gpu.rgba(torch.from_numpy(photo), torch.from_numpy(alpha)).numpy(),
                                      rgba_cutout(photo, alpha))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_a_stored_image_upright_as_pillow_does(orientation):
    from hx_infer.io.images import _UPRIGHT

    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    method = _UPRIGHT.get(orientation)
    expected = np.asarray(Image.fromarray(stored).transpose(method)) if method is not None else stored
    got = gpu.orient(chw(stored), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def _jpeg(rgb: np.ndarray, orientation: int = 1, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(rgb).convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_gpu_decodable_reads_the_header_and_leaves_the_unusual_to_the_cpu(photos):
    photo = photos[0]  # 97 x 131
    header = gpu.gpu_decodable(_jpeg(photo, orientation=6), 10**8)
    assert header == gpu.JpegHeader(width=131, height=97, orientation=6)
    assert gpu.gpu_decodable(_jpeg(photo, mode="L"), 10**8) is not None
    assert gpu.gpu_decodable(_jpeg(photo, mode="CMYK"), 10**8) is None
    assert gpu.gpu_decodable(_jpeg(photo)[:-200], 10**8) is None  # cut short: the CPU reports it
    assert gpu.gpu_decodable(_jpeg(photo) + b"trailing", 10**8) is None
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    assert gpu.gpu_decodable(png.getvalue(), 10**8) is None
    with pytest.raises(DecodeError, match="max-pixels"):
        gpu.gpu_decodable(_jpeg(photo), 1000)
    with pytest.raises(DecodeError):
        gpu.gpu_decodable(b"not a photo", 10**8)


def test_a_refused_gpu_batch_falls_back_to_cpu_decoding(photos, monkeypatch):
    """nvJPEG fails a whole batch for one bad file: each photo is then decoded on the CPU,
    which decodes the good ones and names what is wrong with the bad one."""
    def refuse(*args, **kwargs):
        raise RuntimeError("nvjpeg: bad data")

    monkeypatch.setattr(gpu, "decode_jpegs", refuse)
    good = _jpeg(photos[0], orientation=8)
    table = good.index(b"\xff\xdb")  # drop the quantisation table: a header that reads, pixels that do not
    bad = good[:table] + good[table + 2 + int.from_bytes(good[table + 2:table + 4], "big"):]
    stages = gpu.DeviceBatches(lambda x: x, S, "alpha", ("alpha",), parse_background("white"), "cpu")
    batch = [gpu.HostPhoto((97, 131), jpeg=good, header=gpu.gpu_decodable(good, 10**8)),
             gpu.HostPhoto((131, 97), jpeg=bad, header=gpu.gpu_decodable(bad, 10**8))]
    images, x, boxes = stages._prepare(batch)
    assert isinstance(images[0], torch.Tensor) and tuple(images[0].shape) == (3, 131, 97)
    np.testing.assert_array_equal(images[0].permute(1, 2, 0).numpy(), read_photo(Path("x.jpg"), data=good))
    assert isinstance(images[1], DecodeError)
    assert x.shape == (1, 3, S, S) and len(boxes) == 1


# --- the whole device path with a real backend, on the CPU ------------------------------------


class _Recording:
    """A backend wrapper that checks it is handed torch tensors, as CUDA backends are."""

    def __init__(self, backend):
        self.backend, self.device, self.calls = backend, backend.device, 0

    def infer(self, x):
        assert isinstance(x, torch.Tensor)
        self.calls += 1
        return self.backend.infer(x)


def _numpy_path(backend, photo, kinds, background):
    x, box = transforms.letterbox(photo, S)
    alpha = transforms.to_uint8(transforms.unletterbox(backend.infer(x[None])[0], box))
    made = {"alpha": alpha, "rgba": rgba_cutout(photo, alpha), "composite": composite(photo, alpha, background)}
    return {k: made[k] for k in kinds}


def test_device_stages_match_the_numpy_path(photos, tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    kinds = ("alpha", "rgba", "composite")
    background = parse_background("#808080")
    with OrtBackend(model, BackendSpec(device="cpu", threads=1)) as backend:
        recording = _Recording(backend)
        stages = gpu.DeviceBatches(recording, model.size, model.target, kinds, background, "cpu")
        batch = [gpu.HostPhoto((p.shape[1], p.shape[0]), rgb=p) for p in photos]
        results = stages.submit(batch[:5]).result() + stages.submit(batch[5:]).result()
        expected = [_numpy_path(backend, p, kinds, background) for p in photos]
    assert recording.calls == 2
    for got, want in zip(results, expected):
        assert got.keys() == want.keys()
        for kind in kinds:
            assert got[kind].shape == want[kind].shape and got[kind].dtype == np.uint8
            assert levels(got[kind], want[kind]) <= LEVELS, kind


def test_rgb_target_paints_the_composite(photos, tiny_rgb_model_dir):
    model = load_model_dir(tiny_rgb_model_dir)
    with OrtBackend(model, BackendSpec(device="cpu", threads=1)) as backend:
        stages = gpu.DeviceBatches(backend, model.size, "rgb", ("composite",), parse_background("white"), "cpu")
        [got] = stages.submit([gpu.HostPhoto((131, 97), rgb=photos[0])]).result()
        x, box = transforms.letterbox(photos[0], S)
        expected = transforms.to_uint8(transforms.unletterbox(backend.infer(x[None])[0], box))
    assert got.keys() == {"composite"} and levels(got["composite"], expected) <= LEVELS


def _tree(root: Path, photos) -> Path:
    (root / "sub").mkdir(parents=True)
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(root / ("sub" if i % 2 else "") / f"p{i}.png")
    Image.fromarray(photos[1]).save(root / "rotated.jpg", quality=95, exif=_exif(6))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("outputs", ["alpha", "alpha,rgba,composite"])
def test_pipeline_on_device_writes_what_the_numpy_path_writes(photos, tiny_model_dir, tmp_path, monkeypatch,
                                                              outputs):
    """The local engine with its device stages forced on for a CPU backend: same files, same report."""
    from hx_infer import Extractor

    tree = _tree(tmp_path / "photos", photos)
    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=3) as ex:
        cpu = ex.run(tree, tmp_path / "cpu", outputs=outputs, progress=False)
        monkeypatch.setattr(local, "choose_stages",
                            lambda config, backend, model: gpu.DeviceStages(config, _Recording(backend), model))
        dev = ex.run(tree, tmp_path / "dev", outputs=outputs, progress=False)
    assert dev["counts"] == cpu["counts"] == {"processed": len(photos) + 1, "skipped": 0, "failed": 1}
    assert [f["reason"] for f in dev["failures"]] == [f["reason"] for f in cpu["failures"]]
    written = sorted(p.relative_to(tmp_path / "cpu") for p in (tmp_path / "cpu").rglob("*.*")
                     if p.suffix in (".png", ".jpg"))
    assert len(written) == (len(photos) + 1) * len(outputs.split(","))
    for rel in written:
        a = np.asarray(Image.open(tmp_path / "cpu" / rel))
        b = np.asarray(Image.open(tmp_path / "dev" / rel))
        assert a.shape == b.shape, rel
        # PNGs within two levels; JPEG re-encoding of nearly equal pixels adds a little more
        assert levels(a, b) <= (LEVELS if rel.suffix == ".png" else 8), rel


@pytest.mark.parametrize("outputs", ["alpha", "alpha,rgba"])
def test_device_stages_list_stray_bytes_before_a_jpegs_end_as_a_warning(photos, tiny_model_dir, tmp_path,
                                                                        monkeypatch, outputs):
    """The CPU decodes of the device stages name what libjpeg let through, as the numpy path does."""
    from hx_infer import Extractor

    tree = tmp_path / "photos"
    tree.mkdir()
    buf = io.BytesIO()
    Image.fromarray(photos[0]).save(buf, "JPEG", quality=90)
    (tree / "clean.jpg").write_bytes(buf.getvalue())
    (tree / "padded.jpg").write_bytes(buf.getvalue()[:-2] + b"\x00" * 12 + b"\xff\xd9")
    monkeypatch.setattr(local, "choose_stages", lambda config, backend, model: gpu.DeviceStages(config, backend, model))
    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=3) as ex:
        report = ex.run(tree, tmp_path / "dev", outputs=outputs, progress=False)
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 0}
    assert [w["path"] for w in report["warnings"]] == [str(tree / "padded.jpg")]
    assert "stray bytes before the JPEG end marker" in report["warnings"][0]["reason"]


# --- CUDA -------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_streams_give_the_cpu_results(photos, tiny_model_dir):
    from hx_infer.backends.torch import TorchBackend

    model = load_model_dir(tiny_model_dir)
    kinds = ("alpha", "rgba", "composite")
    background = parse_background("white")
    with TorchBackend(model, BackendSpec(device="cuda", precision="fp32")) as backend:
        stages = gpu.DeviceBatches(backend, model.size, model.target, kinds, background, "cuda")
        batch = [gpu.HostPhoto((p.shape[1], p.shape[0]), rgb=p) for p in photos]
        # two batches in flight at once: the second uploads while the first is inferred
        first, second = stages.submit(batch[:4]), stages.submit(batch[4:])
        results = first.result() + second.result()
        # the same backend through the numpy stages: only the pixel stages differ
        expected = [_numpy_path(backend, p, kinds, background) for p in photos]
    for got, want in zip(results, expected):
        for kind in kinds:
            assert levels(got[kind], want[kind]) <= LEVELS, kind


@pytest.mark.gpu
def test_nvjpeg_decode_matches_pillow(photos):
    if gpu.gpu_jpeg_decoder() is None:
        pytest.skip("torchvision is not importable")
    datas = [_jpeg(p, orientation=o) for p, o in zip(photos[:4], (1, 3, 6, 8))]
    headers = [gpu.gpu_decodable(d, 10**8) for d in datas]
    decoded = gpu.decode_jpegs(datas, headers, torch.device("cuda"))
    for image, data in zip(decoded, datas):
        expected = read_photo(Path("x.jpg"), data=data)
        got = image.permute(1, 2, 0).cpu().numpy()
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected).mean() < 2  # decoders differ in IDCT and upsampling


@pytest.mark.gpu
def test_pipeline_on_cuda_writes_what_the_cpu_writes(photos, tiny_model_dir, tmp_path):
    from hx_infer import Extractor

    tree = _tree(tmp_path / "photos", photos)
    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=3) as ex:
        cpu = ex.run(tree, tmp_path / "cpu", outputs="alpha,rgba", progress=False)
    with Extractor(tiny_model_dir, backend="torch", device="cuda", batch_size=3) as ex:
        dev = ex.run(tree, tmp_path / "dev", outputs="alpha,rgba", progress=False)
    assert dev["counts"] == cpu["counts"]
    for path in (tmp_path / "cpu").rglob("*.png"):
        rel = path.relative_to(tmp_path / "cpu")
        # fp16 inference and nvJPEG move a few edge pixels more than the CPU comparison allows
        diff = np.abs(np.asarray(Image.open(path), np.int32) - np.asarray(Image.open(tmp_path / "dev" / rel), np.int32))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, rel
