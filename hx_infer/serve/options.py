"""The options of `hx-infer serve`, validated once before the model loads."""
from __future__ import annotations

import math
from dataclasses import dataclass

MiB = 1 << 20


class ServeError(ValueError):
    """A bad serve option; the message is one line naming it."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: there is no authentication, so exposing it is a choice
    port: int = 7000  # 0: any free port (the "listening on" line says which)
    model: str = "default"
    backend: str = "auto"
    device: str = "auto"
    max_batch: int = 16  # photos per backend call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    workers: int | None = None  # decode/encode threads; None: the cores this process may use
    max_body_mb: float = 32.0  # MiB; a larger body is answered 413 before it is read
    max_pixels: int = 40_000_000  # from the header, before decoding; a 24 MP camera photo fits
    queue: int = 256  # requests in the server at once (reading, decoding, waiting, encoding)
    drain_timeout_s: float = 30.0  # after SIGTERM, how long in-flight requests may take
    access_log: bool = False

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MiB)

    def check(self) -> None:
        """Raise ServeError naming the first bad option."""
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port {self.port}: use 0 (any free port) to 65535")
        for flag, value, low in (("--max-batch", self.max_batch, 1), ("--queue", self.queue, 1),
                                 ("--max-pixels", self.max_pixels, 1),
                                 ("--workers", self.workers if self.workers is not None else 1, 1)):
            if value < low:
                raise ServeError(f"{flag} must be at least {low}, got {value}")
        # nan passes every bound below (no comparison holds for it); the CLI's type refuses both,
        # the Python API has only this.
        for flag, value in (("--max-wait-ms", self.max_wait_ms), ("--max-body-mb", self.max_body_mb),
                            ("--drain-timeout", self.drain_timeout_s)):
            if not math.isfinite(value):
                raise ServeError(f"{flag} must be a finite number, got {value}")
        if self.max_wait_ms < 0:
            raise ServeError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.max_body_mb <= 0:
            raise ServeError(f"--max-body-mb must be more than 0, got {self.max_body_mb}")
        if self.drain_timeout_s < 0:
            raise ServeError(f"--drain-timeout must be 0 or more, got {self.drain_timeout_s}")
