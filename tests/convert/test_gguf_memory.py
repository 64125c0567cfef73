"""GGUF conversion and process memory (issue 23): the file's pages do not stay resident in the process,
and large converted arrays live in their own page-aligned maps; the values are unchanged."""

from __future__ import annotations

import importlib
import mmap

import numpy as np

import jquant
from jquant.core import QArray
from tests.fixtures.gguf_files import tiny_gguf

gguf_convert = importlib.import_module("jquant.convert.gguf")  # `jquant.convert` is also the function


def _resident_kb(path) -> int:
    """Rss (kB) of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[5] == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def _owner(a):
    """The memory map an array's data lives in (np.memmap: the file's; mmap.mmap: anonymous), or None."""
    while a is not None and not isinstance(a, np.memmap | mmap.mmap):
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return a


def _arrays(ckpt):
    for name, w in ckpt.weights.items():
        for field, a in w.arrays().items() if isinstance(w, QArray) else [("", w)]:
            yield f"{name}.{field}", a


def test_file_pages_are_released_and_views_stay_valid():
    path, _ = tiny_gguf("llama")
    ckpt = jquant.convert(path)
    kept = [(n, a) for n, a in _arrays(ckpt) if isinstance(_owner(a), np.memmap)]
    assert kept  # the F32 norms stay zero-copy views of the file's map ...
    assert _resident_kb(path.resolve()) == 0  # ... whose pages were handed back
    fresh = {n: np.array(a) for n, a in _arrays(jquant.convert(path))}
    for n, a in kept:  # a view faults its pages back in, same bytes
        np.testing.assert_array_equal(np.asarray(a), fresh[n])


def test_large_arrays_get_their_own_aligned_maps(monkeypatch):
    path, _ = tiny_gguf("llama")
    ref = {n: np.array(a) for n, a in _arrays(jquant.convert(path))}
    monkeypatch.setattr(gguf_convert, "_OWN_MAP_MIN_BYTES", 1)  # every array: the tiny file has no 1 MiB one
    ckpt = jquant.convert(path)
    moved = 0
    for n, a in _arrays(ckpt):
        np.testing.assert_array_equal(a, ref[n], err_msg=n)
        assert a.dtype == ref[n].dtype and a.shape == ref[n].shape
        base = _owner(a)
        assert base is not None, n  # its own anonymous map, or a view of the file's
        if isinstance(base, mmap.mmap):
            moved += 1
            assert a.ctypes.data % 4096 == 0, n
    assert moved > 10
