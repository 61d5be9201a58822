"""hx_infer: cut people out of photos with a model folder made by `hx-train export`.

    from hx_infer import Extractor

    with Extractor("runs/quickstart/model") as ex:
        matte = ex.alpha(rgb)                                   # [H, W, 3] uint8 -> [H, W] uint8
        report = ex.run("photos/", "out/", outputs=("alpha", "rgba"))

Importing hx_infer is cheap: numpy, onnxruntime and torch load only when they are used, and
tensorrt, av and ray only when their backend or engine is chosen.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .version import __version__

if TYPE_CHECKING:
    import numpy as np

    from .backends.base import Backend
    from .engines import Engine
    from .model import ModelDir
    from .run.options import RunOptions

__all__ = ["Extractor", "__version__"]


def load_model(model: str | Path) -> "ModelDir":
    """"default" (the bundled model), a bundled model's name, or a model folder -> ModelDir."""
    from .model import CARD, ModelError, default_model_dir, load_model_dir

    if str(model) == "default" and not (default_model_dir() / CARD).is_file():
        raise ModelError("--model default: this installation has no bundled model yet; "
                         "pass --model DIR, a folder made by `hx-train export`")
    return load_model_dir(model)


class Extractor:
    """A model on a backend, ready for arrays (`alpha`) or whole folders (`run`).

    model: "default", a bundled model's name, or a model folder. backend: auto, ort, torch or trt.
    device: auto, cpu, cuda or cuda:N. batch_size: photos per inference call (default 8 on the
    CPU, 32 on CUDA). Raises ModelError / BackendError / ConfigError with a one-line message.
    The backend opens on first use; close it with `close()` or a `with` block.
    engine: an engine from hx_infer.engines.make_engine; the default runs `run` in this process
    ("local"). With "ray", backend, device and the default batch size are settled where the
    engine runs the model (this machine may have no GPU while its workers do).
    engine_cache: the folder of built TensorRT engines (trt backend; default ~/.cache/hx/trt).
    """

    def __init__(self, model: str | Path = "default", backend: str = "auto", device: str = "auto",
                 batch_size: int | None = None, engine: "Engine | None" = None,
                 engine_cache: str | Path | None = None):
        from .backends.base import BackendHandle, BackendSpec
        from .engines import make_engine

        self.model = load_model(model)
        self.engine = engine if engine is not None else make_engine("local")
        spec = BackendSpec(backend, device, batch_size=batch_size, engine_cache=engine_cache)
        if self.engine.name == "local":
            spec = spec.resolved()  # a missing GPU or runtime is an error now, not at the first photo
        self.handle = BackendHandle(self.model, spec)

    @property
    def spec(self):
        """The BackendSpec the model runs with (settled for this machine with the local engine)."""
        return self.handle.spec

    @property
    def batch_size(self) -> int | None:
        return self.handle.spec.batch_size

    @property
    def backend(self) -> "Backend":
        """The backend on this machine, opened on first use."""
        return self.handle.backend

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def alpha(self, rgb: "np.ndarray") -> "np.ndarray":
        """rgb: [H, W, 3] uint8 RGB, already oriented -> matte [H, W] uint8, 255 = person."""
        import numpy as np

        from .errors import ConfigError
        from .transforms import letterbox, to_uint8, unletterbox

        if self.model.target != "alpha":
            raise ConfigError(f"model {self.model.root} paints the person on white (target rgb); "
                              "it makes no matte")
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            what = f"{list(rgb.shape)} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"alpha(): expected an [H, W, 3] uint8 RGB array, got {what}")
        x, box = letterbox(rgb, self.model.size)  # [3, S, S] float32
        out = np.asarray(self.backend.infer(x[None]))[0]  # [1, S, S] float32 in [0, 1]
        return to_uint8(unletterbox(out, box))

    def run(self, inputs: str | Path | Iterable[str | Path], output_dir: str | Path,
            options: "RunOptions | None" = None, *, log: Callable[[str], None] | None = None, **changes) -> dict:
        """Process a photo, a folder tree, or an iterable of paths into output_dir (see
        hx_infer.run for the layout). Existing outputs are kept (resume) unless overwrite.

        options: a hx_infer.run.options.RunOptions; `changes` replace its fields by name
        (outputs=, background=, refine=, overwrite=, workers=, max_pixels=, glob=, report=,
        progress=, video=), and a name that is not one of them is a TypeError.
        Returns the report (also written to `report`, default OUTPUT/hx-report.json). Photos
        that cannot be read are counted in it, with their reason, and passed to `log`.
        Videos among the inputs are written as `video` says (RunOptions.video, a VideoOptions:
        temporal smoothing, lossless, rgba codec); each counts as one file.
        """
        from dataclasses import replace

        from .run.config import make_config
        from .run.options import RunOptions

        options = replace(options or RunOptions(), **changes)
        config = make_config(inputs, output_dir, self.model, options)
        return self.engine.run(config, self.handle, log=log)
