"""hx_infer: cut people out of photos with a model folder made by `hx-train export`.

    import hx_infer

    cutout = hx_infer.remove(Image.open("me.jpg"))             # PIL in, PIL RGBA out (see hx_infer.api)

    from hx_infer import Extractor

    with Extractor("runs/quickstart/model") as ex:
        matte = ex.alpha(rgb)                                   # [H, W, 3] uint8 -> [H, W] uint8
        report = ex.run("photos/", "out/", outputs=("alpha", "rgba"))

Importing hx_infer is cheap: numpy, onnxruntime and torch load only when they are used, and
tensorrt, av and ray only when their backend or engine is chosen.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .extractor import Extractor, load_model
from .version import __version__

if TYPE_CHECKING:
    from .api import remove

__all__ = ["Extractor", "load_model", "remove", "__version__"]


def __getattr__(name: str):
    # hx_infer.remove loads hx_infer.api (and numpy) on first use; `import hx_infer` stays cheap.
    if name == "remove":
        from .api import remove

        return remove
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
