"""Engines: what runs the per-photo stages of `hx-infer run` (hx_infer.pipeline.PhotoStages).

    local  hx_infer.pipeline.run: decode and write threads, one backend, in this process
    ray    hx_infer.engines.ray.RayEngine: the same stages as Ray Data tasks and actors, on this
           machine or a cluster

Every engine takes the same validated RunConfig, writes the same bytes under the same paths and
returns the same report. An engine's runtime is imported only when the engine is chosen, so
`import hx_infer` and `hx-infer --help` work without ray.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from ..model import ModelDir
    from ..pipeline import RunConfig

ENGINES = ("local", "ray")


class EngineError(RuntimeError):
    """The engine stopped part-way (its cluster went away, a stage crashed); one line. Outputs
    written so far are complete files, so the same command resumes."""


class Engine(Protocol):
    name: str

    def run(self, config: "RunConfig", model: "ModelDir", backend: str, device: str,
            batch_size: int | None, log: Callable[[str], None] | None = None,
            engine_cache: Path | None = None) -> dict:
        """Run the job and return the report (also written to config.report_path). backend and
        device are the user's words ('auto' included), resolved where the model runs;
        engine_cache is the trt backend's folder of built engines there (None: its default)."""
        ...


def make_engine(name: str, **options) -> Engine | None:
    """'local' -> None (hx_infer.pipeline.run in this process); 'ray' -> RayEngine(**options).

    Raises ConfigError naming --engine when the name is unknown or its runtime is not installed.
    """
    from ..pipeline import ConfigError

    if name == "local":
        if options:
            raise ConfigError(f"--engine local takes no engine options (got {', '.join(sorted(options))})")
        return None
    if name == "ray":
        try:
            from .ray import RayEngine
        except ImportError as e:  # ray, or a part of ray[data] (pyarrow, pandas), is missing
            raise ConfigError(f"--engine ray: Ray is not installed here ({e}); "
                              "install it with pip install 'hx[ray]'") from None
        return RayEngine(**options)
    raise ConfigError(f"--engine {name!r}: choose from {', '.join(ENGINES)}")
