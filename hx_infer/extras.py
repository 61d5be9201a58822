"""What to install for an optional part of hx, said the same way everywhere.

The hint names both forms: `pip install 'hx[EXTRA]'` for an installed hx, and `pip install
'.[EXTRA]'` for a checkout (where `hx[EXTRA]` would fetch another copy of hx from the index).
Imports nothing heavy: the CLIs call it before any runtime loads.
"""
from __future__ import annotations

import importlib.util


def install_hint(extra: str) -> str:
    """'pip install 'hx[train]' (in a checkout: pip install '.[train]')'."""
    return f"pip install 'hx[{extra}]' (in a checkout: pip install '.[{extra}]')"


def missing(*modules: str) -> list[str]:
    """The top-level modules among `modules` that cannot be imported here (found without importing)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require(what: str, extra: str, *modules: str) -> str | None:
    """None when every module is there, else one line: '<what> needs torch, onnx (the train extra): pip ...'."""
    absent = missing(*modules)
    if not absent:
        return None
    return f"{what} needs {', '.join(absent)} (the {extra} extra): {install_hint(extra)}"
