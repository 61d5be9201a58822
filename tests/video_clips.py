"""Small test clips made with PyAV, for the video tests in any folder (imported by name, as
serve_client is): a bright disc, the "person" the tiny test model was fitted to, moving across
a dark, noisy background; optionally with a tone as audio."""
from __future__ import annotations

from pathlib import Path

import numpy as np

RATE = 10
AUDIO_RATE = 16000


def disc_frames(n: int, width: int, height: int, seed: int = 0, still: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n frames [n, H, W, 3] uint8 of a bright disc moving left to right (or standing still, in
    the middle) on a dark field of fresh noise each frame, and the disc's centre x per frame [n]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = 0.3 * min(width, height)
    centres = np.full(n, width / 2) if still else np.linspace(radius + 1, width - radius - 1, n)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i, cx in enumerate(centres):
        inside = (yy - height / 2) ** 2 + (xx - cx) ** 2 <= radius ** 2
        background = rng.uniform(0.05, 0.25, (height, width, 3))
        person = 0.85 + rng.uniform(-0.05, 0.05, (height, width, 3))
        frames[i] = (np.where(inside[..., None], person, background) * 255).round().astype(np.uint8)
    return frames, centres


def write_clip(path: Path, frames: np.ndarray, audio: str | None = None, rate: int = RATE,
               rotation: int = 0, faststart: bool = False, layout: str = "mono",
               audio_s: float | None = None) -> Path:
    """frames [n, H, W, 3] uint8 -> a video at `rate` fps. .avi: MPEG-4 Part 2 (needs even sides);
    otherwise lossless-ish H.264 4:4:4. audio: None or an encoder ("aac", "pcm_s16le", "libopus",
    "flac"): a 440 Hz tone, `layout` "mono" or "stereo", as long as the video or `audio_s` seconds.
    faststart: an mp4 with its index first (a cut one still opens)."""
    import av

    n, height, width = frames.shape[:3]
    avi = path.suffix == ".avi"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("mpeg4" if avi else "libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if avi else "yuv444p"
        if not avi:
            stream.options = {"crf": "0"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = out.add_stream(audio, rate=AUDIO_RATE)
            sound.layout = layout
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if sound is not None:
            chunk = sound.codec_context.frame_size or 1024
            total = n * AUDIO_RATE // rate if audio_s is None else round(audio_s * AUDIO_RATE)
            channels = 2 if layout == "stereo" else 1
            for start in range(0, total, chunk):
                t = np.arange(start, min(start + chunk, total))
                samples = (np.sin(2 * np.pi * 440 * t / AUDIO_RATE) * 8000).astype(np.int16)
                samples = np.repeat(samples, channels)[None]  # packed s16: channels interleaved
                piece = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
                piece.sample_rate = AUDIO_RATE
                piece.pts = start
                out.mux(sound.encode(piece))
            out.mux(sound.encode(None))
    return path
