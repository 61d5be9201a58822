"""`hx-infer bench`: model-only throughput and latency per backend x precision x batch size.

Each configuration runs `warmup` calls (graph capture, cuDNN autotuning, engine loading: not
timed), then `iterations` calls on one batch already in the backend's memory (a CUDA tensor on
CUDA, a numpy array on the CPU), so the figures are the network's, not the decoder's.
On CUDA each call is timed with a pair of CUDA events on the current stream (GPU time, no host
sync between calls); on the CPU with perf_counter. Throughput is images / (first start event ->
last end event). Beside each row: the model card's FLOPs per image and the TFLOP/s achieved.

Results: a JSON-ready dict (bench_model), a markdown table (markdown_table) and a PNG chart of
throughput against batch size (plot_throughput). The chart is drawn with OpenCV, already a
dependency, rather than matplotlib: one line chart does not justify a new dependency, and the
GPU machines the figures come from do not have matplotlib either.
"""
from __future__ import annotations

import datetime
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backends.base import BackendError, BackendSpec, Device, open_backend, resolve_backend, resolve_device
from .model import ModelDir

FORMAT = "hx-bench/1"
BATCHES_CUDA = (1, 8, 32, 128, 256)
BATCHES_CPU = (1, 8, 32)
PERCENTILES = (50, 90, 99)

Log = Callable[[str], None]


def default_batches(device: Device | str) -> tuple[int, ...]:
    return BATCHES_CUDA if Device.parse(device).cuda else BATCHES_CPU


def parse_batches(text: str) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32); ValueError naming --batch-sizes otherwise."""
    try:
        batches = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: give whole numbers separated by commas, e.g. 1,8,32") from None
    if not batches or min(batches) < 1:
        raise ValueError(f"--batch-sizes {text!r}: give one or more batch sizes of at least 1")
    return tuple(dict.fromkeys(batches))


def time_calls(call: Callable[[], object], iterations: int, warmup: int, cuda: bool) -> tuple[list[float], float]:
    """-> (milliseconds per call, seconds for all of them)."""
    for _ in range(warmup):
        call()
    if not cuda:
        latencies = []
        for _ in range(iterations):
            start = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - start) * 1000)
        return latencies, sum(latencies) / 1000
    import torch

    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iterations)]
    for start, end in events:
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()  # sync point: every event has completed
    latencies = [start.elapsed_time(end) for start, end in events]
    return latencies, events[0][0].elapsed_time(events[-1][1]) / 1000


def _row(name: str, precision: str | None, batch: int, gflops: float | None) -> dict:
    return {"backend": name, "precision": precision, "batch": batch, "iterations": 0, "img_per_s": None,
            "latency_ms": None, "gflops_per_image": gflops, "tflops": None, "backend_description": None,
            "error": None}


def bench_model(model: ModelDir, *, backends: Sequence[str] = ("auto",), precisions: Sequence[str | None] = (None,),
                batches: Sequence[int] | None = None, device: str = "auto", iterations: int = 20, warmup: int = 3,
                cuda_graphs: bool = True, threads: int | None = None, engine_cache: Path | None = None,
                log: Log = lambda line: None) -> dict:
    """Time every (backend, precision, batch) and return the results (see FORMAT's keys below).

    precisions: None is the backend's default (fp16 on CUDA, fp32 on the CPU). A backend that
    cannot run here, or a precision it does not have, raises BackendError before anything is
    timed; an error while timing one configuration is kept in its row and the rest go on.
    trt is opened once per precision with an engine for the largest batch (an engine build takes
    minutes); torch and ort once per batch size (CUDA graphs are captured for that size).
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"--iterations must be at least 1 and --warmup at least 0, got {iterations}, {warmup}")
    device = resolve_device(device)
    batches = tuple(batches or default_batches(device))
    names = list(dict.fromkeys(resolve_backend(name, device) for name in backends))
    gflops = model.card.get("gflops_per_image")
    cuda = device.cuda
    rows = []
    for name in names:
        for precision in precisions:
            spec = BackendSpec(name, device, precision=precision, engine_cache=engine_cache, threads=threads,
                               cuda_graphs=cuda_graphs)
            shared = open_backend(model, replace(spec, batch_size=max(batches))) if name == "trt" else None
            try:
                for batch in batches:
                    backend = shared or open_backend(model, replace(spec, batch_size=batch))
                    try:
                        rows.append(_time_one(backend, model, name, batch, gflops, cuda, iterations, warmup, log))
                    finally:
                        if shared is None:
                            backend.close()
            finally:
                if shared is not None:
                    shared.close()
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(model.root), "preset": model.preset, "size": model.size, "target": model.target,
                  "gflops_per_image": gflops},
        "device": str(device),
        "hardware": _hardware(device),
        "settings": {"iterations": iterations, "warmup": warmup, "cuda_graphs": cuda_graphs,
                     "timer": "CUDA events" if cuda else "perf_counter"},
        "rows": rows,
    }


def _time_one(backend, model: ModelDir, name: str, batch: int, gflops, cuda: bool, iterations: int,
              warmup: int, log: Log) -> dict:
    precision = getattr(backend, "precision", None)
    row = _row(name, precision, batch, gflops)
    row["backend_description"] = backend.describe()
    try:
        images = random_inputs(batch, model.size, backend.device)
        latencies, total_s = time_calls(lambda: backend.infer(images), iterations, warmup, cuda)
    except Exception as e:  # noqa: BLE001 - one configuration failing (out of memory, say) ends only its row
        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        log(f"{name} {precision} batch {batch}: {row['error']}")
        return row
    row["iterations"] = iterations
    row["img_per_s"] = round(batch * iterations / total_s, 2)
    row["latency_ms"] = {f"p{p}": round(float(np.percentile(latencies, p)), 4) for p in PERCENTILES}
    if gflops:
        row["tflops"] = round(row["img_per_s"] * gflops / 1000, 4)
    log(f"{name} {precision} batch {batch}: {row['img_per_s']:.1f} img/s, "
        f"p50 {row['latency_ms']['p50']:.3f} ms")
    return row


def random_inputs(batch: int, size: int, device: Device):
    """[batch, 3, size, size] float32 in [-1, 1), on the CUDA device when there is one. Drawn in
    float32 (not float64 and then cast), so a batch too big for memory fails at its true size, and
    inside its row's try: it ends that row, not the whole bench."""
    images = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
    images *= 2
    images -= 1
    if not device.cuda:
        return images
    import torch

    return torch.from_numpy(images).to(str(device))


def _hardware(device: Device) -> dict:
    facts = {"machine": platform.machine(), "python": platform.python_version()}
    try:
        import torch

        facts["torch"] = torch.__version__
        if device.cuda:
            index = device.index or 0
            facts["gpu"] = torch.cuda.get_device_name(index)
            facts["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
            facts["cuda"] = torch.version.cuda
    except ImportError:
        pass
    import os

    facts["cpu_cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return facts


# ---------------------------------------------------------------------------------------------
# Reports


def _cell(value, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown_table(result: dict) -> str:
    """One row per configuration; failed ones carry their error in the last column."""
    lines = ["| backend | precision | batch | img/s | p50 ms | p90 ms | p99 ms | GFLOP/img | TFLOP/s | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        lat = row["latency_ms"] or {}
        lines.append(f"| {row['backend']} | {row['precision'] or '—'} | {row['batch']} | "
                     f"{_cell(row['img_per_s'], 1)} | {_cell(lat.get('p50'), 3)} | {_cell(lat.get('p90'), 3)} | "
                     f"{_cell(lat.get('p99'), 3)} | {_cell(row['gflops_per_image'], 3)} | "
                     f"{_cell(row['tflops'], 3)} | {row['error'] or ''} |")
    hw = result["hardware"]
    where = hw.get("gpu") or f"CPU, {hw.get('cpu_cores')} cores"
    return (f"{result['model']['preset']} {result['model']['size']} px on {where} "
            f"({result['settings']['timer']}, {result['settings']['iterations']} calls after "
            f"{result['settings']['warmup']} warm-up)\n\n" + "\n".join(lines) + "\n")


def write_json(result: dict, path: Path) -> None:
    from .io.images import atomic_write

    atomic_write(Path(path), (json.dumps(result, indent=2) + "\n").encode())


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_throughput(result: dict, path: Path, width: int = 960, height: int = 600) -> None:
    """A PNG line chart: images/s against batch size (log2 axis), one line per backend x precision."""
    import cv2

    from .io.images import atomic_write, encode_png

    series: dict[str, list[tuple[int, float]]] = {}
    for row in result["rows"]:
        if row["img_per_s"] is not None:
            series.setdefault(f"{row['backend']} {row['precision']}", []).append((row["batch"], row["img_per_s"]))
    canvas = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 90, width - 30, 50, height - 60
    batches = sorted({b for points in series.values() for b, _ in points}) or [1]
    top_value = max([v for points in series.values() for _, v in points] or [1.0]) * 1.1
    lo, hi = np.log2(batches[0]), np.log2(batches[-1])

    def x_of(batch: int) -> int:
        return int(left + (right - left) * ((np.log2(batch) - lo) / (hi - lo) if hi > lo else 0.5))

    def y_of(value: float) -> int:
        return int(bottom - (bottom - top) * value / top_value)

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (200, 200, 200), (0, 0, 0)
    for i in range(6):  # horizontal grid with values
        value = top_value * i / 5
        cv2.line(canvas, (left, y_of(value)), (right, y_of(value)), grey, 1)
        cv2.putText(canvas, f"{value:,.0f}", (8, y_of(value) + 5), font, 0.45, black, 1, cv2.LINE_AA)
    for b in batches:
        cv2.line(canvas, (x_of(b), top), (x_of(b), bottom), grey, 1)
        cv2.putText(canvas, str(b), (x_of(b) - 10, bottom + 22), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), black, 1)
    cv2.putText(canvas, "batch size", ((left + right) // 2 - 40, height - 12), font, 0.55, black, 1, cv2.LINE_AA)
    hw = result["hardware"]
    title = (f"images/s, {result['model']['preset']} {result['model']['size']} px, "
             f"{hw.get('gpu') or 'CPU'}")
    cv2.putText(canvas, title, (left, 30), font, 0.6, black, 1, cv2.LINE_AA)
    for i, (label, points) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        xy = np.array([(x_of(b), y_of(v)) for b, v in sorted(points)], np.int32)
        cv2.polylines(canvas, [xy], False, colour, 2, cv2.LINE_AA)
        for point in xy:
            cv2.circle(canvas, tuple(int(c) for c in point), 4, colour, -1, cv2.LINE_AA)
        cv2.putText(canvas, label, (left + 12, top + 22 + 20 * i), font, 0.5, colour, 1, cv2.LINE_AA)
    atomic_write(Path(path), encode_png(canvas))
