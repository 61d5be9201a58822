"""What a run tells its user: each input's outcome (tally, progress bar, log line), and the report.

Every engine sends its outcomes here, so the report and the summary line read the same
whichever engine ran the job.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from ..model import ModelDir
from ..progress import Progress
from ..report import Tally, build_report, printable, write_report
from ..version import __version__
from .config import RunConfig
from .index import OutputIndex
from .plan import Failed, Job, Skipped, iter_jobs


class _Progress:
    """hx_infer.progress: a tqdm bar on a terminal, else a line every --log-every seconds (files
    done/total, files/s, and an ETA once a background walk has counted the inputs)."""

    def __init__(self, config: RunConfig):
        self.bar = Progress(enabled=config.options.progress, every_s=config.options.log_every)
        self.total: int | None = None
        self._stop = threading.Event()
        if config.options.progress and config.source_kind != "list":
            threading.Thread(target=self._count, args=(config,), daemon=True, name="hx-count").start()

    def _count(self, config: RunConfig) -> None:
        n = 0
        for _ in iter_jobs(config):
            if self._stop.is_set():
                return
            n += 1
        self.total = n  # picked up by the main thread, which owns the bar

    def update(self, n: int = 1) -> None:
        if self.total is not None and self.bar.total is None:
            self.bar.set_total(self.total)
        self.bar.update(n)

    def close(self) -> None:
        self._stop.set()
        self.bar.close()


class Outcomes:
    """Where each photo's outcome goes, whichever engine ran it: the tally for the report, the
    progress bar, and `log` (one line per failure or warning). Used from one thread only."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None,
                 index: OutputIndex | None = None):
        self.tally = Tally()
        self._log = log
        self._progress = _Progress(config)
        self.index = index  # what made each output: planning asks it, `processed` tells it

    def processed(self, job: Job | None = None) -> None:
        """One input done, all its outputs written (`job`: recorded in the index, and its
        warning, if the decoder left one, in the report and the log)."""
        self.tally.processed += 1
        self._progress.update(1)
        if job is not None and job.warning is not None:
            self._warned(job.src, job.warning)
        if job is not None and self.index is not None:
            self.index.record(job.src, job.rel, job.warning)  # a redone photo's warning replaces the old one

    def _warned(self, src: Path, warning: str) -> None:
        self.tally.warn(str(src), warning)
        if self._log is not None:
            self._log(printable(f"{src}: warning: {warning}"))

    def skipped(self, skipped: Skipped | None = None) -> None:
        """One input skipped as done; `skipped.warning`, the one its decoder left in the run that
        made its outputs, goes to the report and the log again: that run's report may never have
        been written (killed), and this one replaces it."""
        self.tally.skipped += 1
        self._progress.update()
        if skipped is not None and skipped.warning is not None:
            self._warned(skipped.src, skipped.warning)

    def failed(self, failure: Failed) -> None:
        self.tally.fail(str(failure.src), failure.reason)
        if self._log is not None:
            self._log(printable(f"{failure.src}: {failure.reason}"))
        self._progress.update()

    def close(self) -> None:
        self._progress.close()


def finish_report(config: RunConfig, model: ModelDir, tally: Tally, wall_s: float, *, engine: str,
                  backend: str, device: str, batch_size: int, **engine_facts) -> dict:
    """The run's report, written to config.report_path and returned. engine_facts: what only
    one engine knows (the Ray engine's cluster and actors), stored as given."""
    report = build_report(
        tally, wall_s,
        hx_version=__version__,
        input=(printable(config.source_label) if isinstance(config.source_label, str)
               else [printable(label) for label in config.source_label]),
        output=printable(str(config.output_dir)),
        outputs=list(config.outputs),
        background=printable(config.options.background),
        refine=config.options.refine,
        overwrite=config.options.overwrite,
        model={"path": str(model.root), "sha256": model.sha256, "preset": model.preset,
               "size": model.size, "target": model.target},
        engine=engine,
        backend=backend,
        device=device,
        batch_size=batch_size,
        workers=config.workers,
        max_pixels=config.options.max_pixels,
        glob=config.options.glob,
        **engine_facts,
    )
    write_report(config.report_path, report)  # ReportError, carrying the report, when it cannot be written
    return report
