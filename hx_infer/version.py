"""hx's version: the installed distribution's, or a checkout's placeholder."""
from __future__ import annotations


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hx")
    except PackageNotFoundError:  # running from a checkout that is not pip-installed
        return "0.1.0+checkout"


__version__ = _version()
