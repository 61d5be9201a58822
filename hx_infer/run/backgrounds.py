"""--background: a colour or an image (hx_infer.compose), or a video whose frames go behind a
video's frames one for one (needs PyAV; looped when shorter)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..compose import Background, parse_background
from ..io.video import Frame, VideoError, VideoReader, is_video_name


class VideoBackground(Background):
    """--background VIDEO: each video frame goes on the background's frame of the same index,
    the background starting over when it runs out; a photo goes on its first frame."""

    def __init__(self, path: Path):
        reader = VideoReader(path, audio=False)
        try:
            first = next(item for item in reader if isinstance(item, Frame))
        finally:
            reader.close()
        super().__init__(image=first.rgb, label=str(path))
        self.path = Path(path)

    def frames(self) -> Iterator[np.ndarray]:
        """[h, w, 3] uint8 RGB frames, forever. Close the generator to close the file."""
        while True:
            reader = VideoReader(self.path, audio=False)
            try:
                for item in reader:
                    if isinstance(item, Frame):
                        yield item.rgb
            except VideoError as e:
                raise VideoError(f"--background {self.path}: {e}") from None
            finally:
                reader.close()


def parse_background_or_video(spec: str) -> Background:
    """compose.parse_background, plus the path of a video (needs PyAV). Raises ValueError."""
    if is_video_name(spec.strip()) and Path(spec.strip()).is_file():
        try:
            return VideoBackground(Path(spec.strip()))
        except VideoError as e:
            raise ValueError(f"--background {spec!r}: {e}") from None
    return parse_background(spec)
