"""Dynamic batching: photos of concurrent requests gathered into one backend call.

A batch starts with the oldest waiting photo and takes whatever else is waiting, then waits for
more until that first photo has waited max_wait_s, or until it holds max_batch photos, or until
no other photo is on its way (its request's body or decode under way): a lone request does not wait for company that is
not coming. While the backend runs a batch, the next one gathers, so under load batches fill
without waiting at all.
The backend runs on one thread of its own: one call at a time, each using all the cores it is
given, and the event loop never blocks on it.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class _Waiting:
    x: np.ndarray  # [3, S, S] float32
    future: asyncio.Future
    since: float  # loop.time() when it arrived


class DynamicBatcher:
    """infer_batch: [N, 3, S, S] float32 -> [N, C, S, S] float32 (a backend's infer). Use from one
    event loop: `start()` in it, `await infer(x)` per photo, `await close()` at the end."""

    def __init__(self, infer_batch: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int], None] | None = None, coming: Callable[[], int] | None = None):
        """coming: how many photos are on their way to infer() (None: always wait max_wait_s)."""
        self._infer_batch = infer_batch
        self._coming = coming
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch  # hears each batch's size (metrics)
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task | None = None
        self._gathering: list[_Waiting] = []  # the batch being gathered (out of the queue already)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hx-backend")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._gather_and_run(), name="hx-batcher")

    @property
    def waiting(self) -> int:
        """Photos decoded and waiting for a backend call."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return queued + sum(not item.future.done() for item in self._gathering)

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """x: [3, S, S] float32 -> [C, S, S] float32. Cancelling the await (a client that went away)
        takes the photo out of any batch not yet sent to the backend."""
        if self._task is None or self._task.done():
            raise RuntimeError("DynamicBatcher: not running")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put_nowait(_Waiting(x, future, loop.time()))
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    async def _gather(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        batch = self._gathering = [first]
        deadline = first.since + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0 or (self._coming is not None and self._coming() <= 0):
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        self._gathering = []
        return [item for item in batch if not item.future.done()]  # done: cancelled by its request

    def _run(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self._infer_batch(np.stack(xs)))  # [N, 3, S, S] -> [N, C, S, S]

    async def _gather_and_run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                out = await loop.run_in_executor(self._thread, self._run, [item.x for item in batch])
            except Exception as e:  # noqa: BLE001 - the requests of this batch fail; the server goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            for item, item_out in zip(batch, out):
                if not item.future.done():
                    item.future.set_result(item_out)
