"""One run per OUTPUT (hx_infer.io.lock) and the record of what made an OUTPUT (hx_infer.manifest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hx_infer.io.lock import LOCK_NAME, LockError, OutputLock
from hx_infer.manifest import MANIFEST_NAME, ManifestError, check_manifest, settings_for, write_manifest


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with OutputLock(tmp_path):
        holder = (tmp_path / LOCK_NAME).read_text()
        assert holder.startswith(f"pid {os.getpid()} on ")
        with pytest.raises(LockError) as info:
            OutputLock(tmp_path).acquire()
        assert f"pid {os.getpid()}" in str(info.value) and str(tmp_path) in str(info.value)
        assert "\n" not in str(info.value)
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed
    with OutputLock(tmp_path):  # free again
        pass


def test_a_lock_left_by_a_killed_process_is_stale(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hx_infer.io.lock import OutputLock\n"
        f"OutputLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"pid {holder.pid} "):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # kill -9 left the file behind ...
    with OutputLock(tmp_path):  # ... and it is taken over
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")


def _settings(**changes):
    base = {"model_sha256": "a" * 64, "model_path": "/m", "refine": "none", "temporal": 0.0, "background": "white"}
    base.update(changes)
    return {kind: settings_for(kind, **base) for kind in ("alpha", "composite")}


def test_a_rerun_with_other_settings_is_named_in_one_line(tmp_path):
    write_manifest(tmp_path, _settings())
    check_manifest(tmp_path, _settings())  # the same: fine
    check_manifest(tmp_path, {"alpha": _settings(background="black")["alpha"]})  # alpha ignores the background
    for changes, needle in (({"model_sha256": "b" * 64}, "--model"), ({"refine": "guided"}, "--refine guided"),
                            ({"background": "black"}, "--background white, this run asks --background black")):
        with pytest.raises(ManifestError) as info:
            check_manifest(tmp_path, _settings(**changes))
        assert needle in str(info.value) and "--overwrite" in str(info.value) and "\n" not in str(info.value)


def test_a_kind_not_rewritten_keeps_its_record(tmp_path):
    write_manifest(tmp_path, _settings())
    write_manifest(tmp_path, {"alpha": _settings(refine="guided")["alpha"]})
    kinds = json.loads((tmp_path / MANIFEST_NAME).read_text())["kinds"]
    assert kinds["alpha"]["refine"] == "guided" and kinds["composite"]["refine"] == "none"


def test_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('{"something": "else"}')
    with pytest.raises(ManifestError, match="not an hx-infer output manifest"):
        check_manifest(tmp_path, _settings())
