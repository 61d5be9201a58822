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
