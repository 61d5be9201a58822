"""hx_infer from several threads, as a web app's thread pool calls it: one backend per Extractor,
each thread's result the bytes one thread alone gets, and close() with a call under way."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import hx_infer
from hx_infer import Extractor
from hx_infer.backends import base

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


def in_threads(n: int, work) -> list:
    """work(i) on n threads started at one moment -> their results (an exception is re-raised)."""
    start, results = threading.Barrier(n), [None] * n

    def one(i):
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - raised again on the test's thread
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_first_uses_at_once_open_one_backend(tiny_model_dir, monkeypatch):
    # each thread opened its own backend (8 of 8 in a stress run) and all but the last were dropped
    opened, open_backend = [], base.open_backend

    def slow_open(model, spec):
        opened.append(spec)
        time.sleep(0.2)  # an ONNX session or a TensorRT engine takes this long or longer to open
        return open_backend(model, spec)

    monkeypatch.setattr(base, "open_backend", slow_open)
    extractor = Extractor(tiny_model_dir, backend="ort", device="cpu")
    backends = in_threads(4, lambda i: extractor.backend)
    assert len(opened) == 1 and all(b is backends[0] for b in backends)


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_remove_from_threads_gives_each_photo_its_one_thread_bytes(tiny_model_dir, make_disc_photo, backend):
    model = {"model": tiny_model_dir, "backend": backend, "device": "cpu"}
    sizes = [(64, 64), (90, 300), (300, 80), (77, 150)]
    photos = [make_disc_photo(*sizes[i % 4], seed=i)[0] for i in range(8)]
    outputs = ["alpha", "rgba"]
    alone = [hx_infer.remove(p, output=outputs[i % 2], **model).tobytes() for i, p in enumerate(photos)]

    def calls(t):  # each thread walks the photos from its own start
        return [(i, hx_infer.remove(photos[i], output=outputs[i % 2], **model).tobytes())
                for i in ((t + k) % len(photos) for k in range(6))]

    for per_thread in in_threads(4, calls):
        assert all(got == alone[i] for i, got in per_thread)


class SlowGraph:
    """A CUDA graph's contract on the CPU: replay() runs `forward` from static_in into static_out,
    slowly, so a second thread's copy into static_in comes in the middle of the first's replay."""

    def __init__(self, forward, static_in, static_out):
        self.forward, self.static_in, self.static_out = forward, static_in, static_out

    def replay(self):
        time.sleep(0.2)
        self.static_out.copy_(self.forward(self.static_in))


def test_threads_sharing_the_torch_cuda_graph_each_get_their_own_batch(tiny_model_dir, make_disc_photo):
    # torch on CUDA replays one captured graph per batch size from static buffers: a second thread's
    # batch, copied into static_in while the first replayed, came back as the first's matte
    import torch

    from hx_infer.backends.torch import TorchBackend
    from hx_infer.model import load_model_dir
    from hx_infer.transforms import letterbox

    model = load_model_dir(tiny_model_dir)
    backend = TorchBackend(model, base.BackendSpec("torch", "cpu", batch_size=1))
    s = model.size
    batches = [letterbox(make_disc_photo(60 + 30 * i, 90, seed=i)[0], s)[0][None] for i in range(2)]
    backend.device, backend._use_graphs = base.Device("cuda"), True  # _run's CUDA-graph path, on the CPU
    static_in = torch.zeros((1, 3, s, s)).contiguous(memory_format=torch.channels_last)
    static_out = torch.zeros((1, model.out_channels, s, s))
    with torch.inference_mode():
        backend._graphs[1] = (SlowGraph(backend._forward, static_in, static_out), static_in, static_out)
    alone = [backend.infer(b) for b in batches]
    got = in_threads(2, lambda i: backend.infer(batches[i]))
    assert [g.tobytes() for g in got] == [a.tobytes() for a in alone]


@pytest.mark.parametrize("name", ["ort", "torch"])
def test_close_waits_for_a_call_under_way_then_refuses_the_next(tiny_model_dir, make_disc_photo, monkeypatch, name):
    # close() freed the session (ort) or the net (torch) under a running call: a bare
    # AttributeError / TypeError, and with TensorRT an engine freed while a context runs on it
    extractor = Extractor(tiny_model_dir, backend=name, device="cpu")
    rgb = make_disc_photo(64, 80)[0]
    alone = extractor.alpha(rgb)
    backend = extractor.backend
    inside, go_on = threading.Event(), threading.Event()
    run = type(backend)._run

    def held_run(self, chunk):
        inside.set()
        go_on.wait(10)
        return run(self, chunk)

    monkeypatch.setattr(type(backend), "_run", held_run)
    result = {}
    call = threading.Thread(target=lambda: result.update(matte=extractor.alpha(rgb)))
    call.start()
    assert inside.wait(10)
    closing = threading.Thread(target=extractor.close)
    closing.start()
    closing.join(0.3)  # before: closed at once, under the call
    go_on.set()
    call.join(10)
    closing.join(10)
    assert result["matte"].tobytes() == alone.tobytes()
    with pytest.raises(base.BackendError, match="used after close"):
        backend.infer(np.zeros((1, 3, extractor.model.size, extractor.model.size), np.float32))
