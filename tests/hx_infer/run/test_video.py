"""Videos through `hx-infer run`: frame-accurate round trips for each output kind (odd sizes, audio),
alpha in the rgba outputs, resume per whole video, bad videos reported, temporal smoothing and
its flicker measure, and the shared vtest.avi end to end.

Clips are made here with PyAV: 12-16 frames of about 64 x 48, a bright disc (the "person" the
tiny test model was fitted to) moving across a dark, noisy background.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hx_infer import Extractor
from hx_infer.cli import main
from hx_infer.io.images import clean_temporaries
from hx_infer.io.video import PYAV_MISSING, VIDEO_EXTENSIONS, is_video_name
from hx_infer.temporal import FlickerMeter, SceneCuts, TemporalSmoother, thumbnail
from hx_infer.run.options import VideoOptions
from shared_data import SHARED_DATA
from video_clips import AUDIO_RATE, RATE, disc_frames, write_clip

HAVE_AV = importlib.util.find_spec("av") is not None
needs_av = pytest.mark.skipif(not HAVE_AV, reason="PyAV (the video extra) is not installed")
VTEST = SHARED_DATA / "video" / "vtest.avi"


# ---------------------------------------------------------------------------------------------
# Clips


def decode(path: Path, fmt: str = "rgb24", decoder: str | None = None) -> dict:
    """Every frame of a video as arrays, with its stream facts."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        facts = {"rate": stream.average_rate, "time_base": stream.time_base, "width": stream.width,
                 "height": stream.height,
                 "audio": [(s.codec_context.name, s.sample_rate) for s in container.streams.audio]}
        if decoder is None:
            decoded = list(container.decode(stream))
        else:  # e.g. libvpx-vp9, the decoder that reads WebM's alpha plane
            context = av.CodecContext.create(decoder, "r")
            context.extradata = stream.codec_context.extradata
            decoded = [f for packet in container.demux(stream) for f in context.decode(packet if packet.size else None)]
        facts["pix_fmt"] = decoded[0].format.name
        facts["rotation"] = decoded[0].rotation
        facts["pts"] = [float(f.pts * f.time_base) for f in decoded]
        facts["frames"] = np.stack([f.to_ndarray(format=fmt) for f in decoded])
    return facts


def run_api(model_dir: Path, source, out: Path, **options):
    logged: list[str] = []
    video = options.pop("video", VideoOptions())
    with Extractor(model_dir, backend="ort", batch_size=options.pop("batch_size", 4)) as ex:
        report = ex.run(source, out, progress=False, log=logged.append, workers=1, video=video, **options)
    return report, logged


def hx(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# Round trips


@needs_av
@pytest.mark.parametrize("width,height,audio", [(64, 48, None), (65, 47, "aac"), (64, 48, "pcm_s16le")])
def test_every_output_keeps_frames_rate_size_and_audio(tmp_path, tiny_model_dir, width, height, audio):
    n = 14
    frames, centres = disc_frames(n, width, height)
    clip = write_clip(tmp_path / "in" / ("clip.avi" if audio == "pcm_s16le" else "clip.mp4"), frames, audio=audio)
    source = decode(clip)
    report, logged = run_api(tiny_model_dir, tmp_path / "in", tmp_path / "out", outputs="alpha,rgba,composite")
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 0}, report["failures"]
    pcm = audio == "pcm_s16le"  # mov holds PCM, mp4 not (AUDIO_CODECS)
    assert report["frames"] == n
    assert logged == ([f"{clip}: {kind}: .mp4 cannot hold pcm_s16le audio; written without it"
                       for kind in ("alpha", "composite")] if pcm else [])

    outputs = {"alpha": "alpha/clip.mp4", "rgba": "rgba/clip.mov", "composite": "composite/clip.mp4"}
    for kind, rel in outputs.items():
        got = decode(tmp_path / "out" / rel, fmt="rgba" if kind == "rgba" else "rgb24")
        assert len(got["frames"]) == n, kind
        assert got["pts"] == pytest.approx(source["pts"]), kind
        assert (got["width"], got["height"], got["rate"]) == (width, height, RATE), kind
        assert got["time_base"] == source["time_base"], kind  # mp4 and mov keep the input's
        kept = audio and not (pcm and rel.endswith(".mp4"))
        assert [name for name, _ in got["audio"]] == ([audio] if kept else []), kind

    alpha = decode(tmp_path / "out" / outputs["alpha"], fmt="gray")["frames"]  # [n, H, W]
    rgba = decode(tmp_path / "out" / outputs["rgba"], fmt="rgba")["frames"]
    # The cutout's alpha is the matte, and the matte follows the disc frame by frame.
    assert np.abs(rgba[..., 3].astype(int) - alpha).mean() < 3
    assert rgba[..., 3].max() > 200 and rgba[..., 3].min() < 30
    xs = np.arange(width)
    matte_x = [(a.astype(float).sum(0) * xs).sum() / max(a.astype(float).sum(), 1) for a in alpha]
    assert np.abs(np.array(matte_x) - centres).max() < 0.1 * width


@needs_av
def test_lossless_matte_is_the_per_frame_matte(tmp_path, tiny_model_dir):
    """FFV1 keeps every level: the matte video equals Extractor.alpha on each decoded frame."""
    frames, _ = disc_frames(12, 65, 47, seed=1)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,composite",
                        video=VideoOptions(lossless=True), batch_size=5)
    assert report["counts"]["processed"] == 1
    got = decode(tmp_path / "out/alpha/clip.mkv", fmt="gray")
    source = decode(clip)["frames"]
    with Extractor(tiny_model_dir, backend="ort") as ex:
        expected = np.stack([ex.alpha(rgb) for rgb in source])
    assert got["pix_fmt"] == "gray"
    np.testing.assert_array_equal(got["frames"], expected)
    assert len(decode(tmp_path / "out/composite/clip.mkv")["frames"]) == 12


@needs_av
def test_vp9_webm_and_png_frames_carry_alpha(tmp_path, tiny_model_dir):
    frames, _ = disc_frames(12, 65, 47)
    clip = write_clip(tmp_path / "clip.mp4", frames, audio="aac")
    report, logged = run_api(tiny_model_dir, clip, tmp_path / "webm", outputs="alpha,rgba", refine="guided",
                             video=VideoOptions(rgba="vp9"))
    assert report["counts"]["processed"] == 1
    assert logged == [f"{clip}: rgba: .webm cannot hold aac audio; written without it"]
    webm = decode(tmp_path / "webm/rgba/clip.webm", fmt="rgba", decoder="libvpx-vp9")
    alpha = decode(tmp_path / "webm/alpha/clip.mp4", fmt="gray")["frames"]
    assert webm["pix_fmt"] == "yuva420p" and len(webm["frames"]) == 12
    assert webm["frames"].shape[1:] == (47, 65, 4)
    assert np.abs(webm["frames"][..., 3].astype(int) - alpha).mean() < 6

    report, _ = run_api(tiny_model_dir, clip, tmp_path / "png", outputs="rgba", refine="guided",
                        video=VideoOptions(rgba="png"))
    folder = tmp_path / "png/rgba/clip"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{i:06d}.png" for i in range(12)]
    with Image.open(folder / "000005.png") as im:
        assert im.mode == "RGBA" and im.size == (65, 47)
        assert np.abs(np.asarray(im)[..., 3].astype(int) - alpha[5]).mean() < 3


@needs_av
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs (and Linux's affinity) to vary the encoders' threads")
@pytest.mark.parametrize("video", [VideoOptions(), VideoOptions(lossless=True, rgba="vp9")],
                         ids=["mp4-mov", "mkv-webm"])
def test_the_same_run_writes_the_same_video_bytes_on_any_number_of_cpus(tmp_path, tiny_model_dir, video):
    """No random Matroska/WebM UIDs; x264's and libvpx's threads do not follow the CPUs the run
    may use; and x264's AVX-512 path, whose macroblock tree changed a composite with what else
    ran (here: one CPU for everything), is not taken: a rerun, on one CPU or on all, gives the
    same files."""
    frames, _ = disc_frames(12, 96, 64)
    clip = write_clip(tmp_path / "clip.mp4", frames, audio="libopus" if video.lossless else "aac")
    cpus = os.sched_getaffinity(0)
    written = []
    for out, allowed in [("a", cpus), ("b", cpus), ("c", {min(cpus)})]:
        os.sched_setaffinity(0, allowed)  # this thread's; the run's threads inherit it
        try:
            report, _ = run_api(tiny_model_dir, clip, tmp_path / out, outputs="alpha,rgba,composite",
                                video=video)
        finally:
            os.sched_setaffinity(0, cpus)
        assert report["counts"]["processed"] == 1, report["failures"]
        written.append({p.relative_to(tmp_path / out): p.read_bytes()
                        for p in sorted((tmp_path / out).glob("*/clip.*"))})
    assert len(written[0]) == 3
    for other in written[1:]:
        assert other.keys() == written[0].keys()
        for name in written[0]:
            assert other[name] == written[0][name], name


@needs_av
def test_audio_goes_only_into_outputs_whose_container_takes_its_codec(tmp_path, tiny_model_dir):
    """PCM from an AVI (no channel layout stored) is refused by the mp4 muxer only when it writes
    the trailer, Opus and FLAC by the mov muxer at its header: each output that cannot hold the
    codec is written without audio and says so, and every video of the run is processed."""
    src = tmp_path / "in"
    frames, _ = disc_frames(10, 64, 48)
    write_clip(src / "cam.avi", frames, audio="pcm_s16le", layout="stereo")
    write_clip(src / "opus.mkv", frames, audio="libopus", layout="stereo")
    write_clip(src / "flac.mkv", frames, audio="flac")
    report, logged = run_api(tiny_model_dir, src, tmp_path / "out", outputs="alpha,rgba,composite")
    assert report["counts"] == {"processed": 3, "skipped": 0, "failed": 0}, report["failures"]
    expected = {"cam": {"alpha/cam.mp4": [], "rgba/cam.mov": ["pcm_s16le"], "composite/cam.mp4": []},
                "opus": {"alpha/opus.mp4": ["opus"], "rgba/opus.mov": [], "composite/opus.mp4": ["opus"]},
                "flac": {"alpha/flac.mp4": ["flac"], "rgba/flac.mov": [], "composite/flac.mp4": ["flac"]}}
    for outputs in expected.values():
        for rel, audio in outputs.items():
            got = decode(tmp_path / "out" / rel)
            assert [name for name, _ in got["audio"]] == audio, rel
            assert len(got["frames"]) == 10, rel
    assert sorted(logged) == sorted([
        f"{src / 'cam.avi'}: alpha: .mp4 cannot hold pcm_s16le audio; written without it",
        f"{src / 'cam.avi'}: composite: .mp4 cannot hold pcm_s16le audio; written without it",
        f"{src / 'opus.mkv'}: rgba: .mov cannot hold opus audio; written without it",
        f"{src / 'flac.mkv'}: rgba: .mov cannot hold flac audio; written without it"])


def audio_packets(path: Path) -> list[tuple[float, float, int]]:
    """(start s, duration s, size) of each audio packet, in the file's order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(float(p.pts * stream.time_base), float(p.duration * stream.time_base), p.size)
                for p in container.demux(stream) if p.size]


@needs_av
@pytest.mark.parametrize("name,audio", [("cam.avi", "pcm_s16le"), ("voice.mp4", "libopus")])
def test_audio_copied_into_matroska_and_webm_keeps_its_timing(tmp_path, tiny_model_dir, name, audio):
    """Matroska counts in milliseconds: each copied packet is re-timed from the input's time base
    (1/16000 here), not read as milliseconds (which made 1.2 s of sound last 19 s)."""
    frames, _ = disc_frames(12, 64, 48)
    clip = write_clip(tmp_path / "in" / name, frames, audio=audio)
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,rgba,composite",
                        video=VideoOptions(lossless=True, rgba="vp9"))
    assert report["counts"]["processed"] == 1, report["failures"]
    source = audio_packets(clip)
    outputs = ["alpha/cam.mkv", "composite/cam.mkv"] if audio == "pcm_s16le" else \
        ["alpha/voice.mkv", "composite/voice.mkv", "rgba/voice.webm"]
    for rel in outputs:
        got = audio_packets(tmp_path / "out" / rel)
        assert [size for *_, size in got] == [size for *_, size in source], rel
        np.testing.assert_allclose([t for t, _, _ in got], [t for t, _, _ in source], atol=0.001, err_msg=rel)
        np.testing.assert_allclose([d for _, d, _ in got], [d for _, d, _ in source], atol=0.001, err_msg=rel)


@needs_av
def test_an_ffmpeg_error_while_writing_fails_that_video_only(tmp_path, tiny_model_dir, monkeypatch):
    """Whatever the muxer refuses (here: let the PCM through to mp4, whose trailer then fails) is
    one line in the report for that video; the run goes on to the next."""
    from hx_infer.io import video as video_io

    monkeypatch.setitem(video_io.AUDIO_CODECS, "mp4", video_io.AUDIO_CODECS["mp4"] | {"pcm_s16le"})
    src = tmp_path / "in"
    frames, _ = disc_frames(10, 64, 48)
    write_clip(src / "a_cam.avi", frames, audio="pcm_s16le", layout="stereo")
    write_clip(src / "b_later.mp4", frames)
    out = tmp_path / "out"
    result = hx("run", src, out, "--model", tiny_model_dir, "--backend", "ort", "--outputs", "alpha", "--quiet")
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    report = json.loads((out / "hx-report.json").read_text())
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 1}
    assert report["failures"] == [{"path": str(src / "a_cam.avi"),
                                   "reason": f"cannot write {out / 'alpha' / 'a_cam.mp4'}: Invalid argument"}]
    assert sorted(p.name for p in (out / "alpha").iterdir()) == ["b_later.mp4"]


@needs_av
def test_rotated_video_is_matted_upright_and_keeps_its_rotation(tmp_path, tiny_model_dir):
    upright, _ = disc_frames(10, 48, 64, seed=2)  # portrait: [n, 64, 48, 3]
    stored = np.ascontiguousarray(np.rot90(upright, 1, axes=(1, 2)))  # landscape [n, 48, 64, 3], shown turned -90
    clip = write_clip(tmp_path / "clip.mp4", stored, rotation=-90)
    run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha", video=VideoOptions(lossless=True))
    got = decode(tmp_path / "out/alpha/clip.mkv", fmt="gray")
    source = decode(clip)["frames"]
    assert got["rotation"] == -90 and got["frames"].shape[1:] == source.shape[1:3]
    with Extractor(tiny_model_dir, backend="ort") as ex:
        expected = np.stack([np.rot90(ex.alpha(np.ascontiguousarray(np.rot90(rgb, -1))), 1) for rgb in source])
    np.testing.assert_array_equal(got["frames"], expected)


def _rotated_clip(path: Path, n: int = 8) -> tuple[Path, np.ndarray]:
    """A phone video: stored landscape [n, 48, 64, 3], shown turned 90 degrees counter-clockwise
    as the portrait [n, 64, 48, 3] it returns."""
    upright, _ = disc_frames(n, 48, 64, seed=4)
    stored = np.ascontiguousarray(np.rot90(upright, -1, axes=(1, 2)))
    return write_clip(path, stored, rotation=90), upright


@needs_av
def test_png_frames_of_a_rotated_video_are_upright(tmp_path, tiny_model_dir):
    """A PNG has no display rotation to carry: its frames are turned as the player shows the video."""
    clip, _ = _rotated_clip(tmp_path / "clip.mp4")
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,rgba",
                        video=VideoOptions(lossless=True, rgba="png"))
    assert report["counts"]["processed"] == 1, report["failures"]
    matte = decode(tmp_path / "out/alpha/clip.mkv", fmt="gray")
    assert matte["rotation"] == 90
    shown = np.rot90(matte["frames"], 1, axes=(1, 2))  # [n, 64, 48], as a player shows the matte
    for i in (0, 7):
        with Image.open(tmp_path / f"out/rgba/clip/{i:06d}.png") as im:
            assert im.size == (48, 64)
            np.testing.assert_array_equal(np.asarray(im)[..., 3], shown[i])


@needs_av
def test_composite_of_a_rotated_video_shows_its_image_background_upright(tmp_path, tiny_model_dir):
    clip, _ = _rotated_clip(tmp_path / "clip.mp4")
    top, bottom = (200, 30, 30), (30, 30, 200)
    image = np.zeros((60, 40, 3), np.uint8)  # portrait, like the video as shown
    image[:30], image[30:] = top, bottom
    Image.fromarray(image).save(tmp_path / "bg.png")
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,composite",
                        background=str(tmp_path / "bg.png"), video=VideoOptions(lossless=True))
    assert report["counts"]["processed"] == 1, report["failures"]
    shown = np.rot90(decode(tmp_path / "out/composite/clip.mkv")["frames"], 1, axes=(1, 2))  # [n, 64, 48, 3]
    clear = np.rot90(decode(tmp_path / "out/alpha/clip.mkv", fmt="gray")["frames"], 1, axes=(1, 2)) < 8
    for half, colour in ((np.s_[:, :28], top), (np.s_[:, 36:], bottom)):
        pixels = shown[half][clear[half]]
        assert len(pixels) > 200
        assert np.abs(pixels.astype(int) - colour).mean() < 12, colour


@needs_av
def test_composite_on_a_looped_video_background(tmp_path, tiny_model_dir):
    frames, _ = disc_frames(12, 64, 48)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    background = write_clip(tmp_path / "bg.mp4", np.stack([np.full((24, 32, 3), c, np.uint8) for c in colours]))
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,composite", background=str(background),
                        video=VideoOptions(lossless=True))
    assert report["counts"]["processed"] == 1
    out = decode(tmp_path / "out/composite/clip.mkv")["frames"]
    alpha = decode(tmp_path / "out/alpha/clip.mkv", fmt="gray")["frames"]
    for i in range(12):
        clear = alpha[i] < 8  # background shows through
        assert clear.sum() > 100
        assert np.abs(out[i][clear].astype(int) - colours[i % 3]).mean() < 12, i


@needs_av
def test_rgb_target_model_writes_a_composite_video(tmp_path, tiny_rgb_model_dir):
    frames, _ = disc_frames(10, 64, 48)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    report, _ = run_api(tiny_rgb_model_dir, clip, tmp_path / "out", outputs="composite")
    assert report["counts"]["processed"] == 1
    assert decode(tmp_path / "out/composite/clip.mp4")["frames"].shape == (10, 48, 64, 3)


# ---------------------------------------------------------------------------------------------
# Folders, resume, failures


@needs_av
def test_videos_next_to_photos_resume_per_whole_video(tmp_path, tiny_model_dir, make_disc_photo):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    frames, _ = disc_frames(10, 64, 48)
    write_clip(src / "a.mp4", frames)
    write_clip(src / "sub" / "B.MOV", frames[:8])
    Image.fromarray(make_disc_photo(30, 40)[0]).save(src / "a.jpg")  # a.jpg and a.mp4: no collision
    out = tmp_path / "out"
    report, _ = run_api(tiny_model_dir, src, out, outputs="alpha")
    assert report["counts"] == {"processed": 3, "skipped": 0, "failed": 0}
    assert report["frames"] == 18
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.*")
            if p.name not in ("hx-report.json", "hx-manifest.json", "hx-index.sqlite")} == {
        "alpha/a.png", "alpha/a.mp4", "alpha/sub/B.mp4"}

    again, _ = run_api(tiny_model_dir, src, out, outputs="alpha")
    assert again["counts"] == {"processed": 0, "skipped": 3, "failed": 0} and again["frames"] == 0

    # What a killed run leaves: no final file, a temporary file and a temporary frame folder.
    (out / "alpha/sub/B.mp4").unlink()
    (out / "alpha/sub/.B.mp4.0123456789ab.hx-tmp").write_bytes(b"half a video")
    (out / "rgba").mkdir()
    (out / "rgba/.a.0123456789ab.hx-tmp").mkdir()
    (out / "rgba/.a.0123456789ab.hx-tmp/000000.png").write_bytes(b"x")
    redo, _ = run_api(tiny_model_dir, src, out, outputs="alpha")
    assert redo["counts"] == {"processed": 1, "skipped": 2, "failed": 0} and redo["frames"] == 8
    assert not [p for p in out.rglob("*") if ".hx-tmp" in p.name]
    assert len(decode(out / "alpha/sub/B.mp4")["frames"]) == 8


@needs_av
def test_a_video_whose_damage_ffmpeg_conceals_is_failed(tmp_path, tiny_model_dir):
    """64 stray bytes in the middle of an H.264 stream: FFmpeg decodes every frame, copying
    neighbours over the lost slice, and only flags the frame; its matte would be of made-up pixels."""
    frames, _ = disc_frames(30, 64, 48)
    good, bad = write_clip(tmp_path / "in" / "good.mp4", frames), write_clip(tmp_path / "in" / "bad.mp4", frames)
    data = bytearray(bad.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    report, logged = run_api(tiny_model_dir, tmp_path / "in", tmp_path / "out", outputs="alpha")
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 1}, report
    [failure] = report["failures"]
    assert failure["path"] == str(bad) and "decoded with errors" in failure["reason"], failure
    assert sorted(p.name for p in (tmp_path / "out" / "alpha").iterdir()) == [good.name]


@needs_av
def test_a_failed_or_interrupted_video_leaves_no_output(tmp_path, tiny_model_dir, monkeypatch):
    from hx_infer.io import video as video_io

    clip = write_clip(tmp_path / "clip.mp4", disc_frames(12, 64, 48)[0])
    calls = {"n": 0}
    real_write = video_io.ContainerWriter.write

    def write_then_fill_the_disk(self, image, pts):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        real_write(self, image, pts)

    monkeypatch.setattr(video_io.ContainerWriter, "write", write_then_fill_the_disk)
    report, logged = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha,rgba")
    assert report["counts"]["failed"] == 1
    reason = f"cannot write {tmp_path / 'out' / 'alpha' / 'clip.mp4'}: No space left on device"
    assert report["failures"][0]["reason"] == reason
    assert logged == [f"{clip}: {reason}"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "hx-index.sqlite", "hx-manifest.json", "hx-report.json"]

    monkeypatch.setattr(video_io.ContainerWriter, "write", real_write)
    from hx_infer.backends.ort import OrtBackend

    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(OrtBackend, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_api(tiny_model_dir, clip, tmp_path / "out2", outputs="alpha")
    assert not [p for p in (tmp_path / "out2").rglob("*") if p.is_file() and p.name not in ("hx-manifest.json", "hx-index.sqlite")]


def _truncated(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@needs_av
def test_bad_videos_are_reported_and_the_run_goes_on(tmp_path, tiny_model_dir, make_disc_photo):
    import av

    src = tmp_path / "in"
    src.mkdir()
    frames, _ = disc_frames(16, 64, 48)
    write_clip(src / "good.mp4", frames)
    _truncated(write_clip(src / "cut.avi", frames), 0.8)  # index lost: fewer frames than the header says
    _truncated(write_clip(src / "cut_frames.mp4", frames, faststart=True), 0.7)  # index intact, frames missing
    _truncated(write_clip(src / "cut_index.mp4", frames), 0.6)  # moov (written last) lost
    data = write_clip(tmp_path / "x.avi", frames).read_bytes()
    (src / "unknown_codec.avi").write_bytes(data.replace(b"FMP4", b"ZZZZ"))  # a FourCC no decoder knows
    with av.open(str(src / "no_video.mp4"), "w") as out:
        sound = out.add_stream("aac", rate=AUDIO_RATE)
        for start in range(0, AUDIO_RATE, 1024):
            piece = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            piece.sample_rate, piece.pts = AUDIO_RATE, start
            out.mux(sound.encode(piece))
        out.mux(sound.encode(None))
    (src / "text.mkv").write_text("not a video")
    (src / "empty.webm").write_bytes(b"")
    Image.fromarray(make_disc_photo(30, 40)[0]).save(src / "photo.png")

    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--outputs", "alpha",
                "--quiet")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 7}, reasons
    assert reasons["cut.avi"].startswith(("truncated video (", "corrupt video ("))  # its first frame, read without an index, is flagged
    assert "truncated video (" in reasons["cut_frames.mp4"]
    assert reasons["cut_index.mp4"].startswith("not a readable video (")
    assert reasons["unknown_codec.avi"] == "no decoder for its video codec"
    assert reasons["no_video.mp4"] == "no video stream"
    assert reasons["text.mkv"].startswith("not a readable video (")
    assert reasons["empty.webm"] == "zero bytes"
    for name, reason in reasons.items():  # one line each on stderr too
        assert f"hx-infer: {src / name}: {reason}" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out/alpha").iterdir()) == ["good.mp4", "photo.png"]


@needs_av
def test_matroska_whose_audio_outlasts_its_video_is_whole(tmp_path, tiny_model_dir):
    """Matroska's file duration is the longest stream's: 1 s of video under 3 s of sound is not a
    video cut short (the video track's own DURATION tag says 1 s)."""
    clip = write_clip(tmp_path / "clip.mkv", disc_frames(10, 64, 48)[0], audio="aac", audio_s=3.0)
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="alpha")
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 0}, report["failures"]
    assert report["frames"] == 10
    assert [name for name, _ in decode(tmp_path / "out/alpha/clip.mp4")["audio"]] == ["aac"]


def test_without_pyav_videos_fail_and_photos_run(tmp_path, tiny_model_dir, make_disc_photo, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    src = tmp_path / "in"
    src.mkdir()
    (src / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 whatever")
    Image.fromarray(make_disc_photo(30, 40)[0]).save(src / "photo.jpg")
    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--outputs", "alpha",
                "--quiet")
    assert result.exit_code == 1
    assert f"hx-infer: {src / 'clip.mp4'}: {PYAV_MISSING}" in result.stderr
    assert "1 processed, 0 skipped, 1 failed" in result.stderr
    assert (tmp_path / "out/alpha/photo.png").is_file()

    bad = hx("run", src / "photo.jpg", tmp_path / "out2", "--model", tiny_model_dir, "--outputs", "composite",
             "--background", src / "clip.mp4")
    assert bad.exit_code == 2 and PYAV_MISSING in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@needs_av
def test_videos_sharing_an_output_name_collide(tmp_path, tiny_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    frames, _ = disc_frames(8, 64, 48)
    write_clip(src / "a.mkv", frames)
    write_clip(src / "a.mp4", frames)
    report, _ = run_api(tiny_model_dir, src, tmp_path / "out", outputs="alpha")
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 1}
    assert report["failures"] == [{"path": str(src / "a.mp4"), "reason": f"output name collides with {src / 'a.mkv'}"}]


def test_video_names_and_temporary_folders():
    assert VIDEO_EXTENSIONS == {".mp4", ".mov", ".mkv", ".avi", ".webm"}
    assert is_video_name("CLIP.MP4") and is_video_name("a.b.webm") and not is_video_name("a.mp4.jpg")


def test_clean_temporaries_removes_temporary_folders_only(tmp_path):
    keep = tmp_path / "rgba" / "clip"
    keep.mkdir(parents=True)
    (keep / "000000.png").write_bytes(b"done")
    stale = tmp_path / "rgba" / ".clip.abcdef012345.hx-tmp"
    stale.mkdir()
    (stale / "000000.png").write_bytes(b"half")
    (tmp_path / "rgba" / ".x.mov.abcdef012345.hx-tmp").write_bytes(b"half")
    assert clean_temporaries(tmp_path) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "rgba", "rgba/clip", "rgba/clip/000000.png"]


@needs_av
def test_png_frames_never_replace_a_folder_with_other_files(tmp_path, tiny_model_dir):
    clip = write_clip(tmp_path / "clip.mp4", disc_frames(8, 64, 48)[0])
    out = tmp_path / "out"
    theirs = out / "rgba" / "clip"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    report, _ = run_api(tiny_model_dir, clip, out, outputs="rgba", overwrite=True, video=VideoOptions(rgba="png"))
    assert report["counts"]["failed"] == 1
    assert "holds more than PNG frames; not replaced" in report["failures"][0]["reason"]
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    (theirs / "notes.txt").unlink()
    (theirs / "000000.png").write_bytes(b"an old frame")
    report, _ = run_api(tiny_model_dir, clip, out, outputs="rgba", overwrite=True, video=VideoOptions(rgba="png"))
    assert report["counts"]["processed"] == 1 and len(list(theirs.iterdir())) == 8


# ---------------------------------------------------------------------------------------------
# Temporal smoothing


def test_smoother_averages_and_restarts_at_cuts():
    rng = np.random.default_rng(0)
    still = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    other = 255 - still
    smoother = TemporalSmoother(strength=0.5)
    a, b = np.zeros((1, 8, 8), np.float32), np.ones((1, 8, 8), np.float32)
    np.testing.assert_array_equal(smoother(a, thumbnail(still)), a)  # first frame: as it is
    np.testing.assert_allclose(smoother(b, thumbnail(still)), 0.5)  # then the average
    np.testing.assert_allclose(smoother(b, thumbnail(still)), 0.75)
    np.testing.assert_array_equal(smoother(a, thumbnail(other)), a)  # a cut: the past is dropped
    assert smoother.restarts == 2
    off = TemporalSmoother(strength=0.0)
    off(a, thumbnail(still))
    np.testing.assert_array_equal(off(b, thumbnail(still)), b)
    with pytest.raises(ValueError, match="temporal-strength"):
        TemporalSmoother(strength=1.0)
    with pytest.raises(ValueError, match="temporal-strength"):
        VideoOptions(temporal=-0.1)


def test_scene_cuts_ignore_noise_and_find_a_new_shot():
    frames, _ = disc_frames(16, 64, 48)  # the disc moves 1/25 of the width a frame, on fresh noise
    cuts = SceneCuts()
    assert [cuts.is_cut(thumbnail(f)) for f in frames] == [True] + [False] * 15
    assert cuts.is_cut(thumbnail(np.full((48, 64, 3), 230, np.uint8)))


def test_flicker_counts_background_in_both_frames_only():
    meter = FlickerMeter()
    first = np.array([[0, 51, 255, 0]], np.uint8)
    second = np.array([[102, 0, 255, 255]], np.uint8)  # 0.4 and 0.2 change on background; the rest is not
    meter.add(first)
    assert meter.value == 0.0
    meter.add(second)
    assert meter.pairs == 1 and meter.pixels == 2
    assert meter.value == pytest.approx((102 + 51) / 255 / 2)


@needs_av
def test_temporal_smoothing_reduces_measured_flicker(tmp_path, tiny_model_dir):
    """A still person on a noisy background: all the matte's change there is flicker. (With motion
    the lagging edge counts too: see the README's figures for vtest.avi.)"""
    frames, _ = disc_frames(16, 64, 48, seed=3, still=True)
    clip = write_clip(tmp_path / "clip.mp4", frames)
    figures = {}
    for strength in (0.0, 0.6):
        out = tmp_path / f"out{strength}"
        report, _ = run_api(tiny_model_dir, clip, out, outputs="alpha",
                            video=VideoOptions(temporal=strength, lossless=True))
        assert report["video"]["temporal"] == strength
        meter = FlickerMeter()
        for alpha in decode(out / "alpha/clip.mkv", fmt="gray")["frames"]:
            meter.add(alpha)
        figures[strength] = meter.value
    assert figures[0.0] > 0
    assert figures[0.6] < 0.8 * figures[0.0], figures


# ---------------------------------------------------------------------------------------------
# The shared clip


@needs_av
@pytest.mark.slow
def test_vtest_avi_gives_a_795_frame_10_fps_matte(tmp_path, tiny_model_dir):
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} is not here")
    result = hx("run", VTEST, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--outputs", "alpha",
                "--quiet", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    import av

    with av.open(str(tmp_path / "out/alpha/vtest.mp4")) as container:  # streamed: 795 frames are 350 MB
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (768, 576, 10)
        assert stream.time_base == Fraction(1, 10)
        assert sum(1 for _ in container.decode(stream)) == 795
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    assert report["frames"] == 795 and report["counts"]["processed"] == 1


@needs_av
def test_png_frames_follow_png_compression(tmp_path, tiny_model_dir):
    from hx_infer.io.images import encode_png

    clip = write_clip(tmp_path / "clip.mp4", disc_frames(3, 64, 48)[0])
    report, _ = run_api(tiny_model_dir, clip, tmp_path / "out", outputs="rgba", png_compression="small",
                        video=VideoOptions(rgba="png"))
    assert report["counts"]["processed"] == 1
    frame = tmp_path / "out/rgba/clip/000001.png"
    assert frame.read_bytes() == encode_png(np.asarray(Image.open(frame)), "small")
    assert frame.read_bytes() != encode_png(np.asarray(Image.open(frame)), "fast")
