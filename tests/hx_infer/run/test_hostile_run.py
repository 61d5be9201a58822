"""Hostile cases met by the run machinery (issue 13): names that are not UTF-8, huge batches,
write failures, two runs on one OUTPUT, clean-up that must not touch the user's files, links and
frame folders that collide with outputs, --report in the wrong place, reruns with other
settings, SIGTERM, and mattes that must not depend on the other outputs. Fixtures are tiny and
made here; `hx` runs the CLI in this process unless a real process is the point."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hx_infer_asserts import assert_one_line_error, hx

REPO = Path(__file__).resolve().parents[3]
READ_ONLY = Path("/sys/kernel/mm")  # a folder even root cannot write into (sysfs)


pytestmark = pytest.mark.usefixtures("own_hash_cache")


def photo(path: Path, make_disc_photo, height: int = 48, width: int = 64, seed: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_disc_photo(height, width, seed=seed)[0]).save(path, **save)
    return path


def run_args(src, out, model, *more):
    return ["run", src, out, "--model", model, "--backend", "ort", "--quiet", *more]


def report_of(out: Path) -> dict:
    return json.loads((out / "hx-report.json").read_bytes().decode("utf-8"))  # strict UTF-8


def cannot_write_here() -> bool:
    if not READ_ONLY.is_dir():
        return False
    try:
        (READ_ONLY / "hx-probe").mkdir()
    except OSError:
        return True
    (READ_ONLY / "hx-probe").rmdir()
    return False


needs_read_only = pytest.mark.skipif(not cannot_write_here(), reason=f"{READ_ONLY} is writable or absent here")


# --- names -------------------------------------------------------------------------------------


def test_names_that_are_not_utf8_are_processed_and_escaped_in_the_report(tmp_path, tiny_model_dir,
                                                                          make_disc_photo):
    src = tmp_path / "in"
    good = photo(src / os.fsdecode(b"caf\xe9.jpg"), make_disc_photo)
    bad = src / os.fsdecode(b"bad\xff.png")
    bad.write_bytes(b"not a photo")
    result = hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--outputs", "alpha"))
    assert result.exit_code == 1, result.output
    assert (tmp_path / "out" / "alpha" / (good.stem + ".png")).is_file()
    report = report_of(tmp_path / "out")
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 1}
    assert report["failures"] == [{"path": str(src / "bad\\xff.png"), "reason": "not an image"}]


def test_names_with_control_characters_fail_on_one_escaped_line(tmp_path, tiny_model_dir, make_disc_photo):
    """A newline or an ESC in a name is legal on Linux: printed raw, one failure reads as two
    lines on stderr, or recolours the terminal."""
    src = tmp_path / "in"
    photo(src / "good.png", make_disc_photo)
    (src / "new\nline.png").write_bytes(b"not a photo")
    (src / "red\x1b[31m.png").write_bytes(b"not a photo")
    result = hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--outputs", "alpha"))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert sum("new\\x0aline.png" in line for line in lines) == 1, lines
    assert sum("red\\x1b[31m.png" in line for line in lines) == 1 and "\x1b" not in result.stderr, lines
    paths = {failure["path"] for failure in report_of(tmp_path / "out")["failures"]}
    assert str(src / "new\\x0aline.png") in paths and str(src / "red\\x1b[31m.png") in paths


# --- memory ------------------------------------------------------------------------------------


def test_a_huge_batch_size_keeps_what_is_in_flight_small(tmp_path, tiny_model_dir, make_disc_photo, monkeypatch):
    import hx_infer.engines.local as local
    from hx_infer.backends.ort import OrtBackend

    for i in range(24):
        photo(tmp_path / "in" / f"p{i:02d}.png", make_disc_photo, 120, 160, seed=i)
    # One photo in flight is its [3, 64, 64] float32 input (48 KiB) plus its pixels (56 KiB).
    monkeypatch.setattr(local, "IN_FLIGHT_BYTES", 400_000, raising=False)
    batches = []
    real_infer = OrtBackend.infer
    monkeypatch.setattr(OrtBackend, "infer", lambda self, x: batches.append(len(x)) or real_infer(self, x))
    result = hx(*run_args(tmp_path / "in", tmp_path / "out", tiny_model_dir, "--outputs", "alpha,rgba",
                          "--batch-size", "1000000000", "--workers", "1000000000"))
    assert result.exit_code == 0, result.output
    assert sum(batches) == 24 and max(batches) <= 4, batches


# --- write failures ----------------------------------------------------------------------------


def test_an_output_that_cannot_be_written_names_the_output(tmp_path, tiny_model_dir, make_disc_photo):
    photo(tmp_path / "in" / "sub" / "a.png", make_disc_photo)
    photo(tmp_path / "in" / "b.png", make_disc_photo)
    out = tmp_path / "out"
    (out / "alpha").mkdir(parents=True)
    (out / "alpha" / "sub").write_text("a file where a folder of outputs goes")
    result = hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--outputs", "alpha"))
    assert result.exit_code == 1, result.output
    [failure] = report_of(out)["failures"]
    assert failure["path"] == str(tmp_path / "in" / "sub" / "a.png")
    assert failure["reason"].startswith(f"cannot write {out / 'alpha' / 'sub' / 'a.png'}: "), failure


def test_a_kind_folder_that_is_a_file_stops_at_once(tmp_path, tiny_model_dir, make_disc_photo):
    photo(tmp_path / "in" / "a.png", make_disc_photo)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rgba").write_text("not a folder")
    result = hx(*run_args(tmp_path / "in", tmp_path / "out", tiny_model_dir, "--outputs", "rgba"))
    assert_one_line_error(result, f"{tmp_path / 'out' / 'rgba'}", "cannot write")


@needs_read_only
def test_an_unwritable_output_stops_at_once_with_one_line(tmp_path, tiny_model_dir, make_disc_photo):
    photo(tmp_path / "in" / "a.png", make_disc_photo)
    result = hx(*run_args(tmp_path / "in", READ_ONLY, tiny_model_dir, "--outputs", "alpha"))
    assert_one_line_error(result, f"OUTPUT {READ_ONLY}", "cannot write")


@needs_read_only
def test_an_unwritable_or_dangling_output_kind_folder_stops_at_once_with_one_line(tmp_path, tiny_model_dir,
                                                                                  make_disc_photo):
    """OUTPUT is writable but OUTPUT/rgba is not (here: a link to a folder nobody can write), or
    OUTPUT/rgba is a link to nothing: stop before any photo, not fail every photo after decoding."""
    photo(tmp_path / "in" / "a.png", make_disc_photo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgba").symlink_to(READ_ONLY)
    result = hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--outputs", "alpha,rgba"))
    assert_one_line_error(result, f"OUTPUT/rgba {out / 'rgba'}", "cannot write")
    assert not (out / "alpha").exists() and not (out / "hx-report.json").exists()
    (out / "rgba").unlink()
    (out / "rgba").symlink_to(tmp_path / "nowhere")
    result = hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--outputs", "alpha,rgba"))
    assert_one_line_error(result, f"OUTPUT/rgba {out / 'rgba'}", "link to nothing")


def test_report_never_takes_the_place_of_outputs_lock_or_manifest(tmp_path, tiny_model_dir, make_disc_photo):
    """On a fresh OUTPUT neither file exists when --report is checked: the report would be deleted
    with the lock, or stand where the manifest goes and end every later run."""
    photo(tmp_path / "in" / "a.png", make_disc_photo)
    out = tmp_path / "out"
    for own in (".hx-lock", "hx-manifest.json"):
        result = hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--report", out / own))
        assert_one_line_error(result, f"--report {out / own}", own)
    assert hx(*run_args(tmp_path / "in", out, tiny_model_dir)).exit_code == 0
    assert_one_line_error(hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--report", out / "hx-manifest.json")),
                          "hx-manifest.json")
    assert json.loads((out / "hx-manifest.json").read_text())["format"] == "hx-output/1"


@needs_read_only
def test_a_report_that_cannot_be_written_names_its_path_and_the_summary_still_prints(tmp_path, tiny_model_dir,
                                                                                     make_disc_photo):
    photo(tmp_path / "in" / "a.png", make_disc_photo)
    report = READ_ONLY / "hx-report.json"
    result = hx(*run_args(tmp_path / "in", tmp_path / "out", tiny_model_dir, "--outputs", "alpha",
                          "--report", report))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"hx-infer: error: cannot write report {report}: "), lines
    assert lines[1].startswith("hx-infer: 1 processed, 0 skipped, 0 failed in "), lines
    assert "Traceback" not in result.output


# --- one run per OUTPUT, and clean-up ------------------------------------------------------------


def test_a_second_run_on_the_same_output_stops_naming_the_first(tmp_path, tiny_model_dir, make_disc_photo):
    from hx_infer.io.lock import OutputLock

    photo(tmp_path / "in" / "a.png", make_disc_photo)
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "alpha" / ".a.png.0123456789ab.hx-tmp"  # the first run's file in progress
    theirs.parent.mkdir()
    theirs.write_bytes(b"half")
    with OutputLock(out):
        result = hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--outputs", "alpha"))
        assert_one_line_error(result, f"OUTPUT {out} is in use", f"pid {os.getpid()} ")
        assert theirs.exists()
    assert hx(*run_args(tmp_path / "in", out, tiny_model_dir, "--outputs", "alpha")).exit_code == 0
    assert not theirs.exists()  # no one holds it now: a killed run's, cleaned
    assert not (out / ".hx-lock").exists()


def test_cleanup_spares_the_users_files_and_input(tmp_path, tiny_model_dir, make_disc_photo):
    out = tmp_path / "out"
    src = out / "photos"  # INPUT inside OUTPUT (not inside a kind folder) is allowed
    photo(src / "a.png", make_disc_photo)
    mine = [out / "notes.hx-tmp", src / ".b.png.0123456789ab.hx-tmp"]
    for path in mine:
        path.write_bytes(b"the user's")
    result = hx(*run_args(src, out, tiny_model_dir, "--outputs", "alpha"))
    assert result.exit_code == 0, result.output
    assert all(path.read_bytes() == b"the user's" for path in mine)


# --- collisions ----------------------------------------------------------------------------------


def test_a_photo_linked_into_output_is_never_overwritten(tmp_path, tiny_model_dir, make_disc_photo):
    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png", make_disc_photo)
    assert hx(*run_args(src, out, tiny_model_dir, "--outputs", "rgba")).exit_code == 0
    (src / "b.png").symlink_to(out / "rgba" / "a.png")  # its cutout would be out/rgba/b.png, but
    (src / "a.png").unlink()
    (src / "a.png").symlink_to(out / "rgba" / "a.png")  # this one's is the file it links to
    before = (out / "rgba" / "a.png").read_bytes()
    result = hx(*run_args(src, out, tiny_model_dir, "--outputs", "rgba", "--overwrite"))
    assert result.exit_code == 1, result.output
    reasons = {Path(f["path"]).name: f["reason"] for f in report_of(out)["failures"]}
    assert set(reasons) == {"a.png", "b.png"} and all("inside OUTPUT/rgba" in r for r in reasons.values())
    assert (out / "rgba" / "a.png").read_bytes() == before and not (out / "rgba" / "b.png").exists()


def test_a_folder_link_inside_output_never_sends_outputs_over_the_photos(tmp_path, tiny_model_dir,
                                                                        make_disc_photo):
    """OUTPUT/rgba/2019 links back to INPUT/2019: the cutout of INPUT/2019/a.png would land on
    the photo itself (and a .jpg's beside it, in INPUT). The photo fails; the others run."""
    src, out = tmp_path / "in", tmp_path / "out"
    mine = photo(src / "2019" / "a.png", make_disc_photo)
    photo(src / "2020" / "b.png", make_disc_photo, seed=1)
    (out / "rgba").mkdir(parents=True)
    (out / "rgba" / "2019").symlink_to(src / "2019")
    before = mine.read_bytes()
    result = hx(*run_args(src, out, tiny_model_dir, "--outputs", "alpha,rgba"))
    assert result.exit_code == 1, result.output
    [failure] = report_of(out)["failures"]
    assert failure["path"] == str(mine) and "outside OUTPUT/rgba" in failure["reason"], failure
    assert mine.read_bytes() == before and sorted(p.name for p in (src / "2019").iterdir()) == ["a.png"]
    assert (out / "rgba" / "2020" / "b.png").is_file() and not (out / "alpha" / "2019" / "a.png").exists()


def test_resume_skips_only_outputs_made_from_the_same_photo(tmp_path, tiny_model_dir, make_disc_photo):
    """Outputs are named after their photo, so a name alone cannot say whose they are: a second
    folder whose photos share the names fails them (before: skipped, exit 0, its cutouts never
    made); an edited photo is redone; the same photos moved elsewhere are still skipped."""
    out = tmp_path / "out"
    first = photo(tmp_path / "s1" / "IMG_0001.png", make_disc_photo, seed=1)
    assert hx(*run_args(tmp_path / "s1", out, tiny_model_dir, "--outputs", "alpha")).exit_code == 0
    made = (out / "alpha" / "IMG_0001.png").read_bytes()

    other = photo(tmp_path / "s2" / "IMG_0001.png", make_disc_photo, 40, 56, seed=2)  # another size
    result = hx(*run_args(tmp_path / "s2", out, tiny_model_dir, "--outputs", "alpha"))
    assert result.exit_code == 1, result.output
    [failure] = report_of(out)["failures"]
    assert failure["path"] == str(other) and str(first) in failure["reason"] and "--overwrite" in failure["reason"]
    assert (out / "alpha" / "IMG_0001.png").read_bytes() == made

    (tmp_path / "s1").rename(tmp_path / "moved")  # the same photo, moved: still done
    assert hx(*run_args(tmp_path / "moved", out, tiny_model_dir, "--outputs", "alpha")).exit_code == 0
    assert report_of(out)["counts"] == {"processed": 0, "skipped": 1, "failed": 0}

    edited = tmp_path / "moved" / "IMG_0001.png"
    assert hx(*run_args(tmp_path / "moved", out, tiny_model_dir, "--outputs", "alpha", "--overwrite")).exit_code == 0
    photo(edited, make_disc_photo, 30, 40, seed=3)  # retouched in place
    assert hx(*run_args(tmp_path / "moved", out, tiny_model_dir, "--outputs", "alpha")).exit_code == 0
    assert report_of(out)["counts"] == {"processed": 1, "skipped": 0, "failed": 0}
    assert Image.open(out / "alpha" / "IMG_0001.png").size == (40, 30)

    (out / "hx-index.sqlite").unlink()  # an OUTPUT from before the index: names decide, as they did
    assert hx(*run_args(tmp_path / "s2", out, tiny_model_dir, "--outputs", "alpha")).exit_code == 0
    assert report_of(out)["counts"] == {"processed": 0, "skipped": 1, "failed": 0}


def test_a_warned_photos_record_survives_a_kill(tmp_path):
    """Records are committed 500 at a time, so a kill -9 loses the last ones (their photos are
    then skipped by name alone, with no warning); a record with a warning is committed at once,
    so the rerun after the kill still lists it. A second connection reads only what is committed,
    as the rerun after a kill would."""
    from hx_infer.run.index import SKIP, OutputIndex

    out = tmp_path / "out"
    out.mkdir()
    clean, padded = tmp_path / "clean.jpg", tmp_path / "padded.jpg"
    clean.write_bytes(b"x" * 10)
    padded.write_bytes(b"y" * 12)
    def after_a_kill(src: Path) -> tuple[str, str | None]:
        rerun = OutputIndex(out)
        try:
            return rerun.verdict(src, Path(src.name))
        finally:
            rerun.close()

    index = OutputIndex(out)
    try:
        index.record(clean, Path("clean.jpg"))
        assert after_a_kill(clean) == (SKIP, None)  # not committed yet: no record, names alone
        index.record(padded, Path("padded.jpg"), "12 stray bytes before the JPEG end marker")
        assert after_a_kill(padded) == (SKIP, "12 stray bytes before the JPEG end marker")
    finally:
        index.close()


def test_png_frames_of_a_video_never_land_on_a_photo_folders_outputs(tmp_path, tiny_model_dir, make_disc_photo):
    pytest.importorskip("av")
    from video_clips import disc_frames, write_clip

    src, out = tmp_path / "in", tmp_path / "out"
    write_clip(src / "clip.mp4", disc_frames(3, 64, 48)[0])
    photo(src / "clip" / "000000.jpg", make_disc_photo, 30, 40)  # its cutout: out/rgba/clip/000000.png
    result = hx(*run_args(src, out, tiny_model_dir, "--outputs", "rgba", "--frames", "png"))
    assert result.exit_code == 1, result.output
    [failure] = report_of(out)["failures"]
    assert failure["path"] == str(src / "clip.mp4") and "collides" in failure["reason"], failure
    assert sorted(p.name for p in (out / "rgba" / "clip").iterdir()) == ["000000.png"]
    assert np.asarray(Image.open(out / "rgba" / "clip" / "000000.png")).shape == (30, 40, 4)  # the photo's


def test_report_refuses_a_file_that_is_not_a_report_and_a_path_inside_input(tmp_path, tiny_model_dir,
                                                                            make_disc_photo):
    src = tmp_path / "in"
    photo(src / "a.png", make_disc_photo)
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    result = hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--report", notes))
    assert_one_line_error(result, f"--report {notes}", "not an hx-infer report")
    assert notes.read_text() == '{"my": "notes"}'
    assert_one_line_error(hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--report", src / "r.json")),
                          "--report", "inside INPUT")
    # a report of an earlier run is replaced as before
    assert hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--report", tmp_path / "r.json")).exit_code == 0
    assert hx(*run_args(src, tmp_path / "out", tiny_model_dir, "--report", tmp_path / "r.json")).exit_code == 0


# --- reruns with other settings ------------------------------------------------------------------


def other_model(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model with one weight changed and its card updated: another valid model."""
    other = tmp_path / "other-model"
    shutil.copytree(model_dir, other)
    graph = bytearray((other / "model.onnx").read_bytes())
    graph[-100] ^= 1
    (other / "model.onnx").write_bytes(bytes(graph))
    card = json.loads((other / "model.json").read_text())
    card["sha256"]["model.onnx"] = hashlib.sha256(graph).hexdigest()
    (other / "model.json").write_text(json.dumps(card))
    return other



def test_a_rerun_with_other_settings_stops_unless_overwrite(tmp_path, tiny_model_dir, make_disc_photo):
    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png", make_disc_photo)
    base = run_args(src, out, tiny_model_dir, "--outputs", "alpha,composite")
    assert hx(*base).exit_code == 0
    assert_one_line_error(hx(*base, "--refine", "guided"), "--refine none", "--refine guided", "--overwrite")
    assert_one_line_error(hx(*base, "--background", "black"), "--background #ffffff", "--background #000000")
    assert hx(*base, "--background", "#FFF").exit_code == 0  # white by another name: the same background
    assert_one_line_error(hx(*run_args(src, out, other_model(tiny_model_dir, tmp_path), "--outputs", "alpha")),
                          "--model", "sha256")
    assert hx(*base, "--refine", "guided", "--overwrite").exit_code == 0
    assert hx(*base, "--refine", "guided").exit_code == 0  # the manifest now says guided
    assert hx(*run_args(src, out, tiny_model_dir, "--outputs", "rgba")).exit_code == 0  # a new kind: fine


def test_a_partial_or_stopped_overwrite_with_new_settings_is_never_resumed_as_if_whole(
        tmp_path, tiny_model_dir, make_disc_photo, monkeypatch):
    """--overwrite --background black on one photo of three leaves two composites on white: a
    rerun must not skip them as black. Redoing them all settles the record."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        photo(src / f"p{i}.png", make_disc_photo, seed=i)
    base = run_args(src, out, tiny_model_dir, "--outputs", "composite")
    assert hx(*base).exit_code == 0
    assert hx(*base, "--background", "black", "--overwrite", "--glob", "p0*").exit_code == 0
    result = hx(*base, "--background", "black")
    assert_one_line_error(result, "mixed", "--background #000000", "--background #ffffff", "--overwrite")
    assert hx(*base, "--background", "black", "--overwrite").exit_code == 0  # all three redone
    assert "redo_from" not in json.loads((out / "hx-manifest.json").read_text())["kinds"]["composite"]
    assert hx(*base, "--background", "black").exit_code == 0  # resumes: everything is on black
    assert report_of(out)["counts"]["skipped"] == 3

    # A redo that stops midway (here: the model fails on the second batch) stays mixed too.
    from hx_infer.backends.ort import OrtBackend
    real, calls = OrtBackend._run, []

    def fail_second(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(OrtBackend, "_run", fail_second)
    hx(*base, "--overwrite", "--batch-size", "1", "--workers", "1")
    monkeypatch.setattr(OrtBackend, "_run", real)
    assert_one_line_error(hx(*base), "mixed", "--background #ffffff")


def test_a_new_background_picture_under_the_old_name_is_another_background(tmp_path, tiny_model_dir,
                                                                          make_disc_photo):
    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png", make_disc_photo)
    picture = photo(tmp_path / "bg.png", make_disc_photo, seed=5)
    base = run_args(src, out, tiny_model_dir, "--outputs", "composite", "--background", picture)
    assert hx(*base).exit_code == 0
    assert hx(*base).exit_code == 0  # the same picture: resumes
    photo(picture, make_disc_photo, seed=6)
    assert_one_line_error(hx(*base), "--background", "sha256", "--overwrite")


# --- signals -------------------------------------------------------------------------------------


def test_sigterm_is_like_ctrl_c(tmp_path, tiny_model_dir, make_disc_photo):
    pytest.importorskip("av")
    from video_clips import disc_frames, write_clip

    src, out = tmp_path / "in", tmp_path / "out"
    write_clip(src / "long.mkv", disc_frames(400, 64, 48)[0])
    command = [sys.executable, "-m", "hx_infer.cli", *map(str, run_args(src, out, tiny_model_dir, "--outputs",
                                                                         "alpha,rgba", "--batch-size", "2"))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*.hx-tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # well inside the video
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["hx-infer: terminated; run the same command again to resume"], stderr
    assert not list(out.rglob("*.hx-tmp")) and not (out / "alpha" / "long.mp4").exists()


# --- the same matte whatever is written ----------------------------------------------------------


def test_the_matte_does_not_depend_on_the_other_outputs(tmp_path, tiny_model_dir, make_disc_photo):
    src = tmp_path / "in"
    exif = Image.Exif()
    exif[0x0112] = 6  # on its side: where the two decodes differed most
    photo(src / "turned.jpg", make_disc_photo, 480, 640, seed=3, quality=90, exif=exif)
    photo(src / "plain.jpg", make_disc_photo, 500, 700, seed=4, quality=90)
    digests = {}
    for outputs in ("alpha", "alpha,rgba", "alpha,composite", "alpha,rgba,composite"):
        out = tmp_path / outputs.replace(",", "+")
        assert hx(*run_args(src, out, tiny_model_dir, "--outputs", outputs)).exit_code == 0
        digests[outputs] = [hashlib.sha256((out / "alpha" / name).read_bytes()).hexdigest()
                            for name in ("turned.png", "plain.png")]
    assert len({tuple(d) for d in digests.values()}) == 1, digests
