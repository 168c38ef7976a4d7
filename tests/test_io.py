"""Atomic writes and the pad-id fallback."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from glass_llm.io import atomic_dir, atomic_file, atomic_write
from glass_llm.tokens import pad_id


def test_atomic_write_text_and_bytes(tmp_path):
    path = atomic_write(tmp_path / "a" / "b.txt", "héllo\n")
    assert path.read_bytes() == "héllo\n".encode("utf-8")
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]


def test_failed_writes_leave_the_old_file_and_no_temporaries(tmp_path):
    path = atomic_write(tmp_path / "x.bin", b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash mid-save")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_atomic_dir_replaces_the_folder(tmp_path):
    target = tmp_path / "model"
    (target / "old").mkdir(parents=True)
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]


@pytest.mark.parametrize("pad, eos, want", [(3, 7, 3), (None, 7, 7), (None, [9, 2], 9), (None, None, 0), (0, 5, 0)])
def test_pad_id_fallback(pad, eos, want):
    assert pad_id(SimpleNamespace(pad_token_id=pad, eos_token_id=eos)) == want
