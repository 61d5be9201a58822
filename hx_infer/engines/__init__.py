"""Engines: what runs a planned `hx-infer run` (hx_infer.run) over its inputs.

    local  hx_infer.engines.local.LocalEngine: decode and write threads, one backend, this process
    ray    hx_infer.engines.ray.RayEngine: the same stages as Ray Data tasks and actors, on this
           machine or a cluster

Every engine takes the same checked RunConfig and a BackendHandle (the model and the spec of
its backend), writes the same bytes under the same paths and returns the same report. An
engine's runtime is imported only when the engine is chosen, so `import hx_infer` and
`hx-infer --help` work without ray.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import ConfigError, EngineError

if TYPE_CHECKING:
    from ..backends.base import BackendHandle
    from ..run.config import RunConfig

__all__ = ["ENGINES", "Engine", "EngineError", "make_engine"]

ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str

    def run(self, config: "RunConfig", handle: "BackendHandle", log: Callable[[str], None] | None = None) -> dict:
        """Run the job and return the report (also written to config.report_path). log hears one
        line per input that failed. The local engine opens handle.backend here; others open the
        backend where they run the model, from handle.spec (its 'auto' settled there)."""
        ...


def make_engine(name: str, **options) -> Engine:
    """'local' -> LocalEngine(); 'ray' -> RayEngine(**options).

    Raises ConfigError naming --engine when the name is unknown, an option is not the engine's,
    or its runtime is not installed.
    """
    if name == "local":
        if options:
            raise ConfigError(f"--engine local takes no engine options (got {', '.join(sorted(options))})")
        from .local import LocalEngine  # here, not at the top: `hx-infer --help` loads no numpy or OpenCV

        return LocalEngine()
    if name == "ray":
        try:
            from .ray import RayEngine
        except ImportError as e:  # ray, or a part of ray[data] (pyarrow, pandas), is missing
            from ..extras import install_hint

            raise ConfigError(f"--engine ray: Ray is not installed here ({e}); {install_hint('ray')}") from None
        return RayEngine(**options)
    raise ConfigError(f"--engine {name!r}: choose from {', '.join(ENGINES)}")
