"""Extractor: a model on a backend, for arrays (alpha, alphas) and whole folders (run).

Kept apart from the package's __init__ so that hx_infer.api (remove) can import it while
`hx_infer.remove` is loaded from __init__ on first use, with no import cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

if TYPE_CHECKING:
    import numpy as np

    from .backends.base import Backend
    from .engines import Engine
    from .model import ModelDir
    from .run.config import SeveralInputs
    from .run.options import RunOptions
    from .transforms import Letterbox


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

    def alpha(self, rgb: "np.ndarray", refine: str = "none") -> "np.ndarray":
        """rgb: [H, W, 3] uint8 RGB, already oriented -> matte [H, W] uint8, 255 = person.
        refine: "none" or "guided", as `hx-infer run --refine`."""
        return self.alphas([rgb], refine=refine)[0]

    def alphas(self, photos: "Iterable[np.ndarray]", refine: str = "none") -> "list[np.ndarray]":
        """Several photos ([H, W, 3] uint8 RGB, already oriented, any sizes; a list or any iterable,
        a generator too) -> their mattes ([H, W] uint8, 255 = person), in order, batch_size photos
        per inference call. Each matte is the one `hx-infer run` writes for that photo's pixels
        (decoded at full size)."""
        import numpy as np

        from .transforms import letterbox

        photos = list(photos)  # checked, then letterboxed: a generator would be empty the second time
        for i, rgb in enumerate(photos):
            if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                what = f"{list(rgb.shape)} {rgb.dtype}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
                raise ValueError(f"alphas(): photo {i}: expected an [H, W, 3] uint8 RGB array, got {what}")
        items = []
        for rgb in photos:
            x, box = letterbox(rgb, self.model.size)  # [3, S, S] float32
            items.append((x, box, rgb))
        return self.mattes(items, refine)

    def mattes(self, items: "Sequence[tuple[np.ndarray, Letterbox, np.ndarray | None]]",
               refine: str = "none") -> "list[np.ndarray]":
        """Letterboxed inputs -> mattes, as run's stages make them. items: (x [3, S, S] float32 from
        transforms.letterbox, its Letterbox, the photo [H, W, 3] uint8 or None when refine is
        "none"). For callers that decode themselves (hx_infer.api decodes bytes as run does)."""
        import numpy as np

        from .errors import ConfigError
        from .run.options import REFINES
        from .transforms import refine_matte, to_uint8, unletterbox

        if self.model.target != "alpha":
            raise ConfigError(f"model {self.model.root} paints the person on white (target rgb); "
                              "it makes no matte")
        if refine not in REFINES:
            raise ConfigError(f"--refine {refine!r}: choose from {', '.join(REFINES)}")
        step = self.batch_size or 8
        mattes = []
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            out = np.asarray(self.backend.infer(np.stack([x for x, _, _ in chunk])))  # [N, 1, S, S] in [0, 1]
            for (x, box, rgb), matte in zip(chunk, out):
                mattes.append(to_uint8(refine_matte(unletterbox(matte, box), rgb, refine, self.model.size)))
        return mattes

    def run(self, inputs: "str | Path | Iterable[str | Path] | SeveralInputs", output_dir: str | Path,
            options: "RunOptions | None" = None, *, log: Callable[[str], None] | None = None, **changes) -> dict:
        """Process a photo, a folder tree, several of those (hx_infer.run.config.SeveralInputs) or
        an iterable of paths into output_dir (see
        hx_infer.run for the layout). Existing outputs are kept (resume) unless overwrite.

        options: a hx_infer.run.options.RunOptions; `changes` replace its fields by name
        (outputs=, background=, refine=, overwrite=, workers=, max_pixels=, glob=, report=,
        progress=, log_every=, png_compression=, video=), and a name that is not one of them is a TypeError.
        Returns the report (also written to `report`, default OUTPUT/hx-report.json). Photos
        that cannot be read are counted in it, with their reason, and passed to `log`. A report
        that cannot be written raises hx_infer.report.ReportError, which carries it (`.report`).
        OUTPUT is locked for the run and records what made it (see hx_infer.run.claim).
        Videos among the inputs are written as `video` says (RunOptions.video, a VideoOptions:
        temporal smoothing, lossless, rgba codec); each counts as one file.
        """
        from dataclasses import replace

        from .run.config import make_config
        from .run.options import RunOptions

        options = replace(options or RunOptions(), **changes)
        config = make_config(inputs, output_dir, self.model, options)
        return self.engine.run(config, self.handle, log=log)
