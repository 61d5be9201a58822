"""A picture of a model's mattes on frames of a video: one row per frame, (frame | alpha).

    .venv/bin/python benchmarks/video_frames.py MODEL --out docs/vtest.png
    .venv/bin/python benchmarks/video_frames.py default --video clip.mp4 --frames 3 --out /tmp/v.png

--frames frames spread evenly over the video (the first, the last and the ones between, by index),
read in order with OpenCV. Each matte is made the way `hx-infer run` makes a photo's
(Extractor.alpha on the decoded RGB frame). Prints, per frame, the share of its pixels called
person (alpha > 127): a matte that covers road instead of people shows up there as well as in the
picture. The PNG is written atomically. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing hx
sys.path.insert(0, str(REPO / "benchmarks"))

from grid import row, stack, tile  # noqa: E402  (benchmarks/grid.py)
from shared_data import SHARED_DATA  # noqa: E402  (benchmarks/shared_data.py)

from hx_infer import Extractor  # noqa: E402
from hx_infer.io.images import atomic_write, encode_png  # noqa: E402

VTEST = SHARED_DATA / "video" / "vtest.avi"


def read_frames(video: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """`count` (index, RGB frame) pairs spread evenly over `video`; one-line SystemExit if unreadable."""
    capture = cv2.VideoCapture(str(video))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if not capture.isOpened() or total <= 0:
        raise SystemExit(f"error: {video}: not a video OpenCV can read")
    wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
    frames, index = [], 0
    while len(frames) < len(wanted):
        ok, bgr = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append((index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        index += 1
    capture.release()
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or 'default')")
    parser.add_argument("--video", type=Path, default=VTEST, help=f"default: {VTEST}")
    parser.add_argument("--frames", type=int, default=4, help="rows")
    parser.add_argument("--height", type=int, default=240, help="tile height in pixels")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write, e.g. docs/vtest.png")
    args = parser.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"error: {args.video}: no such video")

    rows = []
    with Extractor(args.model, backend="ort", device="cpu") as extractor:
        for index, rgb in read_frames(args.video, args.frames):
            alpha = extractor.alpha(rgb)
            print(f"frame {index}: {float((alpha > 127).mean()):.3f} of its pixels called person")
            rows.append(row([tile(rgb, args.height), tile(alpha, args.height)]))
    picture = stack(rows)
    atomic_write(args.out, encode_png(picture))
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
