"""Video files through PyAV: a reader that gives frames and audio packets in file order, and
writers that encode one output each into a temporary renamed into place when complete.

PyAV (the `video` extra) is imported only when a video is opened: `import hx_infer` and the
photo runs work without it. No model knowledge here; hx_infer.run.videos drives these.

Frame-accurate by construction: every decoded frame is written once, with its own timestamp,
in the input's time base where the container can store it (mp4 and mov can; Matroska and
WebM always count in milliseconds), so the output has the input's frame count, rate and
timestamps. Width and height are kept, odd ones included: 4:2:0 chroma needs even sides, so
odd-sized H.264 switches to 4:0:0 (mattes) or 4:4:4 (composites) -- see ENCODINGS.
Audio is copied packet for packet (never re-encoded) into containers that can hold it
(AUDIO_CODECS).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..extras import install_hint
from .images import _temp_name, encode_png, regular_file_problem
from .png_choices import DEFAULT_PNG_COMPRESSION

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})
PYAV_MISSING = f"PyAV is not installed ({install_hint('video')})"

# A PNG frame folder holds only names like 000123.png; anything else is not ours to replace.
_FRAME_NAME = re.compile(r"\d{6,}\.png")


class VideoError(Exception):
    """A video that cannot be read or written. str(e) is the reason only; the caller names the file."""


def is_video_name(name: str | os.PathLike) -> bool:
    return os.path.splitext(str(name))[1].lower() in VIDEO_EXTENSIONS


def import_av():
    """The av module, or VideoError(PYAV_MISSING)."""
    try:
        import av
    except ImportError:
        raise VideoError(PYAV_MISSING) from None
    return av


def _av_reason(e: BaseException) -> str:
    """One line for what FFmpeg said, without the errno and file name PyAV puts around it."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    rate: Fraction  # frames per second (average)
    time_base: Fraction  # 1/N: the unit of Frame.pts (the input's time base, as 1/N)
    frames: int  # from the header; 0 when the container does not say
    rotation: int  # display rotation, degrees counter-clockwise: 0, 90, 180 or -90
    audio_codec: str | None  # codec of the audio stream that is copied, if any


@dataclass
class Frame:
    index: int  # 0, 1, 2, ... in presentation order
    pts: int  # in VideoInfo.time_base units, strictly increasing
    rgb: np.ndarray  # [H, W, 3] uint8 RGB as stored (before the display rotation)


@dataclass(frozen=True)
class AudioPacket:
    """One compressed audio packet, detached from its container so several writers can mux it.
    pts, dts, duration: in the input audio stream's time base."""

    data: bytes
    pts: int | None
    dts: int
    duration: int
    keyframe: bool


class VideoReader:
    """Open a video and iterate its frames (and audio packets) in file order; close() when done.

    Opening decodes up to the first frame, so a file that is not a video, has no video stream,
    uses a codec with no decoder or holds no decodable frame raises VideoError here, before any
    output is created. Iteration raises VideoError for a file cut short or corrupt midway: a
    matte with missing frames would no longer line up with its video.
    """

    def __init__(self, path: Path, audio: bool = True):
        av = import_av()
        self.path = Path(path)
        problem = regular_file_problem(self.path)  # a FIFO would block FFmpeg's open for ever
        if problem is not None:
            raise VideoError(problem)
        try:
            if self.path.stat().st_size == 0:
                raise VideoError("zero bytes")
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:  # the file system, not the file
            raise VideoError(f"cannot read ({e.strerror or e})") from None
        except av.FFmpegError as e:
            raise VideoError(f"not a readable video ({_av_reason(e)})") from None
        try:
            self._open_streams(audio)
            self._items = self._demux()
            self._buffer: deque[Frame | AudioPacket] = deque()
            first = self._peek_first_frame()
            self.info = VideoInfo(
                width=first.rgb.shape[1], height=first.rgb.shape[0], rate=self._rate,
                time_base=Fraction(1, self._tb.denominator), frames=self._video.frames or 0,
                rotation=self._rotation, audio_codec=self._audio.codec_context.name if self._audio else None)
        except BaseException:
            self.close()
            raise

    def _open_streams(self, audio: bool) -> None:
        videos = self._container.streams.video
        if not videos:
            raise VideoError("no video stream")
        self._video = videos[0]
        if self._video.codec_context is None:
            raise VideoError("no decoder for its video codec")
        self._video.thread_type = "AUTO"  # frame threads: decoding keeps up with the model
        self._tb = self._video.time_base or Fraction(1, 90000)
        self._rate = Fraction(self._video.average_rate or self._video.guessed_rate or 25)
        self._frame_ticks = max(1, round(1 / (self._rate * self._tb)))  # one frame, in time-base units
        streams = self._container.streams.audio
        self._audio = streams[0] if audio and streams and streams[0].codec_context is not None else None
        self._rotation = 0
        self._count = 0
        self._last_pts: int | None = None
        self._gap: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))  # (longest gap, where), seconds

    def _peek_first_frame(self) -> Frame:
        try:
            while True:
                item = next(self._items)
                self._buffer.append(item)
                if isinstance(item, Frame):
                    return item
        except StopIteration:
            raise VideoError("no decodable video frame") from None

    def __iter__(self) -> Iterator[Frame | AudioPacket]:
        while self._buffer:
            yield self._buffer.popleft()
        yield from self._items

    def _demux(self) -> Iterator[Frame | AudioPacket]:
        av = import_av()
        streams = [self._video] + ([self._audio] if self._audio is not None else [])
        try:
            for packet in self._container.demux(streams):
                if packet.stream is self._audio:
                    if packet.dts is not None and packet.size:  # skip the end-of-stream marker
                        yield AudioPacket(bytes(packet), packet.pts, packet.dts, packet.duration or 0,
                                          packet.is_keyframe)
                    continue
                for frame in packet.decode():
                    yield self._frame(frame)
        except av.FFmpegError as e:
            where = f"after frame {self._count}" if self._count else "at the first frame"
            raise VideoError(f"corrupt or truncated video ({_av_reason(e)} {where})") from None
        self._check_complete()

    def _frame(self, frame) -> Frame:
        # FFmpeg conceals a damaged slice (copies neighbours over it) and only flags the frame: its
        # matte would be of made-up pixels, so the video fails as one damaged midway.
        if getattr(frame, "is_corrupt", False):
            raise VideoError(f"corrupt video (frame {self._count} decoded with errors)")
        if self._count == 0:
            self._rotation = int(round(frame.rotation / 90)) * 90 % 360
            self._rotation = self._rotation - 360 if self._rotation > 180 else self._rotation
        # Timestamps as 1/N ticks; a missing or repeated one (broken muxers) becomes the next tick.
        pts = None if frame.pts is None else frame.pts * self._tb.numerator
        if pts is not None and self._last_pts is not None:
            gap = Fraction(pts - self._last_pts, self._tb.denominator)
            if gap > self._gap[0]:
                self._gap = (gap, Fraction(self._last_pts, self._tb.denominator))
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + self._frame_ticks * self._tb.numerator
        self._last_pts = pts
        rgb = frame.to_ndarray(format="rgb24")  # colour matrix and range from the frame's own tags
        item = Frame(self._count, pts, rgb)
        self._count += 1
        return item

    def _check_complete(self) -> None:
        """A file cut short mostly decodes without an error, just fewer frames: compare with what
        the header promised, by time (dropped-frame AVIs keep their timestamps, not their count).

        Matroska and WebM store no frame count and no stream duration in the header, only the
        file's (Segment Info), which is the longest stream's: audio often outlasts the video by
        seconds. Their muxers (FFmpeg, mkvmerge) write each track's own length as a DURATION tag,
        which is used first. The demuxer also skips a damaged cluster without an error and goes on
        at the next, which leaves a hole in the timestamps: longer than a second (and ten frames)
        there means frames were lost. (Not for mp4/mov: screen recordings there hold a frame for
        seconds on a still screen.)"""
        if self._last_pts is None:
            return
        expected_s, slack = None, 2 / self._rate  # two frames' slack for rounding in the header
        start = self._video.start_time or 0
        if self._video.frames:
            expected_s = self._video.frames / self._rate
        elif self._video.duration:
            expected_s = self._video.duration * self._tb
        elif (tagged := _duration_tag(self._video)) is not None:  # the track's end, from its start as got_s
            expected_s = tagged - start * self._tb
        elif self._container.duration:  # microseconds (AV_TIME_BASE): the longest stream's, and
            expected_s = Fraction(self._container.duration, 1_000_000)  # audio may outlast video a little
            slack = max(slack, Fraction(1, 2))
        got_s = (self._last_pts / self._tb.denominator) - start * self._tb + 1 / self._rate
        if expected_s is not None and got_s < expected_s - slack:
            raise VideoError(f"truncated video ({self._count} frames, {float(got_s):.2f} of "
                             f"{float(expected_s):.2f} s)")
        gap, where = self._gap
        if "matroska" in self._container.format.name and gap > max(1, 10 / self._rate):
            raise VideoError(f"corrupt video ({self._count} frames; {float(gap - 1 / self._rate):.2f} s "
                             f"missing after {float(where - start * self._tb):.2f} s)")

    @property
    def audio_stream(self):
        """The input audio stream (a template for writers), or None."""
        return self._audio

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            self._container = None
            container.close()


def _duration_tag(stream) -> Fraction | None:
    """Seconds in a Matroska track's DURATION tag ("00:00:02.000000000"; "DURATION-eng" when
    the tag has a language), or None."""
    for key, value in stream.metadata.items():
        if key.upper().split("-")[0] == "DURATION":
            match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", value.strip())
            if match:
                hours, minutes, seconds = match.groups()
                return int(hours) * 3600 + int(minutes) * 60 + Fraction(seconds)
    return None


def frame_count(path: Path) -> int:
    """Frames in a video, by decoding them all (for tests and benchmarks)."""
    reader = VideoReader(path, audio=False)
    try:
        return sum(1 for item in reader if isinstance(item, Frame))
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Encoding:
    """How one output is stored. channels: what write() takes: "gray" [H, W], "rgb" [H, W, 3],
    "rgba" [H, W, 4], all uint8. pix_fmt: (for even sides, for an odd side)."""

    name: str
    suffix: str  # ".mp4", ...; "" for a folder of PNG frames
    channels: str
    muxer: str = ""
    codec: str = ""
    pix_fmt: tuple[str, str] = ("", "")
    options: dict[str, str] = field(default_factory=dict)


# CRF 16 keeps a matte's edges within a few levels of 255; mattes are mostly flat, so the
# files stay small. The colour encodings are tagged BT.709, limited range.
# x264 and libvpx get a fixed thread count: left to FFmpeg it is the CPUs this process may use,
# and x264's slices (or frame threads) and libvpx's threading change the bitstream with it, so
# the same run on another machine, or in a smaller container, wrote other bytes. FFV1 and ProRes
# write the same bytes whatever their threads. Frame threads: x264 scales further with them
# than with slices, and at the same CRF they made vtest.avi's composite 5 % smaller.
_X264_THREADS = {"threads": "8", "thread_type": "frame"}


@functools.cache
def _x264_cpu_options() -> dict[str, str]:
    """x264's AVX-512 code path, with its macroblock tree (mbtree, on by default), wrote other
    bytes for the same frames from run to run (an AMD EPYC with AVX-512: what else the process
    had run, and on how many CPUs, changed a composite; mbtree=0, or x264 kept to AVX2, gave the
    same bytes every time). On such a CPU x264 is held at AVX2 (which every AVX-512 CPU has):
    the same CRF and quality, and no slower for vtest.avi's composite (768x576); elsewhere it
    keeps what it detects."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu  # numpy's own detection
    except ImportError:
        return {}
    if all(cpu.get(f"AVX512{part}") for part in ("F", "CD", "BW", "DQ", "VL")):  # x264's AVX512 flag
        return {"x264-params": "asm=AVX2"}  # x264's name for AVX2 and all below it
    return {}

ENCODINGS: dict[str, Encoding] = {e.name: e for e in (
    # Mattes: the luma plane is alpha, full range (0 = background, 255 = person). 4:2:0 plays
    # everywhere; an odd-sized matte is 4:0:0 (High profile, grey only), which 4:2:0 cannot be.
    Encoding("h264-matte", ".mp4", "gray", "mp4", "libx264", ("yuv420p", "gray"),
             {"crf": "16", "preset": "medium", **_X264_THREADS}),
    Encoding("ffv1-matte", ".mkv", "gray", "matroska", "ffv1", ("gray", "gray"), {"level": "3"}),
    # Composites: 4:2:0, or 4:4:4 (High 4:4:4 profile) for an odd side.
    Encoding("h264", ".mp4", "rgb", "mp4", "libx264", ("yuv420p", "yuv444p"),
             {"crf": "18", "preset": "medium", **_X264_THREADS}),
    Encoding("ffv1", ".mkv", "rgb", "matroska", "ffv1", ("bgr0", "bgr0"), {"level": "3"}),
    # Cutouts with alpha: ProRes 4444 (editors), VP9 with an alpha plane in WebM (browsers).
    Encoding("prores", ".mov", "rgba", "mov", "prores_ks", ("yuva444p10le", "yuva444p10le"),
             {"profile": "4444", "vendor": "apl0"}),
    Encoding("vp9", ".webm", "rgba", "webm", "libvpx-vp9", ("yuva420p", "yuva420p"),
             {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1", "threads": "8"}),
    Encoding("png", "", "rgba"),
)}

# Muxers that store the time base they are given (as the track timescale) when told to.
_TIMESCALE_MUXERS = ("mp4", "mov")

# Audio codecs copied into mp4 and mov: those FFmpeg muxed there from every input tried (AVI,
# Matroska, mov; mono and stereo). Their muxers accept more at first sight (supported_codecs)
# than they write: mov refuses Opus and FLAC at the header, mp4 refuses PCM without a channel
# layout (AVI stores none) only at the trailer, and PCM in mp4 is an extension few players read.
# Other muxers (Matroska, WebM) are asked: their answer matches what they then write.
AUDIO_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "alac", "opus", "flac"}),
    "mov": frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "alac", "pcm_u8", "pcm_s8", "pcm_alaw", "pcm_mulaw",
                      "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
                      "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_f64be"}),
}


class VideoWriter:
    """Writes frames for one output; commit() puts it in place, close() drops an uncommitted one.

    The caller closes in `finally`. Until commit() the final path is untouched (a rerun sees
    the video as not done); the temporary is named so clean_temporaries removes it.
    """

    def __init__(self, final: Path, encoding: Encoding, info: VideoInfo):
        self.final = Path(final)
        self.encoding = encoding
        self.info = info
        self.notes: list[str] = []  # one-line remarks for the log (audio left out, ...)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.temp = self.final.parent / _temp_name(self.final.name)
        self._committed = False

    def write(self, image: np.ndarray, pts: int) -> None:
        """image: [H, W] / [H, W, 3] / [H, W, 4] uint8 as stored; pts in info.time_base units."""
        raise NotImplementedError

    def write_audio(self, packet: AudioPacket) -> None:
        """Copy one input audio packet (ignored where the output carries no audio)."""

    def commit(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _check(self, image: np.ndarray) -> None:
        shape = {"gray": (self.info.height, self.info.width),
                 "rgb": (self.info.height, self.info.width, 3),
                 "rgba": (self.info.height, self.info.width, 4)}[self.encoding.channels]
        if image.shape != shape or image.dtype != np.uint8:
            raise ValueError(f"{self.encoding.name} writer: expected {list(shape)} uint8, "
                             f"got {list(image.shape)} {image.dtype}")


class ContainerWriter(VideoWriter):
    """One video stream (plus the input's audio, copied) in a container, via PyAV."""

    def __init__(self, final: Path, encoding: Encoding, info: VideoInfo, audio_template=None):
        super().__init__(final, encoding, info)
        av = self._av = import_av()
        even = info.width % 2 == 0 and info.height % 2 == 0
        self._pix_fmt = encoding.pix_fmt[0 if even else 1]
        # bitexact: no random Matroska/WebM segment and track UIDs, no FFmpeg version string:
        # the same frames give the same file.
        options = {"fflags": "+bitexact"}
        if encoding.muxer in _TIMESCALE_MUXERS:
            options["video_track_timescale"] = str(info.time_base.denominator)
        try:
            # The muxer is named, so the temporary needs no video suffix of its own.
            self._out = av.open(str(self.temp), "w", format=encoding.muxer, options=options)
        except (OSError, av.FFmpegError) as e:
            raise VideoError(f"cannot write {self.final}: {_av_reason(e)}") from None
        try:
            self._stream = self._add_video_stream(info)
            self._audio = self._add_audio_stream(audio_template)
        except av.FFmpegError as e:
            self.close()
            raise VideoError(f"cannot encode {encoding.name} ({_av_reason(e)})") from None
        except BaseException:
            self.close()
            raise

    def _add_video_stream(self, info: VideoInfo):
        stream = self._out.add_stream(self.encoding.codec, rate=info.rate)
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, self._pix_fmt
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        stream.options = dict(self.encoding.options)
        if self.encoding.codec == "libx264":
            stream.options = {**stream.options, **_x264_cpu_options()}
        ctx = stream.codec_context
        if self.encoding.channels == "gray":
            ctx.color_range = 2  # JPEG (full): the matte's 0..255 as they are
        else:
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # BT.709
            ctx.color_range = 1  # MPEG (limited)
        if info.rotation:
            stream.set_display_rotation(info.rotation)  # shown as the input is
        return stream

    def _add_audio_stream(self, template):
        if template is None:
            return None
        name = template.codec_context.codec.canonical_name  # "mp3", not its decoder "mp3float"
        if name not in AUDIO_CODECS.get(self.encoding.muxer, self._out.supported_codecs):
            self.notes.append(f"{self.final.suffix} cannot hold {name} audio; written without it")
            return None
        # The packets keep the input's timestamps; Matroska then counts in ms, so they are
        # re-timed from this (mux rescales them), never read in the output stream's units.
        self._audio_time_base = template.time_base
        return self._out.add_stream_from_template(template)

    def _frame(self, image: np.ndarray):
        av = self._av
        if self.encoding.channels == "gray":
            if self._pix_fmt == "yuv420p":
                # Luma = alpha and neutral chroma, built directly: no colour conversion can move a level.
                h, w = image.shape
                planes = np.empty((h * 3 // 2, w), np.uint8)
                planes[:h] = image
                planes[h:] = 128
                frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            else:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray")
            frame.color_range = 2
            return frame
        source = "rgb24" if self.encoding.channels == "rgb" else "rgba"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=source)
        if self._pix_fmt in ("bgr0",):
            return frame  # lossless RGB: a channel reorder, no matrix
        return frame.reformat(format=self._pix_fmt, dst_colorspace="itu709", dst_color_range=1)

    def write(self, image: np.ndarray, pts: int) -> None:
        self._check(image)
        frame = self._frame(image)
        frame.pts = pts
        frame.time_base = self.info.time_base
        with self._writing():
            self._out.mux(self._stream.encode(frame))

    def write_audio(self, packet: AudioPacket) -> None:
        if self._audio is None:
            return
        copy = self._av.Packet(packet.data)
        copy.pts, copy.dts, copy.duration = packet.pts, packet.dts, packet.duration
        copy.time_base = self._audio_time_base  # the input's (see _add_audio_stream)
        copy.is_keyframe = packet.keyframe
        copy.stream = self._audio
        with self._writing():
            self._out.mux(copy)

    @contextmanager
    def _writing(self):
        """What FFmpeg refuses while encoding and muxing -- a stream the muxer took at first and
        rejects at its header (first packet) or trailer (close), a full disk -- fails this video,
        named by the final path, never the run."""
        try:
            yield
        except self._av.FFmpegError as e:
            raise VideoError(f"cannot write {self.final}: {_av_reason(e)}") from None

    def commit(self) -> None:
        with self._writing():
            self._out.mux(self._stream.encode(None))  # flush the encoder's delayed frames
            out, self._out = self._out, None
            out.close()  # writes the trailer (mp4: the index)
        os.replace(self.temp, self.final)
        self._committed = True

    def close(self) -> None:
        if getattr(self, "_out", None) is not None:
            try:
                self._out.close()
            except Exception:  # noqa: BLE001 - a half-written temporary is deleted anyway
                pass
            self._out = None
        if not self._committed:
            try:
                self.temp.unlink()
            except FileNotFoundError:
                pass


class PngFramesWriter(VideoWriter):
    """A folder of RGBA PNGs, 000000.png, 000001.png, ... (frame index, not timestamp), upright:
    a PNG has no display rotation to carry, so a rotated video's frames are turned as it is shown.

    Written into a temporary folder renamed into place when complete. An existing folder is
    replaced only when it holds nothing but frame files (a previous run's, under --overwrite).
    """

    def __init__(self, final: Path, encoding: Encoding, info: VideoInfo, audio_template=None,
                 png_compression: str = DEFAULT_PNG_COMPRESSION):
        super().__init__(final, encoding, info)  # (no audio: a folder of pictures has nowhere to put it)
        self.temp.mkdir()
        self._index = 0
        self._compression = png_compression

    def write(self, image: np.ndarray, pts: int) -> None:
        self._check(image)
        if self.info.rotation:
            image = np.ascontiguousarray(np.rot90(image, self.info.rotation // 90))  # counter-clockwise
        (self.temp / f"{self._index:06d}.png").write_bytes(encode_png(image, self._compression))
        self._index += 1

    def commit(self) -> None:
        old = None
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir() or self.final.is_symlink() or any(
                    not _FRAME_NAME.fullmatch(p.name) for p in self.final.iterdir()):
                raise VideoError(f"{self.final} exists and holds more than PNG frames; not replaced")
            old = self.final.parent / _temp_name(self.final.name)
            os.rename(self.final, old)  # aside, marked: a kill here leaves it for clean_temporaries
        os.rename(self.temp, self.final)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        if not self._committed:
            shutil.rmtree(self.temp, ignore_errors=True)


def open_writer(final: Path, encoding: Encoding, info: VideoInfo, audio_template=None,
                png_compression: str = DEFAULT_PNG_COMPRESSION) -> VideoWriter:
    """The writer for `encoding`: a container, or a PNG folder (written with `png_compression`)."""
    if encoding.name == "png":
        return PngFramesWriter(final, encoding, info, audio_template, png_compression)
    return ContainerWriter(final, encoding, info, audio_template)
