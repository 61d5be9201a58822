"""The video run: one video file -> its matte, cutout and composite videos, frame for frame.

    reader thread: demux + decode (io.video.VideoReader) -> upright + letterbox   [3, S, S] float32
                   (+ a 32 x 32 thumbnail for cut detection); audio packets pass through in order
    this thread:   batch [N, 3, S, S] -> backend.infer -> [N, C, S, S] -> temporal average (S x S)
    writer thread: un-letterbox, rotate back, refine, compose, encode, mux (+ the audio packets)
                   into temporaries, renamed into place once the last frame is in

Every queue is bounded (two batches, or fewer frames of a large video: QUEUE_BYTES), so memory
does not grow with the video's length.
The local engine plans videos with the photos (hx_infer.run.plan) and hands each to run_video,
after the photos; a video counts as one file in the report (processed, skipped or failed), its
frames are added. Which file each kind goes to, and its encoding, is the kinds table's.

Output layout, for a video <rel>/<stem>.<ext> below INPUT:
    OUTPUT/alpha/<rel>/<stem>.mp4        grey matte, H.264 (--lossless: <stem>.mkv, FFV1)
    OUTPUT/composite/<rel>/<stem>.mp4    the person on --background, H.264 (--lossless: .mkv, FFV1)
    OUTPUT/rgba/<rel>/<stem>.mov         ProRes 4444 with alpha (rgba="vp9": <stem>.webm,
                                         VP9 with alpha; rgba="png": <stem>/000000.png ...)
Resume is per whole video: a video is skipped when all its outputs exist, and redone when any
is missing (a killed run leaves only temporaries, which the next run removes).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..backends.base import Backend
from ..compose import Background
from ..io.images import WriteError
from ..io.video import AudioPacket, Frame, VideoError, VideoInfo, VideoReader, VideoWriter, open_writer
from ..model import ModelDir
from ..progress import Progress
from ..temporal import TemporalSmoother, thumbnail
from ..transforms import Letterbox, letterbox, unletterbox
from .backgrounds import VideoBackground
from .config import RunConfig
from .kinds import KINDS, NumpyPixels, video_encoding, video_output_path
from .outcomes import Outcomes
from .photos import compose_outputs
from .plan import Failed, Job

# Decoded frames waiting in each queue take at most about this much (a 4K frame is 25 MB): a
# queue holds two batches of frames, or fewer when they are large, and never less than two.
QUEUE_BYTES = 256 << 20


@dataclass(frozen=True)
class VideoDone:
    frames: int
    seconds: float


class VideoRuns:
    """The videos of a run: an engine add()s each planned video job, run()s them when its photos
    are done, and puts facts() in the report. Each video is batched on its own, so it never
    waits for photos to fill a batch, nor photos for it."""

    def __init__(self, config: RunConfig, backend: Backend, model: ModelDir, batch_size: int,
                 log: Callable[[str], None] | None = None):
        self.config, self.backend, self.model, self.batch_size, self.log = config, backend, model, batch_size, log
        self.jobs: list[Job] = []  # a path each: small beside the photos' stream
        self.frames = 0
        self.seconds = 0.0
        self.rgba_bytes = 0  # of the rgba videos written (ProRes 4444 runs to GBs a minute)

    def add(self, job: Job) -> None:
        self.jobs.append(job)

    def run(self, outcomes: Outcomes) -> None:
        while self.jobs:
            job = self.jobs.pop(0)
            result = run_video(job, self.config, self.backend, self.model, self.batch_size, self.log)
            if isinstance(result, str):
                outcomes.failed(Failed(job.src, result))
                continue
            self.frames += result.frames
            self.seconds += result.seconds
            self.rgba_bytes += _rgba_bytes(self.config, job)
            outcomes.processed(job)

    def facts(self) -> dict:
        """For the report: frames written by processed videos, their rate, and the video options."""
        options = self.config.options.video
        return {"frames": self.frames,
                "frames_per_s": round(self.frames / self.seconds, 2) if self.seconds > 0 else 0.0,
                "rgba_video_bytes": self.rgba_bytes,
                "video": {"temporal": options.temporal, "lossless": options.lossless, "rgba": options.rgba}}


def _rgba_bytes(config: RunConfig, job: Job) -> int:
    """Bytes of the rgba video `job` wrote (0 without one, or for PNG frames)."""
    if "rgba" not in config.outputs or config.options.video.rgba == "png":
        return 0
    try:
        return video_output_path(config.output_dir, "rgba", job.rel, config.options.video).stat().st_size
    except OSError:
        return 0


def run_video(job: Job, config: RunConfig, backend: Backend, model: ModelDir, batch_size: int,
              log: Callable[[str], None] | None = None) -> VideoDone | str:
    """Write every output of one video; VideoDone, or the one-line reason it failed.

    What is wrong with the file (not a video, truncated, undecodable, an output that cannot be
    written) is a reason; the backend's own errors propagate, as they do for photos.
    """
    started = time.perf_counter()
    try:
        reader = VideoReader(job.src)
    except VideoError as e:
        return str(e)
    try:
        frames = _VideoRun(job, config, backend, model, batch_size, reader, log).run()
    except VideoError as e:
        return str(e)
    finally:
        reader.close()
    return VideoDone(frames, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Decoded:
    frame: Frame  # the stored pixels, [H, W, 3] uint8
    x: np.ndarray  # [3, S, S] float32 in [-1, 1]: upright, letterboxed
    box: Letterbox
    thumb: np.ndarray | None  # [32, 32] float32, when smoothing
    out: np.ndarray | None = None  # [C, S, S] float32 in [0, 1], once inferred


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_END = object()


def _failure_reason(e: BaseException) -> str:
    if isinstance(e, VideoError):
        return str(e)
    if isinstance(e, WriteError):
        return str(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return f"cannot write ({where}{e.strerror or e})"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _as_stored(background: Background, turns: int) -> Background:
    """The background for a video's stored frames, which the player shows turned by `turns`
    (np.rot90): an image turned the other way, so that it too is shown upright."""
    if not turns or background.image is None:
        return background
    return Background(image=np.ascontiguousarray(np.rot90(background.image, -turns)), label=background.label)


class _VideoRun:
    def __init__(self, job: Job, config: RunConfig, backend: Backend, model: ModelDir,
                 batch_size: int, reader: VideoReader, log: Callable[[str], None] | None):
        self.job, self.config, self.backend, self.model = job, config, backend, model
        self.batch_size = batch_size
        self.reader = reader
        self.info: VideoInfo = reader.info
        self.log = log
        self.options = config.options.video
        self.turns = self.info.rotation // 90  # np.rot90 turns that show the frame upright
        self.smoother = TemporalSmoother(self.options.temporal) if self.options.temporal > 0 else None
        self.stop = threading.Event()
        depth = max(2, min(2 * batch_size, QUEUE_BYTES // (self.info.width * self.info.height * 3)))
        self.decoded: queue.Queue = queue.Queue(maxsize=depth)
        self.inferred: queue.Queue = queue.Queue(maxsize=depth)
        self.write_error: BaseException | None = None

    def run(self) -> int:
        writers: dict[str, VideoWriter] = {}
        try:
            for kind in self.config.outputs:
                path = video_output_path(self.config.output_dir, kind, self.job.rel, self.options)
                writers[kind] = open_writer(path, video_encoding(kind, self.options), self.info,
                                            self.reader.audio_stream, self.config.options.png_compression)
            frames = self._stream(writers)
            for kind, writer in writers.items():
                writer.commit()
                for note in writer.notes:
                    if self.log is not None:
                        self.log(f"{self.job.src}: {kind}: {note}")
            return frames
        except OSError as e:
            raise VideoError(_failure_reason(e)) from None
        finally:
            for writer in writers.values():
                writer.close()

    # -- the three stages ---------------------------------------------------------------------

    def _stream(self, writers: dict[str, VideoWriter]) -> int:
        options = self.config.options
        bar = Progress(enabled=options.progress, every_s=options.log_every, unit="frame", label=self.job.src.name)
        if self.info.frames:
            bar.set_total(self.info.frames)
        read = threading.Thread(target=self._read, name="hx-video-read", daemon=True)
        write = threading.Thread(target=self._write, args=(writers,), name="hx-video-write", daemon=True)
        read.start()
        write.start()
        try:
            frames = self._infer(bar)
            self._put(self.inferred, _END)
            write.join()
        finally:
            self.stop.set()  # on any error: both threads give up their next put/get and end
            read.join()
            write.join()
            bar.close()
        if self.write_error is not None:
            raise VideoError(_failure_reason(self.write_error))
        return frames

    def _read(self) -> None:
        """Reader thread: decoded, letterboxed frames and audio packets, in file order."""
        size = self.model.size
        try:
            for item in self.reader:
                if isinstance(item, Frame):
                    upright = np.ascontiguousarray(np.rot90(item.rgb, self.turns)) if self.turns else item.rgb
                    x, box = letterbox(upright, size)
                    item = _Decoded(item, x, box, thumbnail(item.rgb) if self.smoother else None)
                if not self._put(self.decoded, item):
                    return
            self._put(self.decoded, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which reports it
            self._put(self.decoded, _Failure(e))

    def _infer(self, bar) -> int:
        """This thread: batches through the backend, in order; returns the frame count."""
        pending: list[_Decoded | AudioPacket] = []  # a batch's frames and the audio between them
        batch: list[_Decoded] = []
        frames = 0

        def flush() -> None:
            x = np.stack([d.x for d in batch])  # [N, 3, S, S] float32
            out = np.asarray(self.backend.infer(x))  # [N, C, S, S] float32 in [0, 1]
            for item, item_out in zip(batch, out):
                item.out = self.smoother(item_out, item.thumb) if self.smoother else item_out
            for item in pending:
                self._put(self.inferred, item)
            bar.update(len(batch))
            pending.clear()
            batch.clear()

        while True:
            item = self._get(self.decoded)
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise VideoError(_failure_reason(item.error))
            pending.append(item)
            if isinstance(item, _Decoded):
                batch.append(item)
                frames += 1
                if len(batch) == self.batch_size:
                    flush()
        if batch:
            flush()
        for item in pending:  # audio after the last frame
            self._put(self.inferred, item)
        return frames

    def _write(self, writers: dict[str, VideoWriter]) -> None:
        """Writer thread: back to the frame's size and orientation, compose, encode."""
        background_frames = None
        still = _as_stored(self.config.background, self.turns)  # once: it keeps its resized copy
        try:
            if isinstance(self.config.background, VideoBackground) and any(KINDS[kind].needs_background
                                                                           for kind in writers):
                background_frames = self.config.background.frames()
            while True:
                item = self._get(self.inferred)
                if item is _END:
                    return
                if isinstance(item, AudioPacket):
                    for writer in writers.values():
                        writer.write_audio(item)
                    continue
                background = (_as_stored(Background(image=next(background_frames)), self.turns)
                              if background_frames is not None else still)
                for kind, image in self._images(item, background):
                    try:
                        writers[kind].write(image, item.frame.pts)
                    except OSError as e:  # named by the output it was for, not its temporary
                        raise WriteError(writers[kind].final, e) from None
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.write_error = e
            self.stop.set()
        finally:
            if background_frames is not None:
                background_frames.close()

    def _images(self, item: _Decoded, background: Background) -> Iterator[tuple[str, np.ndarray]]:
        restored = unletterbox(item.out, item.box)  # upright [h, w] matte or [h, w, 3] painting
        if self.turns:
            restored = np.ascontiguousarray(np.rot90(restored, -self.turns))
        # one writer per kind of config.outputs, as compose_outputs makes them
        yield from compose_outputs(restored, item.frame.rgb, self.config, self.model.target, self.model.size,
                                   NumpyPixels(background))

    # -- queues that give up when the run stops -----------------------------------------------

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        if q is self.inferred and self.write_error is not None:
            raise VideoError(_failure_reason(self.write_error))
        return False

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    if self.write_error is not None:
                        raise VideoError(_failure_reason(self.write_error)) from None
                    return _END
