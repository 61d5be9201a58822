"""`hx-infer run --engine ray` on Ray on this machine (CPU, one inference actor): the same files as
the local engine, resume, a bad photo in the report, and the options and refusals that need no
cluster. (A run without --ray-address starts a Ray runtime of its own: a second runtime, kept out
of CI's time; the attached runs here take every other line of the engine.)

One Ray cluster for the module: `ray start --head --block` on 127.0.0.1 with a free port, a short
temp folder (Ray's Unix sockets live there) and a token of its own (nothing lands in ~/.ray),
stopped through its own process and session whatever the tests did. The Ray tests skip when ray
is not installed; CI installs the `ray` extra.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from hx_infer.cli import main

HAVE_RAY = all(importlib.util.find_spec(name) is not None for name in ("ray", "pyarrow", "pandas"))
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[data] is not installed (pip install 'hx[ray]')")
# Ray Data warns about its own deprecated settings whenever it copies its context.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
GOOD = ["a.jpg", "b.png", "nested/c.jpg", "nested/deeper/d.jpg", "nested/e.png"]
BAD = "nested/bad.jpg"
PADDED = "nested/c.jpg"  # given stray bytes before its end marker: processed, and listed as a warning


def hx(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("hx-report.json", "hx-manifest.json", "hx-index.sqlite")}


@pytest.fixture(scope="module")
def tree(tmp_path_factory, make_disc_photo) -> Path:
    """GOOD photos of different sizes in three folders, and BAD, a text file named .jpg."""
    root = tmp_path_factory.mktemp("ray-photos")
    for i, rel in enumerate(GOOD):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_disc_photo(30 + 7 * i, 44 - 3 * i, seed=i)[0]).save(root / rel)
    data = (root / PADDED).read_bytes()
    (root / PADDED).write_bytes(data[:-2] + b"\x00" * 12 + data[-2:])
    (root / BAD).write_text("not a photo")
    return root


# ---------------------------------------------------------------------------------------------
# A Ray cluster on loopback


@pytest.fixture(scope="module", autouse=True)
def ray_env():
    """Environment for every Ray process of the module; set before this process imports ray."""
    temp = tempfile.mkdtemp(prefix="hxr", dir="/tmp")  # short: socket paths must stay < 108 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", temp)  # whatever Ray of this process keeps on disk
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single-node mode: bind 127.0.0.1 only
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # `ray start --block` stops at once on SIGTERM
        mp.delenv("RAY_ADDRESS", raising=False)
        yield Path(temp)
    shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of the session `ray start` opened (its GCS, raylet, workers), by id."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM makes `ray start --block` drain the node and stop what it started; whatever of its
    session is left after that is killed by id. (`ray stop` would kill every Ray on the machine.)"""
    head.terminate()
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        pass
    for pid in _session_pids(head.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    head.wait(10)


@pytest.fixture(scope="module")
def ray_head(ray_env) -> str:
    """`ray start --head` on 127.0.0.1 with 2 CPUs -> its address, HOST:PORT."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="hxh", dir="/tmp")
    log = open(Path(temp) / "head.log", "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("ray start: the head did not open its port in 120 s")
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_run(tree, tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("local") / "out"
    r = hx("run", tree, out, "--model", tiny_model_dir, "--backend", "ort", "--batch-size", 4,
           "--outputs", "alpha,rgba", "--quiet")
    assert r.exit_code == 1, r.output
    return out, json.loads((out / "hx-report.json").read_text())


@pytest.fixture(scope="module")
def ray_run(ray_head, tree, tiny_model_dir, tmp_path_factory):
    """The tree through --engine ray, attached to the module's cluster -> (OUTPUT, report, result)."""
    out = tmp_path_factory.mktemp("ray") / "out"
    r = hx("run", tree, out, "--model", tiny_model_dir, "--backend", "ort", "--batch-size", 4,
           "--outputs", "alpha,rgba", "--quiet", "--engine", "ray", "--ray-address", ray_head)
    return out, json.loads((out / "hx-report.json").read_text()), r


# ---------------------------------------------------------------------------------------------
# The engine on the cluster


@pytest.mark.slow
@needs_ray
def test_ray_writes_the_local_engines_bytes(ray_run, local_run):
    (out, report, result), (local_out, local_report) = ray_run, local_run
    assert result.exit_code == 1, result.output  # BAD failed, the rest done
    expected = {f"{kind}/{Path(rel).with_suffix('.png').as_posix()}" for kind in ("alpha", "rgba") for rel in GOOD}
    assert set(digest(out)) == expected
    assert digest(out) == digest(local_out)  # byte for byte, mattes and cutouts
    assert report["engine"] == "ray" and local_report["engine"] == "local"
    assert (report["backend"], report["device"], report["batch_size"]) == ("ort", "cpu", 4)
    assert report["ray"]["actors"] == 1 and report["ray"]["cluster"]["cpus"] == 2
    assert report["counts"] == local_report["counts"] == {"processed": len(GOOD), "skipped": 0, "failed": 1}


@pytest.mark.slow
@needs_ray
def test_a_bad_photo_is_reported_and_the_run_finishes(ray_run, local_run, tree):
    (out, report, result), (_, local_report) = ray_run, local_run
    assert report["failures"] == local_report["failures"]
    assert report["failures"] == [{"path": str(tree / BAD), "reason": "not an image"}]
    assert f"hx-infer: {tree / BAD}: not an image" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
@needs_ray
def test_a_decoders_warning_comes_back_from_the_workers(ray_run, local_run, tree):
    (_, report, _), (_, local_report) = ray_run, local_run
    assert [w["path"] for w in report["warnings"]] == [str(tree / PADDED)]
    assert "stray bytes before the JPEG end marker" in report["warnings"][0]["reason"]
    assert report["warnings"] == local_report["warnings"]


@pytest.mark.slow
@needs_ray
def test_a_second_run_skips_everything(ray_run, ray_head, tree, tiny_model_dir):
    out, first, _ = ray_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    r = hx("run", tree, out, "--model", tiny_model_dir, "--backend", "ort", "--batch-size", 4,
           "--outputs", "alpha,rgba", "--quiet", "--engine", "ray", "--ray-address", ray_head)
    assert r.exit_code == 1, r.output  # BAD is tried again, and fails again
    report = json.loads((out / "hx-report.json").read_text())
    assert report["counts"] == {"processed": 0, "skipped": len(GOOD), "failed": 1}
    assert report["warnings"] == first["warnings"] != []  # PADDED's, from the index the driver keeps
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    assert not list(out.rglob("*.hx-tmp"))


# ---------------------------------------------------------------------------------------------
# Without a cluster


@needs_ray
@pytest.mark.parametrize("cpus, gpus, asked, expected", [
    (2, 0, {}, (1, 0.0, 1.0)),  # one CPU stays free for decoding and writing
    (16, 0, {"cpus_per_actor": 4}, (3, 0.0, 4.0)),
    (32, 4, {}, (4, 1.0, 1.0)),  # a GPU each
    (32, 4, {"gpus_per_actor": 0.5}, (8, 0.5, 1.0)),
    (32, 4, {"gpus_per_actor": 1, "actors": 2}, (2, 1.0, 1.0)),
])
def test_actor_pool_sizes(cpus, gpus, asked, expected):
    from hx_infer.engines.ray import plan_actors

    plan = plan_actors(cpus, gpus, **asked)
    assert (plan.actors, plan.gpus_per_actor, plan.cpus_per_actor) == expected


@needs_ray
@pytest.mark.parametrize("cpus, gpus, asked, needle", [
    (2, 0, {"actors": 2}, "--actors 2 x --cpus-per-actor 1"),  # would take every CPU: a hang
    (1, 0, {}, "must stay free"),
    (8, 0, {"gpus_per_actor": 1}, "--gpus-per-actor 1: the Ray cluster has 0 GPUs"),
    (32, 2, {"actors": 3}, "--actors 3 x --gpus-per-actor 1"),
])
def test_actor_pools_that_cannot_run_are_refused(cpus, gpus, asked, needle):
    from hx_infer.engines.ray import plan_actors
    from hx_infer.run.config import ConfigError

    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        plan_actors(cpus, gpus, **asked)


@needs_ray
def test_actors_open_their_backend_with_the_engine_cache(monkeypatch, tiny_model_dir, tmp_path):
    """--engine-cache reaches the trt backend on each actor (built engines are reused there)."""
    from hx_infer.backends import base
    from hx_infer.engines.ray import _Infer

    opened = {}
    monkeypatch.setattr(base, "open_backend", lambda model, spec: opened.update(spec=spec))
    spec = base.BackendSpec("trt", "cuda", batch_size=4, threads=1, engine_cache=tmp_path / "engines")
    actor = _Infer(str(tiny_model_dir), spec)
    assert actor._error is None and opened["spec"].engine_cache == tmp_path / "engines"


def test_without_ray_the_engine_is_a_usage_error(monkeypatch, tree, tiny_model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "hx_infer.engines.ray", raising=False)
    r = hx("run", tree, tmp_path / "out", "--model", tiny_model_dir, "--engine", "ray")
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hx-infer: error: --engine ray: Ray is not installed")
    assert "pip install 'hx[ray]'" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--ray-address", "auto"], ["--actors", "2"], ["--gpus-per-actor", "1"]])
def test_ray_options_need_the_ray_engine(option, tree, tmp_path):
    r = hx("run", tree, tmp_path / "out", *option)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"hx-infer: error: {option[0]} is an option of --engine ray")
