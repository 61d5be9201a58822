"""hx_infer.io.images.atomic_write: the one atomic write of hx, and its one fsync policy."""
from __future__ import annotations

import os

import pytest

from hx_infer.io.images import WriteError, atomic_write


@pytest.fixture
def fsyncs(monkeypatch):
    """The (kind, path) of every fsync: a file or a folder."""
    seen: list[tuple[str, str]] = []
    real = os.fsync

    def spy(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(("folder" if os.path.isdir(target) else "file", target))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_a_writer_function_streams_into_the_file(tmp_path, fsyncs):
    target = tmp_path / "a" / "b.bin"
    atomic_write(target, lambda f: (f.write(b"one "), f.write(b"two")))
    assert target.read_bytes() == b"one two"
    assert fsyncs == []  # not durable by default: the file is made again by running again
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def test_durable_fsyncs_the_file_then_its_folder(tmp_path, fsyncs):
    target = tmp_path / "ckpt.pt"
    atomic_write(target, b"weights", durable=True)
    assert target.read_bytes() == b"weights"
    assert [kind for kind, _ in fsyncs] == ["file", "folder"]
    assert fsyncs[1][1] == str(tmp_path)


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken, durable=True)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize("below", [(), ("deeper",)], ids=["parent", "grandparent"])
def test_a_file_where_a_folder_goes_is_named(tmp_path, below):
    """mkdir reports a file in the output's folder's place as EEXIST ("File exists", which reads
    as if the output itself were there) and one further up as ENOTDIR; either way the reason
    names the file that stands where a folder goes."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("the user's")
    target = tmp_path.joinpath("out", "sub", *below, "a.png")
    with pytest.raises(WriteError) as caught:
        atomic_write(target, b"png")
    assert str(caught.value) == f"cannot write {target}: {tmp_path / 'out' / 'sub'} is not a folder"
    assert caught.value.filename == str(target)
    assert (tmp_path / "out" / "sub").read_text() == "the user's"


def test_training_writes_are_durable(tmp_path, fsyncs):
    from hx_train import train

    train._write_json(tmp_path / "run.json", {"epoch": 1})
    assert [kind for kind, _ in fsyncs] == ["file", "folder"]
