"""Load on `hx-infer serve` over loopback: requests/s and latency against `hx-infer run`'s photos/s.

    .venv/bin/python benchmarks/serve_load.py                       # the bundled model, rgba cutouts
    .venv/bin/python benchmarks/serve_load.py --model DIR --output alpha --seconds 5

1. 64 photos of 640 px on the longer side (COCO photos from /work/shared/data/coco, else ccp,
   resized; synthetic when neither is there), JPEG quality 90.
2. `hx-infer run` over them (--outputs OUTPUT, repeated to --run-photos files): the pipeline's own
   files/s from its report (the model is loaded before its clock starts, as the server's is), and
   its CPU per photo (that run's less a one-photo run's: start-up and model load drop out).
3. `hx-infer serve --max-batch 1` and `--max-batch 16` (on 127.0.0.1, a free port); at concurrency
   1, 4, 16 and 64, closed-loop clients (a thread and a keep-alive connection each) post the
   photos for --seconds (at most --max-requests per level, after a short warm-up): requests/s,
   p50 and p99 latency, the mean batch size from /metrics, and the CPU each request cost the
   server (/proc) and the clients: on a shared machine CPU per photo is steadier than photos/s.
4. The target (served at concurrency 16 >= 70 % of `hx-infer run`): --rounds pairs of a run over
   --run-photos photos and as many requests at concurrency 16, back to back; the median ratio.
5. Overload: --queue 16 with 32 clients, each retrying a 503 after 20 ms, for --overload-seconds;
   meanwhile /healthz is asked every 100 ms and the server's RSS read from /proc every 0.5 s.
   Expected: only 200s and 503s, /healthz always answered, RSS flat.

Every request goes to 127.0.0.1. Figures are saved as JSON in benchmarks/results/; never asserted
in tests. Bounded: about 2 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import record  # benchmarks/record.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from serve_client import HOST, Connection, Served  # noqa: E402 - starts the server, waits for its "on http://" line

SOURCES = [Path("/work/shared/data/coco/images"), Path("/work/shared/data/ccp/images")]
LONGER = 640


def make_photos(n: int = 64) -> tuple[list[bytes], str]:
    import io

    found = next((sorted(folder.glob("*.jpg")) for folder in SOURCES if folder.is_dir()), [])
    photos = []
    rng = np.random.default_rng(0)
    for i in range(n):
        if found:
            with Image.open(found[i % len(found)]) as im:
                photo = im.convert("RGB")
        else:  # a colour field with a bright disc, compresses like a photo
            yy, xx = np.mgrid[0:480, 0:640]
            base = np.stack([xx / 640, yy / 480, np.full((480, 640), rng.uniform())], -1) * 180
            base[(yy - 240) ** 2 + (xx - 320) ** 2 < 150 ** 2] = rng.uniform(200, 250, 3)
            photo = Image.fromarray(base.astype(np.uint8))
        scale = LONGER / max(photo.size)
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                             Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos, (f"{SOURCES[0] if SOURCES[0].is_dir() else SOURCES[1]} resized to {LONGER} px" if found
                    else f"synthetic {LONGER}x480")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(photos: list[bytes], n: int, args, tmp: Path) -> tuple[dict, float]:
    """`hx-infer run` over n photos -> (its report, the CPU seconds the process took)."""
    folder, out = tmp / f"photos{n}", tmp / f"out{n}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        (folder / f"{i:04d}.jpg").write_bytes(photos[i % len(photos)])
    command = [sys.executable, "-m", "hx_infer.cli", "run", str(folder), str(out), "--model", args.model,
               "--outputs", args.output, "--quiet", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cpu = _children_cpu_s()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    cpu = _children_cpu_s() - cpu
    if proc.returncode != 0:
        sys.exit(f"hx-infer run failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads((out / "hx-report.json").read_text()), cpu


def run_cli(photos: list[bytes], args, tmp: Path) -> dict:
    """photos/s of `hx-infer run`, and its CPU per photo: a run of N less a run of 1 (start-up, model load)."""
    report, cpu = _run_once(photos, args.run_photos, args, tmp)
    _, cpu_one = _run_once(photos, 1, args, tmp)
    return {"photos": args.run_photos, "files_per_s": report["files_per_s"], "wall_s": report["wall_s"],
            "cpu_ms_per_photo": round((cpu - cpu_one) / (args.run_photos - 1) * 1000, 1),
            "batch_size": report["batch_size"], "workers": report["workers"], "backend": report["backend"]}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clients:
    """`n` closed-loop clients posting photos until `stop_at` or `limit` answers; collects latencies."""

    def __init__(self, port: int, photos: list[bytes], query: str, n: int, seconds: float, limit: int,
                 retry_503_s: float | None = None):
        self.port, self.photos, self.query = port, photos, query
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._limit, self._retry = limit, retry_503_s
        self._stop_at = time.perf_counter() + seconds
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(n)]
        self.started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall_s = time.perf_counter() - self.started

    def _done(self) -> bool:
        return time.perf_counter() > self._stop_at or len(self.latencies) >= self._limit

    def _client(self, i: int) -> None:
        conn = Connection(HOST, self.port, timeout=120)
        k = i
        while not self._done():
            body = self.photos[k % len(self.photos)]
            k += 7
            started = time.perf_counter()
            try:
                conn.request("POST", "/api/remove" + self.query, body=body)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as e:
                with self._lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = Connection(HOST, self.port, timeout=120)
                continue
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 200:
                    self.latencies.append(time.perf_counter() - started)
            if status == 503 and self._retry is not None:
                time.sleep(self._retry)
        conn.close()

    def figures(self) -> dict:
        lat = np.array(self.latencies) * 1000
        return {"requests": len(self.latencies), "wall_s": round(self.wall_s, 2),
                "requests_per_s": round(len(self.latencies) / self.wall_s, 2),
                "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
                "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "errors": self.errors[:5]}


def batch_stats(served: Served) -> tuple[float, float]:
    status, _, text = served.request("GET", "/metrics")
    values = {}
    for line in text.decode().splitlines():
        if line.startswith(("hx_batch_size_sum ", "hx_batch_size_count ")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("hx_batch_size_sum", 0.0), values.get("hx_batch_size_count", 0.0)


def load_levels(photos, args, max_batch: int) -> list[dict]:
    served = Served(args.model, "--max-batch", str(max_batch))
    rows = []
    try:
        query = f"?output={args.output}"
        Clients(served.port, photos, query, 4, seconds=2, limit=16)  # warm-up: threads, allocator, caches
        for concurrency in args.concurrency:
            before, server_cpu, client_cpu = batch_stats(served), cpu_s(served.proc.pid), time.process_time()
            clients = Clients(served.port, photos, query, concurrency, args.seconds, args.max_requests)
            server_cpu, client_cpu = cpu_s(served.proc.pid) - server_cpu, time.process_time() - client_cpu
            after = batch_stats(served)
            calls, answered = after[1] - before[1], max(1, len(clients.latencies))
            row = {"max_batch": max_batch, "concurrency": concurrency, **clients.figures(),
                   "mean_batch": round((after[0] - before[0]) / calls, 2) if calls else None,
                   "server_cpu_ms_per_request": round(server_cpu / answered * 1000, 1),
                   "client_cpu_ms_per_request": round(client_cpu / answered * 1000, 1)}
            rows.append(row)
            print(f"max-batch {max_batch:2d}  concurrency {concurrency:2d}: {row['requests_per_s']:6.1f} req/s  "
                  f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  mean batch {row['mean_batch']}  "
                  f"CPU ms/request server {row['server_cpu_ms_per_request']} client "
                  f"{row['client_cpu_ms_per_request']}  statuses {row['statuses']}", flush=True)
    finally:
        served.stop()
    return rows


def paired(photos, args, tmp: Path) -> list[dict]:
    """The 70 % target, measured so that a shared machine's bursts hit both sides alike: rounds of
    `hx-infer run` over --run-photos photos, then as many requests at concurrency 16 (max-batch 16)."""
    served = Served(args.model, "--max-batch", "16")
    rounds = []
    try:
        query = f"?output={args.output}"
        Clients(served.port, photos, query, 4, seconds=2, limit=16)
        for _ in range(args.rounds):
            report, _ = _run_once(photos, args.run_photos, args, tmp)
            clients = Clients(served.port, photos, query, 16, seconds=60, limit=args.run_photos)
            served_rate = len(clients.latencies) / clients.wall_s
            rounds.append({"cli_photos_per_s": report["files_per_s"], "served_requests_per_s": round(served_rate, 2),
                           "ratio": round(served_rate / report["files_per_s"], 3)})
            print(f"paired round: hx-infer run {report['files_per_s']:.1f} photos/s, served at concurrency 16 "
                  f"{served_rate:.1f} req/s: {served_rate / report['files_per_s']:.0%}", flush=True)
    finally:
        served.stop()
    return rounds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def overload(photos, args) -> dict:
    queue = 16
    served = Served(args.model, "--queue", str(queue))
    health = {"answered": 0, "failed": 0, "max_ms": 0.0}
    rss: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        last_rss = 0.0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                served.health()
                health["answered"] += 1
                health["max_ms"] = max(health["max_ms"], (time.perf_counter() - started) * 1000)
            except (OSError, AssertionError, http.client.HTTPException):
                health["failed"] += 1
            if time.perf_counter() - last_rss > 0.5:
                rss.append(rss_mb(served.proc.pid))
                last_rss = time.perf_counter()
            time.sleep(0.1)

    try:
        Clients(served.port, photos, f"?output={args.output}", 4, seconds=2, limit=16)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        clients = Clients(served.port, photos, f"?output={args.output}", 2 * queue, args.overload_seconds,
                          limit=10**9, retry_503_s=0.02)
        stop.set()
        watcher.join()
    finally:
        served.stop()
    third = max(1, len(rss) // 3)
    result = {"queue": queue, "clients": 2 * queue, "seconds": args.overload_seconds, **clients.figures(),
              "healthz": {**health, "max_ms": round(health["max_ms"], 1)},
              "rss_mb": {"first_third_max": round(max(rss[:third]), 1), "last_third_max": round(max(rss[-third:]), 1),
                         "max": round(max(rss), 1), "samples": len(rss), "series": [round(m, 1) for m in rss]}}
    print(f"overload (queue {queue}, {2 * queue} clients, {args.overload_seconds:g} s): statuses {result['statuses']}, "
          f"transport errors {len(clients.errors)}, /healthz {health['answered']} answered / {health['failed']} "
          f"failed (max {health['max_ms']:.0f} ms), RSS MB {dict(list(result['rss_mb'].items())[:4])}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--output", default="rgba", choices=["rgba", "alpha", "composite"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=4, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=600, help="per concurrency level")
    parser.add_argument("--run-photos", type=int, default=128, help="photos per hx-infer run (and per paired round)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds of hx-infer run and served")
    parser.add_argument("--overload-seconds", type=float, default=10)
    args = parser.parse_args()

    photos, source = make_photos()
    with tempfile.TemporaryDirectory(prefix="hx-serve-bench-") as tmp:
        cli = run_cli(photos, args, Path(tmp))
        print(f"hx-infer run --outputs {args.output}: {cli['files_per_s']:.1f} photos/s, "
              f"{cli['cpu_ms_per_photo']} CPU ms/photo ({cli['photos']} photos, batch {cli['batch_size']}, "
              f"{cli['workers']} workers)", flush=True)
        rounds = paired(photos, args, Path(tmp)) if args.rounds else []
    rows = [row for max_batch in args.max_batches for row in load_levels(photos, args, max_batch)]
    ratio = float(np.median([r["ratio"] for r in rounds])) if rounds else None
    if ratio is not None:
        print(f"served at concurrency 16 (max-batch 16): {ratio:.0%} of hx-infer run's photos/s, median of "
              f"{len(rounds)} paired rounds (target >= 70 %)")
    result = {"benchmark": "serve_load", "when": record.now(), "photo_source": source, "output": args.output,
              "model": args.model, "cli": cli, "served": rows, "paired_rounds": rounds,
              "served_c16_over_cli": round(ratio, 3) if ratio is not None else None,
              "overload": overload(photos, args) if args.overload_seconds > 0 else None,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "python": platform.python_version()}
    record.save("serve_load", result)


if __name__ == "__main__":
    main()
