"""hx-infer serve: answers byte-identical to `hx-infer run`, rembg's form, every refusal, the full
queue, disconnects, SIGTERM. Servers run as subprocesses on a free port of 127.0.0.1."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")
pytest.importorskip("prometheus_client")

from hx_infer.cli import main  # noqa: E402
from hx_infer.compose import Background, composite  # noqa: E402
from hx_infer.io.images import encode_png  # noqa: E402
from hx_infer.serve import ServeError, ServeOptions  # noqa: E402
from hx_infer.serve.batcher import DynamicBatcher  # noqa: E402
from hx_infer.serve.params import RequestError, parse_params  # noqa: E402
from hx_infer_asserts import assert_one_line_error  # noqa: E402
from serve_client import REPO, Served, multipart, read_response  # noqa: E402

# (query string, `hx-infer run` options that write the same file, its kind)
CASES = [
    ("", ["--outputs", "rgba"], "rgba"),
    ("?output=alpha", ["--outputs", "alpha"], "alpha"),
    ("?output=composite&background=%23336699", ["--outputs", "composite", "--background", "#336699"], "composite"),
    ("?output=rgba&refine=guided", ["--outputs", "rgba", "--refine", "guided"], "rgba"),
    ("?output=alpha&png_compression=small", ["--outputs", "alpha", "--png-compression", "small"], "alpha"),
]
SUFFIX = {"rgba": ".png", "alpha": ".png", "composite": ".jpg"}


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, make_disc_photo) -> dict[str, Path]:
    """Two photos: a landscape JPEG and a portrait PNG."""
    folder = tmp_path_factory.mktemp("serve-photos")
    wide, _ = make_disc_photo(150, 200, seed=1)
    tall, _ = make_disc_photo(170, 120, seed=2)
    (folder / "wide.jpg").write_bytes(_jpeg(wide))
    Image.fromarray(tall).save(folder / "tall.png")
    return {"wide": folder / "wide.jpg", "tall": folder / "tall.png"}


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, photos, tiny_model_dir) -> dict[tuple[str, str], bytes]:
    """(query, photo name) -> the bytes `hx-infer run` writes for it."""
    files = {}
    for query, options, kind in CASES:
        out = tmp_path_factory.mktemp("run")
        r = CliRunner().invoke(main, ["run", str(photos["wide"].parent), str(out), "--model", str(tiny_model_dir),
                                      "--backend", "ort", "--device", "cpu", "--quiet", *options])
        assert r.exit_code == 0, r.output
        for name in photos:
            files[query, name] = (out / kind / (name + SUFFIX[kind])).read_bytes()
    return files


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    served = Served(tiny_model_dir, "--max-batch", "4", "--max-wait-ms", "200", "--max-body-mb", "1",
                    "--max-pixels", "1000000", "--queue", "32", "--workers", "2")
    yield served
    served.stop()


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_answers_are_the_bytes_hx_infer_run_writes(server, photos, run_files):
    """Sent at once, so the requests share backend calls: batching changes no byte."""
    jobs = [(query, name) for query, _, _ in CASES for name in photos]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: server.post("/api/remove" + job[0], photos[job[1]].read_bytes()), jobs))
    for (query, name), (status, headers, body) in zip(jobs, answers):
        assert status == 200, (query, body)
        assert headers["content-type"] == ("image/jpeg" if "composite" in query else "image/png")
        assert body == run_files[query, name], (query, name)
    _, _, text = server.request("GET", "/metrics")
    text = text.decode()
    assert _metric(text, "hx_batch_size_count") < len(jobs)  # some calls held several photos
    assert _metric(text, 'hx_requests_total{code="200"}') >= len(jobs)


def test_rembg_form(server, photos, run_files):
    photo = photos["wide"].read_bytes()
    body, ctype = multipart({}, photo)
    status, _, answer = server.post("/api/remove", body, {"Content-Type": ctype})
    assert status == 200 and answer == run_files["", "wide"]  # rembg's default: the cutout

    body, ctype = multipart({"om": "true", "model": "u2net"}, photo)  # rembg's model= is ignored
    status, _, answer = server.post("/api/remove", body, {"Content-Type": ctype})
    assert status == 200 and answer == run_files["?output=alpha", "wide"]

    body, ctype = multipart({"bgc": "51,102,153,255"}, photo)  # the cutout on a colour, as PNG
    status, headers, answer = server.post("/api/remove", body, {"Content-Type": ctype})
    assert status == 200 and headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(photos["wide"]).convert("RGB"))
    alpha = np.asarray(Image.open(io.BytesIO(run_files["", "wide"])))[:, :, 3]  # the cutout's matte
    assert answer == encode_png(composite(rgb, alpha, Background(color=(51, 102, 153))))

    body, ctype = multipart({"bgc": "0,0,0,0"}, photo)  # a transparent colour: the plain cutout
    status, _, answer = server.post("/api/remove", body, {"Content-Type": ctype})
    assert status == 200 and answer == run_files["", "wide"]


def test_an_rgb_target_model_answers_its_painted_composite(tiny_rgb_model_dir, photos, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", str(photos["wide"]), str(out), "--model", str(tiny_rgb_model_dir),
                                  "--backend", "ort", "--device", "cpu", "--quiet", "--outputs", "composite"])
    assert r.exit_code == 0, r.output
    served = Served(tiny_rgb_model_dir)
    try:
        status, _, body = served.post("/api/remove", photos["wide"].read_bytes())  # composite: its only kind
        assert status == 200 and body == (out / "composite" / "wide.jpg").read_bytes()
        status, kind, message = _error(served.post("/api/remove?output=rgba", photos["wide"].read_bytes()))
        assert (status, kind) == (400, "bad_parameter") and "target rgb" in message
    finally:
        served.stop()


def _error(answer) -> tuple[int, str, str]:
    status, headers, body = answer
    assert headers["content-type"] == "application/json"
    assert body.count(b"\n") == 1 and body.endswith(b"\n")  # one line
    parsed = json.loads(body)
    return status, parsed["kind"], parsed["error"]


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


BAD = [  # (query, body, headers, status, kind, words in the message)
    ("", b"", {}, 400, "empty_body", "empty body"),
    ("", b"hello, not an image", {}, 415, "not_image", "not an image"),
    ("", "TRUNCATED", {}, 400, "bad_image", "truncated image"),
    ("", _png(1250, 1000), {}, 413, "too_many_pixels", "1250x1000"),
    ("?output=mask", "PHOTO", {}, 400, "bad_parameter", "output='mask'"),
    ("?ouput=alpha", "PHOTO", {}, 400, "bad_parameter", "unknown parameter 'ouput'"),
    ("?format=jpeg", "PHOTO", {}, 400, "bad_parameter", "format=jpeg"),
    ("?output=composite&background=/etc/passwd", "PHOTO", {}, 400, "bad_parameter", "background="),
    ("?output=composite&bgc=1,2,3,255", "PHOTO", {}, 400, "bad_parameter", "not both"),
    ("?bgc=1,2,3,128", "PHOTO", {}, 400, "bad_parameter", "alpha must be 255"),
    ("?refine=sharp", "PHOTO", {}, 400, "bad_parameter", "refine="),
    ("?png_compression=max", "PHOTO", {}, 400, "bad_parameter", "png_compression="),
    ("", "FORM-WITHOUT-FILE", {}, 400, "bad_parameter", "no field 'file'"),
    ("", b"--x\r\ngarbage", {"Content-Type": "multipart/form-data"}, 400, "bad_form", "multipart"),
    ("", b"", {"Content-Type": "multipart/form-data; boundary=x"}, 400, "empty_body", "empty body"),
    ("", b"", {"Content-Type": "multipart/form-data"}, 400, "empty_body", "empty body"),
    ("", "FORM-WITHOUT-CLOSING-BOUNDARY", {}, 400, "truncated_form", "cut short"),
    ("", "FORM-CUT-IN-THE-FILE", {}, 400, "truncated_form", "cut short"),
]


@pytest.mark.parametrize("query, body, headers, status, kind, words", BAD, ids=[b[4] + ":" + b[5][:20] for b in BAD])
def test_bad_requests(server, photos, query, body, headers, status, kind, words):
    photo = photos["wide"].read_bytes()
    if body == "TRUNCATED":
        body = photo[: len(photo) // 2]
    elif body == "PHOTO":
        body = photo
    elif body == "FORM-WITHOUT-FILE":
        body, ctype = multipart({"om": "true"}, None)
        headers = {"Content-Type": ctype}
    elif body in ("FORM-WITHOUT-CLOSING-BOUNDARY", "FORM-CUT-IN-THE-FILE"):  # its Content-Length says what is sent
        form, ctype = multipart({"om": "true"}, photo)
        body = form[: form.rindex(b"--hx-test")] if body == "FORM-WITHOUT-CLOSING-BOUNDARY" else form[: len(form) // 2]
        headers = {"Content-Type": ctype}
    got_status, got_kind, message = _error(server.post("/api/remove" + query, body, headers))
    assert (got_status, got_kind) == (status, kind), message
    assert words in message
    assert server.post("/api/remove", photo)[0] == 200  # and the server goes on


def test_a_too_large_body_is_refused_before_it_is_read(server):
    with server.raw() as sock:  # says 5 MB, sends 1 kB, and waits: the answer must not wait for the rest
        sock.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000)
        status, _, body = read_response(sock)
    assert status == 413 and b"--max-body-mb 1" in body

    with server.raw() as sock:  # chunked, no Content-Length: refused once past the limit
        sock.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            for _ in range(24):  # 1.5 MiB against 1 MiB
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        status, _, body = read_response(sock)
    assert status == 413 and b"body_too_large" in body


def test_health_metrics_and_json_404_405(server):
    health = server.health()
    assert health["status"] == "ok" and health["size"] == 64 and health["queue"] == 32
    status, kind, _ = _error(server.request("GET", "/api/remove"))
    assert (status, kind) == (405, "method_not_allowed")
    status, kind, _ = _error(server.request("GET", "/no/such/page"))
    assert (status, kind) == (404, "not_found")
    status, headers, text = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ("hx_requests_total", "hx_batch_size_bucket", "hx_request_duration_seconds_bucket",
                 "hx_requests_in_server", "hx_photos_waiting"):
        assert name in text.decode()


def _hold_a_slot(served: Served, photo: bytes):
    """A request that has sent its headers and half its body: admitted, holding its slot, and
    "on its way" to the batcher, so the photos already there wait --max-wait-ms for it."""
    sock = served.raw()
    sock.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nContent-Length: %d\r\n\r\n" % len(photo)
                 + photo[: len(photo) // 2])
    return sock


def _two_in_flight(served: Served, photo: bytes):
    """Two requests in flight: one sending its body (_hold_a_slot), and one whose photo waits in
    the batcher for it -> (the first's socket, the second's client thread, [its answer] once
    the thread ends)."""
    uploading = _hold_a_slot(served, photo)
    served.wait_health("in_server", 1)
    answers: list = []
    client = threading.Thread(target=lambda: answers.append(served.post("/api/remove", photo)))
    client.start()
    served.wait_health("waiting", 1)
    return uploading, client, answers


def test_full_queue_answers_503_and_a_client_that_leaves_frees_its_slot(tiny_model_dir, photos):
    served = Served(tiny_model_dir, "--queue", "2", "--max-wait-ms", "3000", "--workers", "1")
    try:
        photo = photos["wide"].read_bytes()
        held, leaving = _hold_a_slot(served, photo), _hold_a_slot(served, photo)
        served.wait_health("in_server", 2)
        status, headers, body = served.post("/api/remove", photo)
        assert status == 503 and headers["retry-after"] == "1" and json.loads(body)["kind"] == "queue_full"
        leaving.close()  # gone while sending its body
        served.wait_health("in_server", 1)

        # Gone while its photo waits (3 s, for the held request): its slot is free at once.
        sock = served.raw()
        sock.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nContent-Length: %d\r\n\r\n" % len(photo) + photo)
        served.wait_health("waiting", 1)
        left = time.monotonic()
        sock.close()
        served.wait_health("in_server", 1)
        assert time.monotonic() - left < 2.5
        held.close()
        served.wait_health("in_server", 0)
        started = time.monotonic()
        assert served.post("/api/remove", photo)[0] == 200
        assert time.monotonic() - started < 2.5  # alone, nobody on the way: no 3 s wait
        _, _, text = served.request("GET", "/metrics")
        assert _metric(text.decode(), 'hx_request_errors_total{kind="disconnected"}') == 3
        assert _metric(text.decode(), 'hx_request_errors_total{kind="queue_full"}') == 1
    finally:
        served.stop()


def test_a_client_that_half_closes_after_its_request_is_taken_as_gone(tiny_model_dir, photos):
    """What the README says of shutdown(SHUT_WR) (`nc -N`): uvicorn closes the connection at the
    client's FIN, which cannot be told from that of a client that closed and left, so the request
    is dropped like a disconnect: no answer, its slot and batch place given back. If a uvicorn
    release starts answering it, this fails: update the README's serve section."""
    served = Served(tiny_model_dir, "--max-wait-ms", "30000")
    try:
        photo = photos["wide"].read_bytes()
        held = _hold_a_slot(served, photo)  # on its way to the batcher: the next photo waits for it
        served.wait_health("in_server", 1)
        half_closed = served.raw()
        half_closed.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nContent-Length: %d\r\n\r\n" % len(photo)
                            + photo)
        served.wait_health("waiting", 1)
        half_closed.shutdown(socket.SHUT_WR)
        assert half_closed.recv(65536) == b""  # closed, unanswered
        half_closed.close()
        served.wait_health("in_server", 1)
        _, _, text = served.request("GET", "/metrics")
        assert _metric(text.decode(), 'hx_request_errors_total{kind="disconnected"}') == 1
        held.close()
    finally:
        served.stop()


def test_sigterm_drains_requests_in_flight_and_exits_0(tiny_model_dir, photos, run_files):
    """At SIGTERM one request is sending its body and another's photo waits for a batch: both are
    answered, then the server exits 0."""
    served = Served(tiny_model_dir, "--max-wait-ms", "1500", "--max-batch", "8")
    photo = photos["wide"].read_bytes()
    uploading, client, answers = _two_in_flight(served, photo)
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    uploading.sendall(photo[len(photo) // 2:])
    status, _, body = read_response(uploading)
    uploading.close()
    assert status == 200 and body == run_files["", "wide"]
    assert served.proc.wait(timeout=60) == 0, "".join(served.log)
    client.join(timeout=30)
    status, _, body = answers[0]
    assert status == 200 and body == run_files["", "wide"]
    log = "".join(served.log)
    assert "SIGTERM: finishing 2 request(s) in flight" in log and "hx-infer: stopped" in log
    assert "Traceback" not in log


def test_access_log_writes_one_line_per_request_to_stdout(tiny_model_dir, photos, tmp_path):
    """uvicorn's access logger was left at serve's log level (warning) and its lines are info:
    --access-log printed nothing."""
    with open(tmp_path / "stdout", "w") as stdout:
        served = Served(tiny_model_dir, "--access-log", stdout=stdout)
        try:
            assert served.post("/api/remove", photos["wide"].read_bytes())[0] == 200
            assert served.request("GET", "/no/such/page")[0] == 404
        finally:
            served.stop()  # drained and exited: its stdout is flushed
    lines = (tmp_path / "stdout").read_text().splitlines()
    assert len(lines) == 2, lines
    assert '"POST /api/remove HTTP/1.1" 200' in lines[0] and '"GET /no/such/page HTTP/1.1" 404' in lines[1]


_SIGNAL_WHILE_LOADING = """
import os, signal, sys, time
import hx_infer
from hx_infer.cli import entry_point

SIG = getattr(signal, sys.argv[1])

def load_model(name):  # the signal comes while the model loads
    os.kill(os.getpid(), SIG)
    time.sleep(60)  # not reached: the handler raises at once

hx_infer.load_model = load_model
signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's Ctrl-C, even if started with SIGINT ignored
sys.argv[1:] = ["serve", "--port", "0"]
entry_point()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_model_loads_stops_in_one_line_exit_0(sig):
    """It was serve's SIGTERM handled as `run`'s: "terminated; run the same command again to
    resume" after a blank line, exit 143. Now a stop like one after start-up: one line, exit 0."""
    done = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_LOADING, sig], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"hx-infer: {sig} before the server was ready: stopped"]


def _junk_uploads() -> list[tuple[bytes, dict[str, str]]]:
    """Uploads that made third-party code write to the server's log: python-multipart's logger,
    libtiff in C ("tempfile.tif: Using code not yet in table."), Pillow's UserWarnings."""
    rgb = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "TIFF", compression="tiff_lzw")
    tiff = buf.getvalue()
    lzw_damaged = tiff[:200] + bytes(b ^ 0x5A for b in tiff[200:len(tiff) // 2]) + tiff[len(tiff) // 2:]
    jpeg = _jpeg(rgb)  # with an EXIF block whose orientation points past the end of the file
    exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0" + b"\x12\x01\x03\0\xe8\x03\0\0\xa0\x0f\0\0"
    bad_exif = jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]
    return [(b"abc", {"Content-Type": "multipart/form-data"}),
            (b"hello", {"Content-Type": "multipart/form-data; boundary=x"}),
            (lzw_damaged, {}), (tiff[: len(tiff) * 2 // 3], {}), (bad_exif, {})]


def test_junk_uploads_leave_only_our_lines_in_the_log(tiny_model_dir):
    """Each junk upload gets its own answer; the log keeps the server's own lines and nothing of
    python-multipart's, libtiff's or Pillow's."""
    served = Served(tiny_model_dir)
    try:
        statuses = [served.post("/api/remove", body, headers)[0] for body, headers in _junk_uploads()]
    finally:
        served.stop()
    assert statuses[:4] == [400, 400, 400, 415] and statuses[4] == 200, statuses
    deadline = time.monotonic() + 10
    while not any("hx-infer: stopped" in line for line in served.log) and time.monotonic() < deadline:
        time.sleep(0.02)  # the reader thread has the last lines still to append
    lines = "".join(served.log).splitlines()
    assert len(lines) == 3, lines
    assert "serving" in lines[0] and "SIGTERM: finishing" in lines[1] and lines[2] == "hx-infer: stopped"


def test_a_port_in_use_is_one_line_exit_2(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", "--model", str(tiny_model_dir), "--device", "cpu",
                                      "--port", str(port)])
    assert_one_line_error(r, f"--port {port}", "cannot listen")


def test_without_the_extra_serve_says_what_to_install(monkeypatch):
    monkeypatch.setattr("hx_infer.serve.EXTRA_MODULES", ("starlette", "hx_no_such_module"))
    assert_one_line_error(CliRunner().invoke(main, ["serve"]), "hx_no_such_module", "pip install 'hx[serve]'")


def test_help_imports_no_web_stack():
    probe = ("import sys, hx_infer.cli; from click.testing import CliRunner; "
             "CliRunner().invoke(hx_infer.cli.main, ['serve', '--help']); "
             "print(sorted({'starlette', 'uvicorn', 'python_multipart', 'prometheus_client'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("option", ["--max-body-mb", "--max-wait-ms", "--drain-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_float_options_refuse_nan_and_inf_in_one_line(tmp_path, option, value):
    """nan passes every bound of a click.FloatRange (no comparison holds for it), and inf is no
    number of ms, MiB or s: both were taken, and the server started with them."""
    assert_one_line_error(CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "none"), option, value]),
                          option, "finite")


@pytest.mark.parametrize("field, flag", [("max_body_mb", "--max-body-mb"), ("max_wait_ms", "--max-wait-ms"),
                                         ("drain_timeout_s", "--drain-timeout")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_options_check_refuses_nan_and_inf(field, flag, value):
    """The Python API (serve(ServeOptions(...))) has no click in front: check() says it."""
    with pytest.raises(ServeError, match=f"{flag} must be a finite number"):
        ServeOptions(**{field: value}).check()


def test_cli_defaults_are_the_options_defaults():
    defaults = main.commands["serve"].make_context("serve", []).params
    assert ServeOptions(**defaults) == ServeOptions()


# --- no server needed -------------------------------------------------------------------------


def test_params():
    assert parse_params([]).output == "rgba" and parse_params([]).format == "png"
    p = parse_params([("output", "composite"), ("background", "336699")])
    assert p.format == "jpeg" and p.background.color == (0x33, 0x66, 0x99) and p.media_type == "image/jpeg"
    assert parse_params([("output", "composite"), ("format", "png")]).format == "png"
    assert parse_params([("background", "Teal")]).background.color == (0, 128, 128)  # CSS names, as run
    with pytest.raises(RequestError, match="CSS colour name"):
        parse_params([("background", "README.md")])  # a file of the server's is never read
    assert parse_params([("om", "false")]).output == "rgba"
    p = parse_params([("bgc", "255,255,255,255")])
    assert (p.output, p.format, p.background.color) == ("composite", "png", (255, 255, 255))
    with pytest.raises(RequestError, match="given twice"):
        parse_params([("output", "alpha"), ("output", "rgba")])
    with pytest.raises(RequestError, match="target rgb"):
        parse_params([("output", "rgba")], target="rgb")
    assert parse_params([], target="rgb").output == "composite"


def test_batcher_gathers_up_to_max_batch_and_waits_at_most_max_wait():
    sizes = []

    def infer(x):  # [N, 3, S, S] -> [N, 1, S, S]: each photo's own mean, to check the order
        return x.mean(axis=(1, 2, 3), keepdims=True)[:, :1] * np.ones((1, 1, 2, 2), np.float32)

    async def scenario():
        batcher = DynamicBatcher(infer, max_batch=3, max_wait_s=0.3, on_batch=sizes.append)
        batcher.start()
        xs = [np.full((3, 2, 2), i, np.float32) for i in range(7)]
        outs = await asyncio.gather(*(batcher.infer(x) for x in xs))  # 7 at once: 3 + 3 + 1
        started = time.monotonic()
        lone = await batcher.infer(xs[1])  # alone: sent after max_wait, not before
        waited = time.monotonic() - started
        await batcher.close()
        return outs, lone, waited

    outs, lone, waited = asyncio.run(scenario())
    assert [float(o[0, 0, 0]) for o in outs] == list(range(7))
    assert sizes == [3, 3, 1, 1]
    assert float(lone[0, 0, 0]) == 1 and 0.25 < waited < 2


def test_batcher_sends_a_lone_photo_at_once_when_no_other_is_coming():
    coming = [1]

    async def scenario():
        batcher = DynamicBatcher(lambda x: x[:, :1], max_batch=4, max_wait_s=1.0, coming=lambda: coming[0])
        batcher.start()
        started = time.monotonic()
        await batcher.infer(np.zeros((3, 2, 2), np.float32))  # one photo said to be on its way: waits
        waited_for_company = time.monotonic() - started
        coming[0] = 0
        started = time.monotonic()
        await batcher.infer(np.zeros((3, 2, 2), np.float32))  # nobody on the way: no wait
        alone = time.monotonic() - started
        await batcher.close()
        return waited_for_company, alone

    waited_for_company, alone = asyncio.run(scenario())
    assert waited_for_company > 0.9 and alone < 0.5


def test_batcher_leaves_out_cancelled_requests():
    sizes = []

    async def scenario():
        batcher = DynamicBatcher(lambda x: x[:, :1], max_batch=4, max_wait_s=0.2, on_batch=sizes.append)
        batcher.start()
        gone = asyncio.ensure_future(batcher.infer(np.zeros((3, 2, 2), np.float32)))
        kept = asyncio.ensure_future(batcher.infer(np.ones((3, 2, 2), np.float32)))
        await asyncio.sleep(0.05)
        gone.cancel()  # its client went away while it waited
        out = await kept
        await batcher.close()
        return out

    assert float(asyncio.run(scenario())[0, 0, 0]) == 1
    assert sizes == [1]


def test_the_servers_ort_backend_does_not_spin(tiny_model_dir):
    """Spinning ORT threads between requests took 49 CPU ms per request at concurrency 1 (11 without)."""
    from hx_infer import load_model
    from hx_infer.backends.base import BackendSpec, open_backend

    model = load_model(tiny_model_dir)
    key = "session.intra_op.allow_spinning"
    with open_backend(model, BackendSpec("ort", "cpu", spin=False)) as backend:
        assert backend._session.get_session_options().get_session_config_entry(key) == "0"
    with open_backend(model, BackendSpec("ort", "cpu")) as backend:  # run's default: ONNX Runtime's own (spinning)
        with pytest.raises(RuntimeError, match="does not have configuration"):
            backend._session.get_session_options().get_session_config_entry(key)


def test_the_listening_socket_says_tcp_so_answers_are_not_held_back():
    """asyncio sets TCP_NODELAY only on sockets created with IPPROTO_TCP; with proto 0 every answer
    waited for the client's delayed ACK (/healthz took 44 ms on a keep-alive connection, 0.3 ms now)."""
    from hx_infer.serve.server import _listen

    with _listen("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        sock.listen()
        with socket.create_connection(sock.getsockname()[:2]):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP


@contextlib.contextmanager
def _in_process(app):
    """The app on uvicorn in a thread of this process -> its (host, port)."""
    import uvicorn

    from hx_infer.serve.server import _listen

    sock = _listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_a_backend_failure_is_a_500_for_its_batch_only(tiny_model_dir, photos):
    """In process, over a backend whose first call fails."""
    import http.client

    from hx_infer import load_model
    from hx_infer.serve.app import create_app

    class FailsOnce:
        name, device, calls = "fails-once", "cpu", 0

        def infer(self, x):  # [N, 3, 64, 64] -> [N, 1, 64, 64]
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise RuntimeError("the device went away")
            return np.ones((len(x), 1, 64, 64), np.float32)

    logged: list[str] = []
    app = create_app(load_model(tiny_model_dir), FailsOnce(), ServeOptions(), workers=1, log=logged.append)
    with _in_process(app) as address:

        def post() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(*address, timeout=30)
            conn.request("POST", "/api/remove?output=alpha", body=photos["wide"].read_bytes())
            response = conn.getresponse()
            return response.status, response.read()

        status, body = post()
        assert status == 500 and json.loads(body) == {"error": "internal error: RuntimeError", "kind": "internal"}
        assert logged == ["hx-infer: internal error on a request: RuntimeError: the device went away"]
        status, body = post()
        assert status == 200 and np.asarray(Image.open(io.BytesIO(body))).min() == 255  # the matte of ones


def test_a_content_length_larger_than_the_body_sent_is_a_408(tiny_model_dir, photos, monkeypatch):
    """As the README says: the server cannot tell a short body from a slow one, so it waits
    (BODY_TIMEOUT_S, 60 s; 0.5 s here) and answers 408 timeout, not a 400 from a cut-short form."""
    import types

    from hx_infer import load_model
    from hx_infer.serve import app as app_module

    monkeypatch.setattr(app_module, "BODY_TIMEOUT_S", 0.5)
    unused = types.SimpleNamespace(name="unused", device="cpu", infer=None)
    app = app_module.create_app(load_model(tiny_model_dir), unused, ServeOptions(), workers=1)
    form, ctype = multipart({"om": "true"}, photos["wide"].read_bytes())
    with _in_process(app) as address, socket.create_connection(address, timeout=30) as sock:
        sock.sendall(b"POST /api/remove HTTP/1.1\r\nHost: hx\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                     % (ctype.encode(), len(form) + 100) + form)
        status, kind, message = _error(read_response(sock))
    assert (status, kind) == (408, "timeout") and "not received" in message


@pytest.mark.parametrize("query, output", [("", "rgba"), ("?output=alpha", "alpha"),
                                           ("?output=composite&background=%23336699", "composite")])
def test_answers_are_the_bytes_hx_infer_cut_writes(server, photos, tiny_model_dir, tmp_path, query, output):
    out = tmp_path / ("cut.jpg" if output == "composite" else "cut.png")
    r = CliRunner().invoke(main, ["cut", str(photos["tall"]), str(out), "--output", output, "--model",
                                  str(tiny_model_dir), "--backend", "ort", "--device", "cpu", "--background", "#336699"])
    assert r.exit_code == 0, r.output
    status, _, body = server.post("/api/remove" + query, photos["tall"].read_bytes())
    assert status == 200 and body == out.read_bytes()


@pytest.mark.parametrize("how", ["drain-timeout", "second-ctrl-c"])
def test_requests_cut_short_by_a_stop_get_a_json_503(tiny_model_dir, photos, how):
    """--drain-timeout runs out (uvicorn cancels the requests) or a second Ctrl-C (asyncio.run
    cancels them): each is answered 503 shutting_down in one JSON line, and no traceback is logged.
    One request is sending its body, the other's photo waits 30 s for it to share a batch."""
    served = Served(tiny_model_dir, "--max-wait-ms", "30000", "--drain-timeout", "0.5")
    photo = photos["wide"].read_bytes()
    uploading, client, answers = _two_in_flight(served, photo)
    if how == "drain-timeout":
        served.proc.send_signal(signal.SIGTERM)
    else:
        served.proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        served.proc.send_signal(signal.SIGINT)
    try:
        code = served.proc.wait(timeout=60)
        client.join(timeout=30)
        for status, headers, body in (read_response(uploading), answers[0]):
            status, kind, message = _error((status, headers, body))
            assert (status, kind) == (503, "shutting_down") and "stopping" in message
    finally:
        uploading.close()
        served.stop()
    log = "".join(served.log)
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert code == 0, log


def test_sigterm_drains_even_when_stderr_is_a_broken_pipe(tiny_model_dir, photos, run_files):
    """`hx-infer serve 2>&1 | head -1`: once the reader has gone, each log line fails to write. The
    "finishing ... in flight" line, written from the signal handler, made SIGTERM a BrokenPipeError:
    the requests in flight got a 500 at once and the server exited 1."""
    command = [sys.executable, "-m", "hx_infer.cli", "serve", "--model", str(tiny_model_dir), "--host", "127.0.0.1",
               "--port", "0", "--backend", "ort", "--device", "cpu", "--max-wait-ms", "1500"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line
        proc.stderr.close()  # the reader goes away: every later write to stderr is EPIPE
        served = Served.__new__(Served)  # its client methods only, on the port the line names
        served.port = int(line.rsplit(":", 1)[1])
        photo = photos["wide"].read_bytes()
        uploading = _hold_a_slot(served, photo)
        served.wait_health("in_server", 1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        uploading.sendall(photo[len(photo) // 2:])
        status, _, body = read_response(uploading)
        uploading.close()
        assert status == 200 and body == run_files["", "wide"]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
