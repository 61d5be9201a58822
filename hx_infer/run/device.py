"""The photo stages on a device: letterbox, un-letterbox, matte and composition in torch.

    photos [h, w, 3] uint8 (CPU decode) or JPEG bytes (GPU decode)
      -> copy stream:    pinned staging -> device, or nvJPEG; EXIF orientation; letterbox
                         -> x [N, 3, S, S] float32 in [-1, 1]
      -> compute stream: backend.infer(x) -> [N, C, S, S] float32 in [0, 1]; un-letterbox and
                         upsample to each photo's size; uint8 matte; RGBA cutout / composite
                         -> pinned host buffer
      -> host:           uint8 numpy arrays for the CPU encoders (hx_infer.io.images)

The same functions run on CPU tensors (the tests check them against hx_infer.transforms and
hx_infer.compose there); only DeviceBatches on a CUDA device adds the streams and pinned memory.
On CUDA the upload and letterboxing of batch i+1 run on the copy stream while batch i is
inferred on the compute stream: DeviceBatches.submit returns at once, and the caller collects a
batch's outputs after submitting the next one (DeviceStages does exactly that, behind the
Stages interface of hx_infer.run.photos that the local engine drives).

Resampling matches the numpy path, not merely its geometry: shrinking uses exact area weights
(OpenCV's INTER_AREA, as two small matrix products per photo) and the result is rounded to
uint8 as cv2.resize rounds it. torch's antialiased bilinear filter was measured against
INTER_AREA on synthetic photos: its tent filter is twice as wide as the area box, so hard
edges differed by up to 28 grey levels; the area weights stay within one.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backends.base import Backend
from ..compose import Background
from ..io.images import (DecodeError, atomic_write, check_pixels, decode_photo, exif_orientation, open_image,
                         read_photo, read_photo_and_view, read_photo_bytes)
from ..model import ModelDir
from ..transforms import Letterbox, fit
from .config import RunConfig
from .kinds import KINDS, PAINTED, made_by, photo_output_path
from .plan import Failed, Job

# ---------------------------------------------------------------------------------------------
# Geometry and resampling on tensors (any device)


@functools.lru_cache(maxsize=128)
def _axis_weights(src: int, dst: int, device: str) -> torch.Tensor:
    """[dst, src] float32 resampling matrix for one axis, as cv2.resize computes that axis.

    Shrinking (dst <= src): INTER_AREA, each output pixel the mean of its footprint
    [i * src/dst, (i + 1) * src/dst), partial pixels weighted by their overlap.
    Growing: INTER_LINEAR, half-pixel centres, clamped at the borders.
    """
    scale = src / dst
    i = torch.arange(dst, dtype=torch.float64)
    j = torch.arange(src, dtype=torch.float64)
    if dst <= src:
        start = i * scale
        end = torch.clamp(start + scale, max=src)
        overlap = torch.minimum(end[:, None], j + 1) - torch.maximum(start[:, None], j)
        weights = overlap.clamp(min=0) / (end - start)[:, None]
    else:
        x = ((i + 0.5) * scale - 0.5).clamp(0, src - 1)
        x0 = x.floor()
        frac = x - x0
        x1 = (x0 + 1).clamp(max=src - 1)
        weights = torch.zeros(dst, src, dtype=torch.float64)
        rows = torch.arange(dst)
        weights.index_put_((rows, x0.long()), 1 - frac, accumulate=True)
        weights.index_put_((rows, x1.long()), frac, accumulate=True)
    return weights.to(device=device, dtype=torch.float32)


def resize_uint8(image: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """image [3, H, W] uint8 (any strides) -> [3, new_h, new_w] float32 holding whole numbers 0..255.

    cv2.resize(INTER_AREA when shrinking, INTER_LINEAR when growing) of the same pixels, rounded
    half to even as OpenCV rounds; within one grey level of it (float sums in another order,
    and OpenCV's fixed-point weights when growing).
    """
    _, h, w = image.shape
    device = str(image.device)
    x = image.float()
    if (new_h, new_w) != (h, w):
        rows, cols = _axis_weights(h, new_h, device), _axis_weights(w, new_w, device).T
        # (rows @ x) @ cols or rows @ (x @ cols): the same sum, whichever multiplies less first
        # (1920x1080 -> 256x144: rows first is 2.2 GFLOP, columns first 3.4)
        x = (rows @ x) @ cols if new_h * w * (h + new_w) <= h * new_w * (w + new_h) else rows @ (x @ cols)
    return x.round_().clamp_(0, 255)  # [3, new_h, new_w]


def letterbox_into(image: torch.Tensor, size: int, out: torch.Tensor,
                   src_size: tuple[int, int] | None = None) -> Letterbox:
    """image [3, H, W] uint8 -> out [3, S, S] float32 in [-1, 1], padded with 0.0; the geometry.

    The same geometry as hx_infer.transforms.letterbox (its `fit`), and values within 1/127.5 of
    it. src_size: the photo's real (width, height) when `image` is a reduced decode of it.
    """
    _, h, w = image.shape
    src_w, src_h = src_size if src_size is not None else (w, h)
    box = fit(src_w, src_h, size)
    out.zero_()
    block = out[:, box.top:box.top + box.new_h, box.left:box.left + box.new_w]
    # x / 127.5 - 1 maps 0..255 onto -1..1, as transforms.letterbox does
    torch.mul(resize_uint8(image, box.new_h, box.new_w), 1 / 127.5, out=block)
    block.sub_(1.0)
    return box


def letterbox_batch(images: Sequence[torch.Tensor], size: int,
                    src_sizes: Sequence[tuple[int, int] | None] | None = None
                    ) -> tuple[torch.Tensor, list[Letterbox]]:
    """Photos [3, H_i, W_i] uint8 of any sizes -> ([N, 3, S, S] float32 in [-1, 1], geometries)."""
    if not images:
        raise ValueError("letterbox_batch: no images")
    x = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=images[0].device)
    sizes = src_sizes if src_sizes is not None else [None] * len(images)
    boxes = [letterbox_into(image, size, slot, src) for image, slot, src in zip(images, x, sizes)]
    return x, boxes


def unletterbox(output: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """output [C, S, S] float in [0, 1] -> [C, src_h, src_w] float32 (bilinear, as cv2 INTER_LINEAR)."""
    block = output[:, box.top:box.top + box.new_h, box.left:box.left + box.new_w].float()
    if (box.new_w, box.new_h) == (box.src_w, box.src_h):
        return block
    return F.interpolate(block[None], size=(box.src_h, box.src_w), mode="bilinear",
                         align_corners=False, antialias=False)[0]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8: x * 255 clamped and rounded half to even; NaN -> 0 (as transforms.to_uint8)."""
    y = torch.nan_to_num(x.float() * 255, nan=0.0)
    return y.clamp_(0, 255).round_().to(torch.uint8)


def rgba(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """rgb [H, W, 3] uint8 + alpha [H, W] uint8 -> [H, W, 4] uint8, RGB 0 where alpha is 0 (compose.rgba_cutout)."""
    return torch.cat([rgb * (alpha != 0)[:, :, None], alpha[:, :, None]], dim=2)


def composite(rgb: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb [H, W, 3] uint8 over background ([H, W, 3] or [3] uint8) by alpha [H, W] uint8 -> [H, W, 3] uint8.

    bg + (rgb - bg) * a in float32, rounded half to even: the arithmetic of compose.composite.
    """
    a = (alpha.float() / 255)[:, :, None]
    bg = background.float()
    out = rgb.float() - bg
    out.mul_(a).add_(bg)
    return out.round_().clamp_(0, 255).to(torch.uint8)


# EXIF orientation -> the moves that show a stored [C, H, W] image upright (Pillow's table in
# hx_infer.io.images: 6 = ROTATE_270, a quarter turn clockwise).
def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """image [C, H, W] as stored in the file -> upright [C, H', W'] (a view or a flipped copy)."""
    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return image.transpose(1, 2).flip(2)
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return image.transpose(1, 2).flip(1)
    return image


# ---------------------------------------------------------------------------------------------
# JPEG decoding on the GPU (torchvision's nvJPEG binding, when torchvision is importable)


@functools.cache
def gpu_jpeg_decoder() -> Callable | None:
    """torchvision.io.decode_jpeg, or None when torchvision cannot be imported here."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # noqa: BLE001 - absent, or built against another torch: decode on the CPU
        return None
    return decode_jpeg


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before orientation
    height: int
    orientation: int  # EXIF 1..8


def gpu_decodable(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The header of a plain baseline/progressive RGB or grey JPEG that nvJPEG can take, else None.

    Reads the header only. Raises DecodeError for a photo over max_pixels or a broken header.
    Anything unusual (CMYK, MPO, bytes after the end marker, a file cut short) is left to the
    CPU decoder, which reports truncation instead of padding the photo with grey.
    """
    with open_image(data) as image:
        check_pixels(image, max_pixels)
        if image.format != "JPEG" or image.mode not in ("RGB", "L"):
            return None
        if not data.endswith(b"\xff\xd9"):  # end-of-image marker: a complete file
            return None
        return JpegHeader(image.width, image.height, exif_orientation(image))


def decode_jpegs(datas: Sequence[bytes], headers: Sequence[JpegHeader], device: torch.device
                 ) -> list[torch.Tensor]:
    """JPEG files -> upright [3, H, W] uint8 tensors on `device`, decoded in one batched call."""
    from torchvision.io import ImageReadMode

    decode = gpu_jpeg_decoder()
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    images = decode(encoded, mode=ImageReadMode.RGB, device=device)
    return [orient(image, header.orientation) for image, header in zip(images, headers)]


# ---------------------------------------------------------------------------------------------
# Batches through the device


@dataclass
class HostPhoto:
    """One photo as the decode threads hand it over: decoded pixels or a JPEG for the GPU."""

    size: tuple[int, int]  # the upright photo's (width, height): the size of every output
    rgb: np.ndarray | None = None  # [h, w, 3] uint8, upright; h, w < size for a reduced decode
    shown: np.ndarray | None = None  # [h, w, 3] uint8: what the model is shown, when not rgb (a matte-only
    #                                  run's reduced decode of a JPEG whose full pixels are also needed)
    jpeg: bytes | None = None  # or the file, for decode_jpegs
    header: JpegHeader | None = None


Outputs = dict[str, np.ndarray]  # kind -> [H, W] / [H, W, 4] / [H, W, 3] uint8


class Pending:
    """A submitted batch; result() waits for its device work and gives one entry per photo:
    its outputs, or the exception that stopped it."""

    def __init__(self, results: list[Outputs | Exception], done: "torch.cuda.Event | None"):
        self._results = results
        self._done = done

    def result(self) -> list[Outputs | Exception]:
        if self._done is not None:
            self._done.synchronize()  # sync point: the host arrays are written once this returns
        return self._results


class _Staging:
    """A pinned host buffer that grows on demand, and the event that says its last upload is done."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0, dtype=torch.uint8)
        self.uploaded: torch.cuda.Event | None = None

    def take(self, nbytes: int) -> torch.Tensor:
        if self.uploaded is not None:
            self.uploaded.synchronize()  # the previous batch's copy out of this buffer has finished
        if self.buffer.numel() < nbytes:
            self.buffer = torch.empty(max(nbytes, 2 * self.buffer.numel()), dtype=torch.uint8, pin_memory=True)
        return self.buffer[:nbytes]


class TorchPixels:
    """kinds.Pixels on device tensors, with the batches' background."""

    def __init__(self, batches: "DeviceBatches"):
        self._batches = batches

    def rgba(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return rgba(rgb, alpha)

    def composite(self, rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return composite(rgb, alpha, self._batches.background_pixels(*alpha.shape))


class DeviceBatches:
    """Letterbox -> backend -> un-letterbox -> matte / cutout / composite, on one device.

    kinds: the outputs to make, from "alpha", "rgba", "composite" (an rgb-target model makes
    only "composite": the painted photo). background: for "composite".
    On CUDA: a copy stream (uploads through two pinned staging buffers used in turn, GPU JPEG
    decoding, letterboxing) and a compute stream (inference, post-processing, downloads into
    pinned memory), ordered by events; tensors made on one and used on the other are marked
    with record_stream so the caching allocator does not hand their memory out too early.
    Elsewhere the same work runs in order on the current stream.
    """

    def __init__(self, backend, size: int, target: str, kinds: Sequence[str], background: Background,
                 device: str | torch.device):
        self.backend = backend
        self.size = size
        self.target = target
        self.kinds = tuple(kinds)
        self.background = background
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)
            self._staging = [_Staging(), _Staging()]
            self._turn = 0
        self._background_cache: tuple[tuple[int, int] | None, torch.Tensor] | None = None  # (size, pixels)
        self._pixels = TorchPixels(self)
        self._needs_photo = any(KINDS[kind].needs_photo for kind in self.kinds)

    # -- stage 1: host -> device, letterbox ---------------------------------------------------

    def _upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """[h, w, 3] uint8 arrays -> [3, h, w] uint8 views of one device tensor (one copy)."""
        if not self.cuda:
            # decoded arrays are read-only; torch wants writable memory even for reading
            return [torch.from_numpy(np.require(a, requirements=("C", "W"))).permute(2, 0, 1) for a in arrays]
        staging = self._staging[self._turn]
        self._turn ^= 1
        host = staging.take(sum(a.nbytes for a in arrays))
        flat = host.numpy()
        offset = 0
        for a in arrays:  # pack every photo into the pinned buffer: one DMA for the batch
            flat[offset:offset + a.nbytes].reshape(a.shape)[...] = a
            offset += a.nbytes
        device = host.to(self.device, non_blocking=True)
        staging.uploaded = torch.cuda.Event()
        staging.uploaded.record(self.copy_stream)
        views, offset = [], 0
        for a in arrays:
            views.append(device[offset:offset + a.nbytes].view(a.shape).permute(2, 0, 1))
            offset += a.nbytes
        return views

    def _prepare(self, photos: Sequence[HostPhoto]) -> tuple[list[torch.Tensor | Exception], torch.Tensor | None,
                                                              list[Letterbox]]:
        """-> per photo its upright [3, h, w] uint8 device pixels (or why it could not be decoded),
        the letterboxed batch [M, 3, S, S] of the M photos that decoded, and their geometries."""
        images: list[torch.Tensor | Exception | None] = [None] * len(photos)
        host: dict[int, np.ndarray | Exception] = {i: p.rgb for i, p in enumerate(photos) if p.jpeg is None}
        on_gpu = [i for i, p in enumerate(photos) if p.jpeg is not None]
        if on_gpu:
            try:
                decoded = decode_jpegs([photos[i].jpeg for i in on_gpu], [photos[i].header for i in on_gpu],
                                       self.device)
                images_on_gpu = dict(zip(on_gpu, decoded))
            except Exception:  # noqa: BLE001 - one bad file fails the whole call: these go to the CPU
                images_on_gpu = {}
                host.update({i: _cpu_decode(photos[i].jpeg) for i in on_gpu})
            for i, image in images_on_gpu.items():
                images[i] = image
        upload = [i for i, pixels in host.items() if isinstance(pixels, np.ndarray)]
        for i, pixels in host.items():
            if isinstance(pixels, Exception):
                images[i] = pixels
        shown: dict[int, torch.Tensor] = {}  # what the model sees, where it is not the photo itself
        if upload:
            also = [i for i in upload if photos[i].shown is not None]
            uploaded = self._upload([host[i] for i in upload] + [photos[i].shown for i in also])
            for i, view in zip(upload, uploaded):
                images[i] = view
            shown.update(zip(also, uploaded[len(upload):]))
        good = [i for i, image in enumerate(images) if isinstance(image, torch.Tensor)]
        if not good:
            return images, None, []
        x, boxes = letterbox_batch([shown.get(i, images[i]) for i in good], self.size, [photos[i].size for i in good])
        return images, x, boxes

    # -- stage 2: infer, post-process, device -> host -----------------------------------------

    def background_pixels(self, h: int, w: int) -> torch.Tensor:
        """[3] (a colour, broadcast) or [h, w, 3] uint8 on the device; the last one is kept."""
        cached = self._background_cache
        if cached is None or cached[0] not in (None, (h, w)):
            if self.background.color is not None:
                cached = (None, torch.tensor(self.background.color, dtype=torch.uint8).to(self.device))
            else:
                cached = ((h, w), torch.from_numpy(np.array(self.background.render(h, w))).to(self.device))
            self._background_cache = cached
        return cached[1]

    def _post(self, out: torch.Tensor, box: Letterbox, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """out [C, S, S] float32 in [0, 1] and the photo [3, H', W'] uint8 -> kind -> uint8 tensor."""
        restored = to_uint8(unletterbox(out, box))  # [C, H, W]
        if self.target == "rgb":
            return {PAINTED: restored.permute(1, 2, 0)}
        alpha = restored[0]
        # [H, W, 3]: full-size whenever a kind that needs the photo is asked for
        pixels = image.permute(1, 2, 0) if self._needs_photo else None
        return {kind: KINDS[kind].make(self._pixels, pixels, alpha) for kind in self.kinds}

    def _download(self, made: list[dict[str, torch.Tensor]]) -> list[Outputs]:
        """Device uint8 tensors -> numpy arrays in one pinned host block (valid after the event)."""
        if not self.cuda:
            return [{k: t.contiguous().numpy() for k, t in m.items()} for m in made]
        total = sum(t.numel() for m in made for t in m.values())
        # Fresh pinned memory per batch from torch's caching host allocator: the arrays live on in
        # the write threads, and the block returns to the cache when the last of them is dropped.
        host = torch.empty(total, dtype=torch.uint8, pin_memory=True)
        flat = host.numpy()
        result, offset = [], 0
        for m in made:
            arrays = {}
            for kind, t in m.items():
                n = t.numel()
                host[offset:offset + n].view(t.shape).copy_(t, non_blocking=True)
                arrays[kind] = flat[offset:offset + n].reshape(tuple(t.shape))
                offset += n
            result.append(arrays)
        return result

    def submit(self, photos: Sequence[HostPhoto]) -> Pending:
        """Queue a batch. On CUDA this returns before the device is done: call result() later."""
        if not self.cuda:
            images, x, boxes = self._prepare(photos)
            outputs = self._infer_and_post(images, x, boxes)
            return Pending(outputs, None)
        with torch.cuda.device(self.device):
            with torch.cuda.stream(self.copy_stream):
                images, x, boxes = self._prepare(photos)
                prepared = torch.cuda.Event()
                prepared.record(self.copy_stream)
            self.compute_stream.wait_event(prepared)
            for t in [x, *images]:
                if isinstance(t, torch.Tensor):
                    t.record_stream(self.compute_stream)  # made on the copy stream, read on this one
            with torch.cuda.stream(self.compute_stream):
                outputs = self._infer_and_post(images, x, boxes)
                done = torch.cuda.Event()
                done.record(self.compute_stream)
        return Pending(outputs, done)

    def _infer_and_post(self, images, x, boxes) -> list[Outputs | Exception]:
        results: list[Outputs | Exception] = list(images)
        if x is None:
            return results
        out = self.backend.infer(x)  # [N, C, S, S] float32 in [0, 1], on the device
        good = [i for i, image in enumerate(images) if isinstance(image, torch.Tensor)]
        made = [self._post(o, box, images[i]) for i, o, box in zip(good, out, boxes)]
        for i, arrays in zip(good, self._download(made)):
            results[i] = arrays
        return results


def _cpu_decode(data: bytes) -> np.ndarray | Exception:
    """A JPEG the batched GPU call refused, decoded on the CPU (which names what is wrong with it)."""
    try:
        return read_photo(Path("<jpeg>"), max_pixels=2**63, data=data)  # size already checked
    except DecodeError as e:
        return e


# ---------------------------------------------------------------------------------------------
# The Stages of a local run on the device (hx_infer.run.photos.Stages)


class DeviceStages:
    """The local engine's photo stages when DeviceBatches do the pixel work.

    decode(job) runs in the decode threads (file read, header, CPU decode when needed);
    submit(batch) on the loop's thread returns the previous batch's results (one batch stays on
    the device, so its inference overlaps the next batch's upload); finish(job, outputs) in
    the write threads encodes and writes atomically.
    """

    def __init__(self, config: RunConfig, backend: Backend, model: ModelDir, gpu_decode: bool | None = None):
        self.config = config
        self.size = model.size
        self.reduced_decode = config.reduced_decode(model.target)
        self.model_target = model.target
        self.batches = DeviceBatches(backend, model.size, model.target, made_by(model.target, config.outputs),
                                     config.background, str(backend.device))
        if gpu_decode is None:
            gpu_decode = self.batches.cuda and gpu_jpeg_decoder() is not None
        self.gpu_decode = gpu_decode
        self._pending: tuple[list[Job], Pending] | None = None

    def decode(self, job: Job) -> tuple[Job, HostPhoto] | Failed:
        """The photo's bytes, decoded on the CPU unless nvJPEG takes them; a CPU decoder's warning
        goes on the job, which submit and finish hand on to the outcome (nvJPEG gives none)."""
        max_pixels = self.config.options.max_pixels
        try:
            data = read_photo_bytes(job.src, max_pixels)  # header first, bounded; never a FIFO
            if self.reduced_decode:  # matte only: as the CPU path, a reduced decode and the header's size
                photo = decode_photo(job.src, max_pixels, data=data, reduce_to=self.size)
                return replace(job, warning=photo.warning), HostPhoto(photo.size, rgb=photo.rgb)
            header = gpu_decodable(data, max_pixels) if self.gpu_decode else None
            if header is not None:
                swap = header.orientation in (5, 6, 7, 8)
                size = (header.height, header.width) if swap else (header.width, header.height)
                return job, HostPhoto(size, jpeg=data, header=header)
            if self.model_target == "alpha":  # shown what a matte-only run shows: the same matte
                rgb, view, size, warning = read_photo_and_view(job.src, max_pixels, self.size, data=data)
                return replace(job, warning=warning), HostPhoto(size, rgb=rgb, shown=None if view is rgb else view)
            photo = decode_photo(job.src, max_pixels, data=data)
            return replace(job, warning=photo.warning), HostPhoto(photo.size, rgb=photo.rgb)
        except Exception as e:  # noqa: BLE001 - see Failed.because
            return Failed.because(job.src, e)

    def submit(self, batch: list[tuple[Job, HostPhoto]]) -> list[tuple[Job, Outputs | Exception]]:
        """batch: (job, HostPhoto) pairs -> the previous batch's (job, Outputs | Exception) pairs.

        This batch is queued before the previous one is waited for, so its upload and
        letterboxing (copy stream) overlap the previous batch's inference (compute stream)."""
        queued = ([job for job, _ in batch], self.batches.submit([photo for _, photo in batch]))
        done = self.flush()
        self._pending = queued
        return done

    def flush(self) -> list[tuple[Job, Outputs | Exception]]:
        if self._pending is None:
            return []
        jobs, pending = self._pending
        self._pending = None
        return list(zip(jobs, pending.result()))

    def finish(self, job: Job, outputs: Outputs | Exception) -> Failed | None:
        if isinstance(outputs, Exception):
            return Failed.because(job.src, outputs)
        try:
            for kind, array in outputs.items():
                data = KINDS[kind].encode(array, self.config.options.png_compression)
                atomic_write(photo_output_path(self.config.output_dir, kind, job.rel), data)
            return None
        except Exception as e:  # noqa: BLE001 - see Failed.because
            return Failed.because(job.src, e)
