"""Temporal smoothing of a video's matte, scene-cut detection, and the flicker it is judged by.

A per-frame model knows nothing of the frame before: where it is unsure (shadows, textured
background) its matte flickers from frame to frame. `--temporal` replaces each frame's
output by an exponential moving average,

    smoothed_t = strength * smoothed_(t-1) + (1 - strength) * output_t

restarted at every scene cut, so one shot's person never bleeds into the next. The trade-off:
the average lags. Something that moves lags by about strength / (1 - strength) frames (1 at
the default 0.5, 4 at 0.8); a fast arm leaves a fading ghost behind it, and a person entering
fades in over a few frames. Noise that is independent from frame to frame is damped to
sqrt((1 - s) / (1 + s)) of its size (0.58 at 0.5, 0.33 at 0.8). Keep strength low for fast
motion; raise it for talking heads and static cameras.

The average is taken on the model's output at the model's resolution (S x S), before
un-letterboxing: that resize is linear, so the result is the same as smoothing the full-size
matte, at a fraction of the cost.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_STRENGTH = 0.5
THUMB_SIZE = 32  # cut detection looks at 32 x 32 grey thumbnails
# Mean absolute difference of consecutive thumbnails (grey in [0, 1]) above which a frame
# starts a new shot. Measured: consecutive frames of vtest.avi (people walking, static camera)
# differ by at most 0.012; unrelated photos (200 ccp pairs) by at least 0.15. A false cut only
# restarts the average (one frame unsmoothed) and a fast pan restarting it is no loss: the
# average would ghost there anyway, so the threshold sits low.
CUT_THRESHOLD = 0.06
BACKGROUND = 0.5  # flicker counts pixels whose alpha is below this in both frames


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """rgb [H, W, 3] uint8 -> [32, 32] float32 grey in [0, 1] (area-averaged: noise cancels out)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


class SceneCuts:
    """Feed thumbnails in frame order; is_cut says whether this frame starts a new shot."""

    def __init__(self, threshold: float = CUT_THRESHOLD):
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def is_cut(self, thumb: np.ndarray) -> bool:
        previous, self._previous = self._previous, thumb
        if previous is None:
            return True
        return float(np.mean(np.abs(thumb - previous))) > self.threshold


class TemporalSmoother:
    """Exponential moving average of per-frame model outputs, restarted at scene cuts.

    Call in frame order with each frame's output (any shape, float32 in [0, 1]; the pipeline
    passes [C, S, S]) and its thumbnail. strength 0 returns every output unchanged.
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, cut_threshold: float = CUT_THRESHOLD):
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"--temporal-strength {strength}: use a value in [0, 1)")
        self.strength = np.float32(strength)
        self.cuts = SceneCuts(cut_threshold)
        self._state: np.ndarray | None = None
        self.restarts = 0  # how many cuts were found (the first frame counts)

    def __call__(self, output: np.ndarray, thumb: np.ndarray) -> np.ndarray:
        cut = self.cuts.is_cut(thumb)
        if cut or self._state is None or self._state.shape != output.shape:
            self.restarts += 1
            self._state = np.array(output, np.float32)
        else:
            # A new array each frame: the caller may keep the one returned before.
            self._state = self.strength * self._state + (1 - self.strength) * output
        return self._state


class FlickerMeter:
    """Flicker of a matte sequence: the mean absolute frame-to-frame change of alpha, in [0, 1],
    over the pixels that are background (alpha < 0.5) in both frames of each consecutive pair:

        flicker = sum_t sum_{p in B_t} |a_t(p) - a_(t-1)(p)|  /  sum_t |B_t|,
        B_t = {p : a_(t-1)(p) < 0.5 and a_t(p) < 0.5},  a = alpha / 255

    Pooled over every pixel of every pair (not a mean of per-frame means). The background is
    where a steady matte should be exactly 0, so any change there is flicker, not motion: a
    person moving changes alpha where it is above 0.5 in one of the two frames.
    """

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None
        self.total = 0.0  # sum of |change|, in alpha units
        self.pixels = 0
        self.pairs = 0

    def add(self, alpha: np.ndarray) -> None:
        """alpha: [H, W] uint8, 255 = person; frames in order, all the same size."""
        a = alpha.astype(np.float32) * np.float32(1 / 255)
        previous, self._previous = self._previous, a
        if previous is None:
            return
        if previous.shape != a.shape:
            raise ValueError(f"FlickerMeter: frame of {list(a.shape)} after {list(previous.shape)}")
        both = (previous < BACKGROUND) & (a < BACKGROUND)
        self.total += float(np.abs(a - previous)[both].sum(dtype=np.float64))
        self.pixels += int(both.sum())
        self.pairs += 1

    @property
    def value(self) -> float:
        """The flicker (0.0 with fewer than two frames or no background pixel)."""
        return self.total / self.pixels if self.pixels else 0.0
