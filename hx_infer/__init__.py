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

if TYPE_CHECKING:
    import numpy as np

    from .backends.base import Backend
    from .engines import Engine
    from .model import ModelDir
    from .video_pipeline import VideoOptions


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hx")
    except PackageNotFoundError:  # running from a checkout that is not pip-installed
        return "0.1.0+checkout"


__version__ = _version()
__all__ = ["Extractor", "__version__"]


def load_model(model: str | Path) -> "ModelDir":
    """"default" (the bundled model), a bundled model's name, or a model folder -> ModelDir, its
    files checked against the sha256 in its card (ModelError, one line, on a mismatch)."""
    from .model import CARD, ModelError, default_model_dir, load_model_dir

    if str(model) == "default" and not (default_model_dir() / CARD).is_file():
        raise ModelError("--model default: this installation has no bundled model yet; "
                         "pass --model DIR, a folder made by `hx-train export`")
    return load_model_dir(model, verify=True)


class Extractor:
    """A model on a backend, ready for arrays (`alpha`) or whole folders (`run`).

    model: "default", a bundled model's name, or a model folder. backend: auto, ort, torch or trt.
    device: auto, cpu, cuda or cuda:N. batch_size: photos per inference call (default 8 on the
    CPU, 32 on CUDA). Raises ModelError / BackendError / ConfigError with a one-line message.
    The backend opens on first use; close it with `close()` or a `with` block.
    engine: None runs `run` in this process; an engine from hx_infer.engines.make_engine (e.g.
    "ray") runs it there, and then backend, device and the default batch size are settled
    where the engine runs the model (this machine may have no GPU while its workers do).
    engine_cache: the folder of built TensorRT engines (trt backend; default ~/.cache/hx/trt).
    """

    def __init__(self, model: str | Path = "default", backend: str = "auto", device: str = "auto",
                 batch_size: int | None = None, engine: "Engine | None" = None,
                 engine_cache: str | Path | None = None):
        from .backends.base import resolve_backend, resolve_device
        from .pipeline import ConfigError

        self.model = load_model(model)
        self.engine = engine
        if engine is None:
            self.device = resolve_device(device)
            self.backend_name = resolve_backend(backend, self.device)
            if batch_size is None:
                batch_size = 32 if self.device.startswith("cuda") else 8
        else:
            if backend != "auto":
                resolve_backend(backend, "cpu")  # the name only: fail here, not on every worker
            self.device, self.backend_name = device, backend
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.engine_cache = engine_cache
        self._backend: Backend | None = None

    @property
    def backend(self) -> "Backend":
        if self._backend is None:
            from .backends.base import open_backend

            self._backend = open_backend(self.backend_name, self.model, self.device,
                                         batch_size=self.batch_size, engine_cache=self.engine_cache)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def alpha(self, rgb: "np.ndarray") -> "np.ndarray":
        """rgb: [H, W, 3] uint8 RGB, already oriented -> matte [H, W] uint8, 255 = person."""
        import numpy as np

        from .pipeline import ConfigError
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

    def run(self, inputs: str | Path | Iterable[str | Path], output_dir: str | Path, *,
            outputs: str | Iterable[str] = ("rgba",), background: str = "white",
            refine: str = "none", overwrite: bool = False, workers: int | None = None,
            max_pixels: int = 100_000_000, glob: str | None = None,
            report: str | Path | None = None, progress: bool = True,
            log: Callable[[str], None] | None = None, video: "VideoOptions | None" = None) -> dict:
        """Process a photo, a folder tree, or an iterable of paths into output_dir; see
        hx_infer.pipeline for the layout. Existing outputs are kept (resume) unless overwrite.

        Returns the report (also written to `report`, default OUTPUT/hx-report.json). Photos
        that cannot be read are counted in it, with their reason, and passed to `log`.
        Videos among the inputs are written as `video` says (hx_infer.video_pipeline.VideoOptions:
        temporal smoothing, lossless, rgba codec); each counts as one file.
        """
        from . import pipeline

        config = pipeline.make_config(
            inputs, output_dir, self.model, outputs=outputs, background=background, refine=refine,
            overwrite=overwrite, workers=workers, max_pixels=max_pixels, glob=glob, report=report,
            progress=progress, video=video)
        if self.engine is not None:
            return self.engine.run(config, self.model, self.backend_name, self.device, self.batch_size, log=log,
                                   engine_cache=self.engine_cache)
        return pipeline.run(config, self.backend, self.model, self.batch_size, log=log)
