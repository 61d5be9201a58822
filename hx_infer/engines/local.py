"""The local engine: `hx-infer run` in this process, photos streaming through thread pools.

    plan_jobs (listing, collisions, resume)         lazily, in sorted order
      -> decode pool (--workers threads): stages.decode(job)
      -> FIFO of decode futures, at most batch + workers in flight, consumed in input order
      -> batches of batch_size -> stages.submit(batch) on this thread (the backend runs here)
      -> write pool: stages.finish(item, out): un-letterbox, compose, encode, atomic write
      -> Outcomes (tally, progress bar, log) -> the report
    videos: planned with the photos, run after them one at a time (hx_infer.run.videos)

Memory is flat however many photos there are: every stage is bounded, nothing per successful
file is kept, and folders are listed as they are walked. Because the decode FIFO is consumed in
input order, a batch holds the same photos whichever decode thread finishes first; the backends
give each photo the same output whatever else is in its batch, so a resumed run writes the same
bytes as an uninterrupted one.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable

from ..backends.base import Backend, BackendHandle, default_batch_size
from ..io.video import is_video_name
from ..model import ModelDir
from ..run.config import RunConfig
from ..run.claim import claim_output
from ..run.outcomes import Outcomes, finish_report
from ..run.photos import CpuStages, Stages
from ..run.plan import Failed, Job, Skipped, plan_jobs
from ..run.videos import VideoRuns


def choose_stages(config: RunConfig, backend: Backend, model: ModelDir) -> Stages:
    """On CUDA the pixel work moves to the GPU (two streams, pinned buffers, nvJPEG when
    torchvision is there); --refine guided, and every CPU run, keep the numpy stages."""
    if backend.device.cuda and config.options.refine == "none":
        from ..run.device import DeviceStages  # imports torch, which a CPU run never needs

        return DeviceStages(config, backend, model)
    return CpuStages(config, backend, model)


class LocalEngine:
    """Runs the job here: the handle's backend opens in this process (and stays open for the
    next run of the same Extractor)."""

    name = "local"

    def run(self, config: RunConfig, handle: BackendHandle, log: Callable[[str], None] | None = None) -> dict:
        start = time.perf_counter()
        backend, model = handle.backend, handle.model  # a backend that cannot open leaves OUTPUT untouched
        batch_size = backend.batch_size or default_batch_size(backend.device)
        with claim_output(config, model) as claim:  # writable, locked, same settings, cleaned
            outcomes = Outcomes(config, log, claim.index)
            videos = VideoRuns(config, backend, model, batch_size, log)  # run after the photos, one at a time
            try:
                _PhotoLoop(choose_stages(config, backend, model), batch_size, config.workers, outcomes).run(
                    config, videos)
                videos.run(outcomes)
            finally:
                outcomes.close()
            return finish_report(config, model, outcomes.tally, time.perf_counter() - start, engine=self.name,
                                 backend=backend.name, device=str(backend.device), batch_size=batch_size,
                                 **videos.facts())


# What decoded photos waiting for the model or their writer may hold at once. A count alone
# (batch + workers) is no bound: --batch-size 10**9 would keep every photo of the run, and one
# 24-megapixel photo is 72 MB. 512 MiB holds a few thousand ordinary photos, or seven huge ones.
IN_FLIGHT_BYTES = 512 << 20
# Threads per pool, whatever --workers says: past this, more threads add memory, not speed.
MAX_THREADS = 256


def _nbytes(item: Any) -> int:
    """Bytes of the arrays a decoded photo carries (its model input, and its pixels if kept)."""
    return sum(getattr(getattr(item, name, None), "nbytes", 0) for name in ("x", "rgb"))


class _PhotoLoop:
    """Planned photos through decode pool -> batches -> write pool, each stage bounded by count
    and, all stages together, by IN_FLIGHT_BYTES (a decode still running counts as the largest
    photo seen so far)."""

    def __init__(self, stages: Stages, batch_size: int, workers: int, outcomes: Outcomes):
        self.stages, self.batch_size, self.outcomes = stages, batch_size, outcomes
        self.max_in_flight = batch_size + workers
        threads = min(workers, MAX_THREADS)
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="hx-decode")
        self.write_pool = ThreadPoolExecutor(threads, thread_name_prefix="hx-write")
        self.decoding: deque[Future] = deque()
        self.writing: deque[tuple[Future, int, Job]] = deque()  # (finish future, bytes it holds, its job)
        self.batch: list[Any] = []
        self.batch_bytes = 0
        self.held = 0  # bytes of decoded photos not yet written (in the batch or being written)
        self.largest = 0  # the largest decoded photo so far: what a running decode may bring

    def run(self, config: RunConfig, videos: VideoRuns) -> None:
        try:
            for planned in plan_jobs(config, self.outcomes.index):
                if isinstance(planned, Skipped):
                    self.outcomes.skipped(planned)
                elif isinstance(planned, Failed):
                    self.outcomes.failed(planned)
                elif is_video_name(planned.src.name):
                    videos.add(planned)
                else:
                    self.decoding.append(self.decode_pool.submit(self.stages.decode, planned))
                    # Consume in submission order: the batches do not depend on thread timing.
                    while self.decoding and self._over_budget():
                        self._collect_decode(self.decoding.popleft())
                    if self.held > IN_FLIGHT_BYTES and self.batch:
                        self._submit()  # a batch this large is inferred as it is
            while self.decoding:
                self._collect_decode(self.decoding.popleft())
            if self.batch:
                self._submit()
            self._queue_writes(self.stages.flush())
            while self.writing:
                self._collect_write(*self.writing.popleft())
        finally:
            # On an error or Ctrl-C: drop queued work, let running writes finish (each is atomic).
            self.decode_pool.shutdown(wait=True, cancel_futures=True)
            self.write_pool.shutdown(wait=True, cancel_futures=True)

    def _over_budget(self) -> bool:
        if self.largest == 0:  # nothing measured yet: learn a photo's size before decoding more
            return len(self.decoding) > 1
        expected = self.held + len(self.decoding) * self.largest
        return len(self.decoding) > self.max_in_flight or expected > IN_FLIGHT_BYTES

    def _collect_decode(self, future: Future) -> None:
        result = future.result()
        if isinstance(result, Failed):
            self.outcomes.failed(result)
            return
        size = _nbytes(result)
        self.largest = max(self.largest, size)
        self.held += size
        self.batch.append(result)
        self.batch_bytes += size
        if len(self.batch) == self.batch_size or self.batch_bytes >= IN_FLIGHT_BYTES // 2:
            self._submit()

    def _submit(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self._queue_writes(self.stages.submit(batch))

    def _queue_writes(self, results: Iterable[tuple[Any, Any]]) -> None:
        for item, out in results:
            job = item if isinstance(item, Job) else item.job  # the device stages' items are their jobs
            self.writing.append((self.write_pool.submit(self.stages.finish, item, out), _nbytes(item), job))
        while self.writing and (len(self.writing) > self.max_in_flight or self.held > IN_FLIGHT_BYTES):
            self._collect_write(*self.writing.popleft())

    def _collect_write(self, future: Future, size: int, job: Job) -> None:
        failure = future.result()
        self.held -= size
        if failure is None:
            self.outcomes.processed(job)
        else:
            self.outcomes.failed(failure)
