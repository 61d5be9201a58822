"""Progress of a long run, for a person at a terminal and for a log file alike.

On a terminal: tqdm's bar, as before. Anywhere else (cron, CI, `nohup`, a container's log) a bar
is noise and tqdm hides itself, which left hours of silence; there a line is printed every
`every_s` seconds instead:

    hx-infer: 1200/5000 files (24%), 40.1 files/s, ETA 1 min 35 s

(`1200 files` and no ETA while the total is still being counted). Used from one thread only.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

DEFAULT_LOG_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """95 -> '1 min 35 s', 4000 -> '1 h 06 min', 7 -> '7 s'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(done: int, total: int | None, seconds: float, unit: str = "files") -> str:
    """'1200/5000 files (24%), 40.1 files/s, ETA 1 min 35 s' (no total: '1200 files, 40.1 files/s')."""
    rate = done / seconds if seconds > 0 else 0.0
    if total is None:
        return f"{done} {unit}, {rate:.1f} {unit}/s"
    share = f"{100 * done / total:.0f}%" if total else "100%"
    eta = f", ETA {format_duration((total - done) / rate)}" if rate > 0 and done < total else ""
    return f"{done}/{total} {unit} ({share}), {rate:.1f} {unit}/s{eta}"


class Progress:
    """update(n) as work finishes; set_total(n) once it is known; close() at the end.

    enabled=False shows nothing. Otherwise a tqdm bar when `stream` is a terminal, and a
    progress_line every `every_s` seconds (the first after `every_s`) when it is not. label: the
    bar's title and the lines' first word (a video's name); a labelled bar is cleared when closed.
    is_tty and clock exist for tests.
    """

    def __init__(self, enabled: bool = True, every_s: float = DEFAULT_LOG_EVERY_S, unit: str = "file",
                 prefix: str = "hx-infer: ", label: str | None = None, stream: TextIO | None = None,
                 is_tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        if every_s <= 0:
            raise ValueError(f"--log-every must be more than 0 seconds, got {every_s:g}")
        self.stream = stream if stream is not None else sys.stderr
        tty = is_tty if is_tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.total: int | None = None
        self._unit, self._every, self._clock = unit, every_s, clock
        self._prefix = f"{prefix}{label}: " if label else prefix
        self._start = self._last = clock()
        self._bar = None
        self._lines = enabled and not tty
        if enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=None, unit=unit, file=self.stream, dynamic_ncols=True, smoothing=0.1,
                             desc=label, leave=label is None)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines:
            now = self._clock()
            if now - self._last >= self._every:
                self._last = now
                self.write(progress_line(self.done, self.total, now - self._start, self._unit + "s"))

    def write(self, line: str) -> None:
        """A line of its own (a failure, say) that does not tear the bar."""
        if self._bar is not None:
            self._bar.write(f"{self._prefix}{line}", file=self.stream)
        else:
            print(f"{self._prefix}{line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
