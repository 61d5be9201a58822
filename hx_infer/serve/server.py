"""Open the model, listen, serve with uvicorn until SIGTERM / SIGINT, drain, return.

uvicorn does the HTTP and the graceful stop: on SIGTERM it stops accepting, closes idle
connections, lets requests in flight finish (at most --drain-timeout), then runs the app's
shutdown. The model is loaded and warmed up before the socket opens, so a client never meets a
server that is still loading.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import warnings
from typing import Callable

import numpy as np
import uvicorn

from .app import create_app
from .options import ServeError, ServeOptions


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, not in uvicorn, so a taken port is one line (ServeError) and port 0 is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every answer waited ~40 ms for the client's delayed ACK (44 ms for /healthz on keep-alive).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


# They log what is wrong with a client's upload ("No boundary given", a TIFF's bad samples count).
_UPLOAD_LOGGERS = ("python_multipart", "PIL")


def _quiet_about_uploads() -> None:
    """What a malformed upload makes python-multipart, Pillow and libtiff say stays out of the
    log: the request gets its own one-line answer, and the log is for the server's own lines
    (ours and uvicorn's). Process-wide: it is the server's process."""
    for name in _UPLOAD_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"PIL\.")  # "Corrupt EXIF data", "Truncated File Read"
    _quiet_libtiff()


def _quiet_libtiff() -> None:
    """libtiff writes its warnings and errors to stderr itself, in C ("tempfile.tif: Using code not
    yet in table."), past logging and warnings: give the copy Pillow loaded no handlers."""
    from PIL import Image  # noqa: F401 - Pillow's C module, which loads libtiff

    for path in _loaded_libtiffs():
        try:
            lib = ctypes.CDLL(path)  # the copy already loaded, not a second one
            setters = (lib.TIFFSetWarningHandler, lib.TIFFSetErrorHandler)
        except (OSError, AttributeError):  # not libtiff itself (libtiffxx)
            continue
        for set_handler in setters:
            set_handler.restype, set_handler.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
            set_handler(None)  # no handler: libtiff says nothing


def _loaded_libtiffs() -> set[str]:
    """The paths of the libtiffs in this process, from /proc/self/maps: Pillow's wheels carry a
    renamed one (pillow.libs/libtiff-<hash>.so), which no library search finds. None where there
    is no /proc (macOS): there libtiff's lines stay."""
    try:
        with open("/proc/self/maps") as maps:
            return {line.split(maxsplit=5)[-1].strip() for line in maps if "/libtiff" in line}
    except OSError:
        return set()


class _Server(uvicorn.Server):
    log: Callable[[str], None] = print

    def handle_exit(self, sig: int, frame) -> None:
        if not self.should_exit:
            service = self.config.app.state.service
            self.log(f"hx-infer: {signal.Signals(sig).name}: finishing {service.in_server} request(s) "
                     "in flight, then stopping")
        super().handle_exit(sig, frame)


def _unbreakable(log: Callable[[str], None]) -> Callable[[str], None]:
    """log, made unable to raise: stderr can be a pipe whose reader has gone (`2>&1 | head`) or a
    full disk, and a line that cannot be written must not fail a request or the stop. Above all
    in the signal handler, where an exception would break uvicorn's drain."""

    def write(line: str) -> None:
        try:
            log(line)
        except Exception:  # noqa: BLE001 - nowhere left to say it
            pass

    return write


def run_server(options: ServeOptions, log: Callable[[str], None] = print) -> None:
    from .. import load_model
    from ..backends.base import BackendSpec, open_backend

    options.check()
    log = _unbreakable(log)
    _quiet_about_uploads()
    model = load_model(options.model)
    # spin=False (ort on CPU): idle threads spinning between requests would take the decoders' cores.
    backend = open_backend(model, BackendSpec(options.backend, options.device, batch_size=options.max_batch,
                                              spin=False))
    try:
        backend.infer(np.zeros((1, 3, model.size, model.size), np.float32))  # warm-up: lazy init, first-call costs
        workers = options.workers or len(os.sched_getaffinity(0))
        app = create_app(model, backend, options, workers, log)
        sock = _listen(options.host, options.port)
        server = _Server(_uvicorn_config(app, options))
        server.log = log
        # uvicorn re-raises the signal it stopped on once it has drained, to the handler it found:
        # with the default one that would kill the process. This one stops the server instead (a
        # no-op by then, so a drained stop exits 0), and also covers a signal that comes before
        # uvicorn has put its own in place.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, server.handle_exit)
        host, port = sock.getsockname()[:2]
        where = f"[{host}]" if ":" in host else host
        asyncio.run(_serve(server, sock, lambda: log(
            f"hx-infer: serving {model.root} ({backend.describe()}; batches of up to {options.max_batch}, "
            f"waiting up to {options.max_wait_ms:g} ms; {workers} pixel threads) on http://{where}:{port}")))
        log("hx-infer: stopped")
    finally:
        backend.close()


def _uvicorn_config(app, options: ServeOptions) -> uvicorn.Config:
    config = uvicorn.Config(app, log_level="warning", access_log=options.access_log, lifespan="on",
                            timeout_graceful_shutdown=options.drain_timeout_s)
    if options.access_log:
        # log_level="warning" keeps uvicorn's own info lines ("Started server process", ...) out of
        # the log, but uvicorn gives the access logger that level too, and its lines are info.
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    return config


async def _serve(server: uvicorn.Server, sock: socket.socket, announce: Callable[[], None]) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        announce()
    await task
    if server.started and server.force_exit:
        # A second Ctrl-C: uvicorn returns without cancelling the requests in flight or running the
        # app's shutdown, and asyncio.run would cancel both, the app's lifespan with a logged
        # traceback. Do instead what uvicorn does when --drain-timeout runs out: cancel the
        # requests (each answers 503 shutting_down), then shut the app down (batcher, pixel pool).
        requests = list(server.server_state.tasks)
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        await server.lifespan.shutdown()
