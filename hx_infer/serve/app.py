"""The Starlette app: POST /api/remove, GET /healthz, GET /metrics.

Every refusal is a one-line JSON body {"error": "...", "kind": "..."} with a 4xx/5xx status;
nothing a client sends can stop the server or make it decode an image it has not admitted.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.base import Backend
from ..model import ModelDir
from .batcher import DynamicBatcher
from .form import image_and_params
from .metrics import Metrics
from .options import ServeOptions
from .params import RequestError
from .stages import decode, encode

BODY_TIMEOUT_S = 60.0  # a client that sends its body slower than this gives its slot back
RETRY_AFTER_S = 1
_HTTP_KINDS = {404: "not_found", 405: "method_not_allowed"}


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message, "kind": kind}) + "\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class RemoveService:
    """The state behind the routes: the model's batcher, the pixel pool, admission, metrics."""

    def __init__(self, model: ModelDir, backend: Backend, options: ServeOptions, workers: int,
                 log: Callable[[str], None]):
        self.model, self.backend, self.options = model, backend, options
        self.log = log  # one line per internal error (a bug or a backend failure)
        self.in_server = 0  # admitted requests; only the event loop's thread changes it
        self.decoded = 0  # of those, the ones whose photo is decoded (at the batcher, or encoding)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="hx-pixels")
        self.metrics = Metrics(in_server=lambda: self.in_server, waiting=lambda: self.batcher.waiting)
        self.batcher = DynamicBatcher(backend.infer, options.max_batch, options.max_wait_ms / 1000,
                                      on_batch=self.metrics.batch_size.observe, coming=self.coming)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.batcher.start()
        try:
            yield
        finally:  # after uvicorn has drained the in-flight requests
            await self.batcher.close()
            # What is still queued belongs to requests cut short (cancelled): drop it; a decode
            # under way cannot be stopped, so it is waited for.
            self.pool.shutdown(wait=True, cancel_futures=True)

    def refuse(self, e: RequestError, headers: dict[str, str] | None = None) -> Response:
        self.metrics.failed(e.kind)
        self.metrics.answered(e.status)
        return error_response(e.status, e.kind, e.message, headers)

    async def remove(self, request: Request) -> Response:
        limit = self.options.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return self.refuse(_too_large(int(length), self.options))  # the body is never read
        if self.in_server >= self.options.queue:
            return self.refuse(RequestError(503, "queue_full", f"the server holds {self.options.queue} requests "
                                            f"(--queue); retry in {RETRY_AFTER_S} s"),
                               headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_server += 1
        started = time.perf_counter()
        try:
            data, media_type = await self._remove(request, limit)
        except RequestError as e:
            return self.refuse(e)
        except ClientDisconnect:
            self.metrics.failed("disconnected")
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        except asyncio.CancelledError:
            # The server stops before this request is done: uvicorn cancels it when --drain-timeout
            # runs out, asyncio.run after a second Ctrl-C. Nothing else cancels a request's task.
            # Left to propagate, uvicorn would log a traceback and send a plain-text 500; answered
            # here, the task ends normally, which is all either of them waits for (neither awaits
            # it to end cancelled). Its photo has already left the batcher (_remove cancels it).
            return self.refuse(RequestError(503, "shutting_down", "the server is stopping before this request "
                                            f"was done; retry in {RETRY_AFTER_S} s"),
                               headers={"Retry-After": str(RETRY_AFTER_S)})
        except Exception as e:  # noqa: BLE001 - a bug or a backend failure: this request only
            self.log(f"hx-infer: internal error on a request: {type(e).__name__}: {e}")
            return self.refuse(RequestError(500, "internal", f"internal error: {type(e).__name__}"))
        finally:
            self.in_server -= 1
        self.metrics.answered(200, time.perf_counter() - started)
        return Response(data, media_type=media_type)

    async def _remove(self, request: Request, limit: int) -> tuple[bytes, str]:
        try:
            body = await asyncio.wait_for(_read_body(request, limit, self.options), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise RequestError(408, "timeout", f"request body not received within {BODY_TIMEOUT_S:.0f} s") from None
        work = asyncio.ensure_future(self._work(body, request.headers.get("content-type", ""),
                                                request.query_params.multi_items()))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            finished = work.done()
            if not finished:  # the client went away (or the server stops): its photo leaves the queue
                work.cancel()
        if not finished:
            raise ClientDisconnect()
        return work.result()

    async def _work(self, body: bytes, content_type: str, query: list[tuple[str, str]]) -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        size, target = self.model.size, self.model.target

        def prepare():
            image, params = image_and_params(body, content_type, query, target)
            return decode(image, params, size, target, self.options.max_pixels), params

        decoded, params = await loop.run_in_executor(self.pool, prepare)
        self.decoded += 1
        try:
            out = await self.batcher.infer(decoded.x)
            data = await loop.run_in_executor(self.pool, encode, decoded, out, params, size, target)
        finally:
            self.decoded -= 1
        return data, params.media_type

    def coming(self) -> int:
        """Admitted requests whose photo has yet to reach the batcher (its body or decode under way)."""
        return self.in_server - self.decoded

    async def healthz(self, request: Request) -> Response:
        facts = {"status": "ok", "model": str(self.model.root), "sha256": self.model.sha256,
                 "size": self.model.size, "backend": self.backend.name, "device": str(self.backend.device),
                 "max_batch": self.options.max_batch, "in_server": self.in_server, "queue": self.options.queue,
                 "waiting": self.batcher.waiting}
        return Response(json.dumps(facts) + "\n", media_type="application/json")

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.text(), media_type=self.metrics.content_type)

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        kind = _HTTP_KINDS.get(exc.status_code, "http")
        self.metrics.answered(exc.status_code)
        return error_response(exc.status_code, kind, f"{request.method} {request.url.path}: {exc.detail}",
                              headers=exc.headers)


def _too_large(size: int, options: ServeOptions) -> RequestError:
    return RequestError(413, "body_too_large", f"body of {size / 2**20:.1f} MiB is over the server's "
                                               f"--max-body-mb {options.max_body_mb:g}")


async def _read_body(request: Request, limit: int, options: ServeOptions) -> bytes:
    """The body, refused as soon as it passes `limit` (chunked bodies have no Content-Length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, options)
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body is read: only that can come now)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(model: ModelDir, backend: Backend, options: ServeOptions, workers: int,
               log: Callable[[str], None] = print) -> Starlette:
    service = RemoveService(model, backend, options, workers, log)
    routes = [Route("/api/remove", service.remove, methods=["POST"]),
              Route("/healthz", service.healthz, methods=["GET"]),
              Route("/metrics", service.metrics_text, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: service.http_error},
                    lifespan=service.lifespan)
    app.state.service = service
    return app
