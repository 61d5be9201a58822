"""hx_infer.progress: the lines a run prints where there is no terminal (cron, CI, nohup, logs)."""
from __future__ import annotations

import io

import pytest

from hx_infer.progress import Progress, format_duration, progress_line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_n_seconds_with_done_total_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    progress = Progress(every_s=30, stream=out, is_tty=False, clock=clock)
    progress.set_total(1000)
    for _ in range(10):  # 10 files in 10 s: no line before 30 s
        clock.now += 1
        progress.update()
    assert out.getvalue() == ""
    clock.now += 20  # 30 s since the start
    progress.update(290)
    clock.now += 10
    progress.update(100)  # 10 s after the last line: quiet
    clock.now += 20
    progress.update(200)  # 60 s, 600 done
    progress.close()
    assert out.getvalue().splitlines() == [
        "hx-infer: 300/1000 files (30%), 10.0 files/s, ETA 1 min 10 s",
        "hx-infer: 600/1000 files (60%), 10.0 files/s, ETA 40 s",
    ]


def test_before_the_total_is_known_there_is_no_eta():
    out, clock = io.StringIO(), Clock()
    progress = Progress(every_s=5, stream=out, is_tty=False, clock=clock, unit="frame")
    clock.now += 5
    progress.update(60)
    assert out.getvalue() == "hx-infer: 60 frames, 12.0 frames/s\n"


def test_disabled_or_on_a_terminal_prints_no_lines():
    out, clock = io.StringIO(), Clock()
    quiet = Progress(enabled=False, every_s=1, stream=out, is_tty=False, clock=clock)
    clock.now += 10
    quiet.update(5)
    assert out.getvalue() == ""
    bar = Progress(every_s=1, stream=out, is_tty=True, clock=clock)  # tqdm draws; no log lines
    clock.now += 10
    bar.update(5)
    bar.close()
    assert "files/s, ETA" not in out.getvalue()


def test_formatting():
    assert format_duration(7) == "7 s"
    assert format_duration(95) == "1 min 35 s"
    assert format_duration(4000) == "1 h 06 min"
    assert progress_line(5, 5, 1.0) == "5/5 files (100%), 5.0 files/s"
    assert progress_line(0, 0, 1.0) == "0/0 files (100%), 0.0 files/s"
    with pytest.raises(ValueError, match="--log-every"):
        Progress(every_s=0)
