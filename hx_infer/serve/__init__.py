"""`hx-infer serve`: an HTTP endpoint that gathers concurrent requests into batches for the model.

    request -> admission (at most --queue in the server; else 503 + Retry-After)
      -> body, bounded by --max-body-mb (413 from Content-Length, before reading it)
      -> thread pool: parse the form, check the header's pixels, decode + letterbox   [3, S, S]
      -> DynamicBatcher: wait at most --max-wait-ms for more, one backend call of at most
         --max-batch                                                                  [N, 3, S, S]
      -> thread pool: un-letterbox, refine, compose, encode (the functions `hx-infer run` uses)
      -> the file's bytes as the response

The event loop only moves bytes and futures; every pixel is touched in the pools, and the backend
runs on a thread of its own. Needs the `serve` extra (Starlette, uvicorn, python-multipart,
prometheus-client); this module imports none of them, so the CLI can say what is missing.
"""
from __future__ import annotations

from .options import ServeOptions, ServeError

__all__ = ["ServeOptions", "ServeError", "missing_extra", "serve"]

EXTRA_MODULES = ("starlette", "uvicorn", "python_multipart", "prometheus_client")


def missing_extra() -> str | None:
    """The first module of the `serve` extra that is not installed, or None."""
    import importlib.util

    return next((name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None), None)


def serve(options: ServeOptions, log=print) -> None:
    """Load the model, listen, answer until SIGTERM or SIGINT, then drain and return."""
    from .server import run_server

    run_server(options, log=log)
