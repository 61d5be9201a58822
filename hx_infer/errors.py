"""The one-line errors every layer raises: bad usage (ConfigError, exit code 2 in the CLI) and an
engine that stopped part-way (EngineError, exit code 1)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad run option or path; the message is one line naming the option or path."""


class EngineError(RuntimeError):
    """The engine stopped part-way (its cluster went away, a stage crashed); one line. Outputs
    written so far are complete files, so the same command resumes."""
