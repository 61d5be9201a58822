"""What GET /metrics tells, in Prometheus' text format (prometheus_client, a registry per app).

    hx_requests_total{code}             answered requests by HTTP status
    hx_request_errors_total{kind}       refused or failed ones by reason (see params.RequestError)
    hx_batch_size                       histogram of photos per backend call
    hx_request_duration_seconds         histogram of the time from admission to the answer's bytes
    hx_request_duration_recent_seconds  p50 / p90 / p99 of the last 1,000 images answered
    hx_requests_in_server               admitted now (reading, decoding, waiting, encoding)
    hx_photos_waiting                   decoded and waiting for a backend call
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable

import numpy as np
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily

disable_created_metrics()  # the *_created series (one per label set) only double the output

RECENT = 1000
QUANTILES = (0.5, 0.9, 0.99)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _RecentLatency:
    """A collector: percentiles over a window, which a histogram's buckets only approximate."""

    def __init__(self) -> None:
        self._seconds: deque[float] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._seconds.append(seconds)

    def quantiles(self) -> dict[float, float]:
        with self._lock:
            window = np.array(self._seconds)
        return {q: float(np.quantile(window, q)) for q in QUANTILES} if window.size else {}

    def collect(self):
        family = GaugeMetricFamily("hx_request_duration_recent_seconds",
                                   f"Latency percentiles of the last {RECENT} images answered",
                                   labels=["quantile"])
        for q, value in self.quantiles().items():
            family.add_metric([str(q)], value)
        yield family


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, in_server: Callable[[], int], waiting: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("hx_requests", "Answered requests by HTTP status", ["code"], registry=self.registry)
        self.errors = Counter("hx_request_errors", "Refused or failed requests by reason", ["kind"],
                              registry=self.registry)
        self.batch_size = Histogram("hx_batch_size", "Photos per backend call", buckets=_BATCH_BUCKETS,
                                    registry=self.registry)
        self.duration = Histogram("hx_request_duration_seconds", "Seconds from admission to the answer",
                                  buckets=_LATENCY_BUCKETS, registry=self.registry)
        Gauge("hx_requests_in_server", "Requests admitted now", registry=self.registry).set_function(in_server)
        Gauge("hx_photos_waiting", "Photos decoded and waiting for a backend call",
              registry=self.registry).set_function(waiting)
        self.recent = _RecentLatency()
        self.registry.register(self.recent)

    def answered(self, code: int, seconds: float | None = None) -> None:
        self.requests.labels(str(code)).inc()
        if seconds is not None:
            self.duration.observe(seconds)
            self.recent.observe(seconds)

    def failed(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
