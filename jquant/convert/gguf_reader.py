"""A small, strict GGUF reader (memory-mapped), numpy + ml_dtypes only.

Why not gguf-py's `GGUFReader`: it is an optional dependency, and on a damaged file it fails with
numpy errors (``ValueError: cannot reshape``, ``IndexError``) instead of naming the problem. This
reader checks every count, length and byte range against the file before using it, so a truncated,
tampered or random file raises a `CorruptFileError` naming the file, the tensor or key, and the
problem. gguf-py is the oracle it is tested against.

File layout (ggml docs/gguf.md; gguf-py ``gguf_reader.py``), all little-endian::

    magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
    kv_count x  (key: string, value_type u32, value)
    tensor_count x  (name: string, n_dims u32, ne u64[n_dims], ggml_type u32, offset u64)
    padding to general.alignment (default 32) | data section (each tensor at data + offset)

    string = u64 length + UTF-8 bytes;  array = elem_type u32 + count u64 + elements

``ne`` is ggml order, innermost (contiguous) first; the numpy / HF shape is ``reversed(ne)``.
Version 1 (u32 counts, 2023) and big-endian files are refused as unsupported.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jquant.convert._io import regular_file
from jquant.core.errors import CorruptFileError, UnsupportedFormatError
from jquant.formats.gguf import RawTensor
from jquant.formats.gguf.types import GGML_TYPES, GGMLType

__all__ = ["GGUFFile", "TensorInfo", "GGUF_MAGIC", "DEFAULT_ALIGNMENT"]

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4  # ggml.h

# Limits on what a header may make the reader build in memory (documented in the README). Numeric
# arrays cost at most 8 bytes of memory per byte of file; strings and nested arrays cost a Python
# object each (~60-120 bytes) for 8-12 bytes of file, so their number is capped, and so is nesting.
MAX_TENSORS = 1 << 17  # tensor infos (a 671B MoE GGUF has ~1.1k)
MAX_KV = 1 << 16  # metadata keys (real files: ~20-60)
MAX_METADATA_STRINGS = 1 << 22  # strings in metadata arrays, all keys together (256k vocab + 500k merges: ~0.8M)
MAX_NESTED_ARRAYS = 1 << 16  # arrays inside arrays, all keys together (real files: none)
MAX_ARRAY_DEPTH = 8  # ARRAY[ARRAY[...]] nesting

# GGUF metadata value types (gguf-py constants.py GGUFValueType): id -> (name, numpy dtype or None).
_SCALARS: dict[int, tuple[str, np.dtype, str]] = {  # id -> (name, numpy dtype, struct format)
    0: ("UINT8", np.dtype("u1"), "<B"),
    1: ("INT8", np.dtype("i1"), "<b"),
    2: ("UINT16", np.dtype("<u2"), "<H"),
    3: ("INT16", np.dtype("<i2"), "<h"),
    4: ("UINT32", np.dtype("<u4"), "<I"),
    5: ("INT32", np.dtype("<i4"), "<i"),
    6: ("FLOAT32", np.dtype("<f4"), "<f"),
    7: ("BOOL", np.dtype("u1"), "<B"),
    10: ("UINT64", np.dtype("<u8"), "<Q"),
    11: ("INT64", np.dtype("<i8"), "<q"),
    12: ("FLOAT64", np.dtype("<f8"), "<d"),
}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the file.

    Attributes:
        name: GGUF tensor name, e.g. ``"blk.0.attn_q.weight"``.
        ne: ggml dims, innermost first.
        type: the GGML type.
        offset: byte offset of the data from the start of the file (absolute).
        nbytes: byte size of the data.
    """

    name: str
    ne: tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy / HF shape (reversed ne)."""
        return tuple(reversed(self.ne))


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file; every failure names the file and what was read."""

    def __init__(self, buf: np.ndarray, path: Path):
        self.buf, self.mv, self.pos, self.path, self.size = buf, memoryview(buf), 0, path, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise CorruptFileError(
                f"{what}: needs {n} bytes at offset {self.pos} but the file has {self.size} bytes (truncated?)",
                file=self.path,
            )

    def take(self, n: int, what: str) -> np.ndarray:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.mv, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        raw = self.mv[self.pos : self.pos + n]
        self.pos += n
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"{what} is not valid UTF-8 ({e})", file=self.path) from None


class GGUFFile(Mapping):
    """Read-only mapping ``tensor name -> raw data`` (memory-mapped views, created on access).

    Dense tensors (F32, F16, BF16, I8..I64, F64) come back as arrays of their dtype in numpy shape;
    block-quantized ones as uint8 ``[rows, row_bytes]`` (rows = product of the outer dims).

    Attributes:
        path: the file.
        version: GGUF version (2 or 3).
        metadata: key -> value (python scalars / str / list; numeric arrays as numpy arrays).
        value_types: key -> GGUF value type name (``"UINT32"``, ``"ARRAY[STRING]"``...).
        alignment: ``general.alignment`` or 32.
        data_offset: absolute offset of the data section.
        tensors: name -> `TensorInfo`, in file order.

    Raises:
        CorruptFileError: bad magic, truncated header, impossible counts or lengths, misaligned or
            out-of-range tensor data, duplicate names.
        UnsupportedFormatError: GGUF v1, big-endian files, unknown GGML type ids.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = regular_file(self.path, CorruptFileError)
        if size < 24:
            raise CorruptFileError(f"file is {size} bytes, too short for a GGUF header (24 bytes)", file=self.path)
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(self._mm, self.path)
        magic = cur.take(4, "magic").tobytes()
        if magic != GGUF_MAGIC:
            raise CorruptFileError(f"bad magic {magic!r}, expected {GGUF_MAGIC!r}: not a GGUF file", file=self.path)
        version = cur.u32("version")
        if version in (1,):
            raise UnsupportedFormatError("GGUF version 1 (2023, u32 counts) is not supported", file=self.path)
        if version not in (2, 3):
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            if swapped in (2, 3):
                raise UnsupportedFormatError(f"big-endian GGUF v{swapped} is not supported", file=self.path)
            raise CorruptFileError(f"unknown GGUF version {version} (expected 2 or 3)", file=self.path)
        self.version = version
        n_tensors = cur.u64("tensor_count")
        n_kv = cur.u64("kv_count")
        # Each KV needs >= 12 bytes and each tensor info >= 28: refuse impossible counts before looping.
        if n_kv * 12 + n_tensors * 28 > size - cur.pos:
            raise CorruptFileError(
                f"header claims {n_tensors} tensors and {n_kv} metadata keys, more than a {size}-byte file can hold (truncated or corrupt)",
                file=self.path,
            )
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise CorruptFileError(
                f"header claims {n_tensors} tensors and {n_kv} metadata keys; jquant's limits are "
                f"{MAX_TENSORS} tensors and {MAX_KV} keys",
                file=self.path,
            )
        self._strings = self._nested = 0
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, str] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if key in self.metadata:
                raise CorruptFileError(f"duplicate metadata key {key!r}", file=self.path)
            vtype = cur.u32(f"value type of {key!r}")
            self.metadata[key], self.value_types[key] = self._value(cur, vtype, key)
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise CorruptFileError(f"general.alignment {align!r} is not a positive power of two", file=self.path)
        self.alignment = align
        infos = []
        for i in range(n_tensors):
            name = cur.string(f"tensor name #{i}")
            n_dims = cur.u32(f"n_dims of tensor {name!r}")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise CorruptFileError(f"n_dims {n_dims} outside 1..{GGML_MAX_DIMS}", file=self.path, tensor=name)
            ne = tuple(int(d) for d in cur.take(8 * n_dims, f"dims of tensor {name!r}").view("<u8"))
            tid = cur.u32(f"type of tensor {name!r}")
            off = cur.u64(f"offset of tensor {name!r}")
            infos.append((name, ne, tid, off))
        self.data_offset = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, ne, tid, off in infos:
            self.tensors[name] = self._check_tensor(name, ne, tid, off, size)
        # Tensors may not share bytes: a shape x type that claims more bytes than the tensor's slot
        # shows up here (llama.cpp gguf.cpp likewise requires each offset to follow the previous one).
        by_start = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_start, by_start[1:]):
            if a.offset + a.nbytes > b.offset:
                raise CorruptFileError(
                    f"data [{a.offset}, {a.offset + a.nbytes}) ({list(a.shape)} x {a.type.name}) overlaps "
                    f"tensor {b.name!r} starting at {b.offset}: shape and type disagree with the layout",
                    file=self.path,
                    tensor=a.name,
                )

    # ---- parsing helpers --------------------------------------------------------------------
    def _count(self, strings: int, nested: int, key: str) -> None:
        self._strings += strings
        self._nested += nested
        if self._strings > MAX_METADATA_STRINGS or self._nested > MAX_NESTED_ARRAYS:
            what, limit = (
                ("strings", MAX_METADATA_STRINGS)
                if self._strings > MAX_METADATA_STRINGS
                else ("nested arrays", MAX_NESTED_ARRAYS)
            )
            raise CorruptFileError(
                f"metadata {key!r}: more than {limit} {what} in the metadata (jquant's limit)", file=self.path
            )

    def _value(self, cur: _Cursor, vtype: int, key: str, depth: int = 0) -> tuple[Any, str]:
        if vtype in _SCALARS:
            name, dt, fmt = _SCALARS[vtype]
            v = cur.unpack(fmt, dt.itemsize, f"value of {key!r}")
            return (bool(v) if vtype == 7 else v), name
        if vtype == _STRING:
            return cur.string(f"value of {key!r}"), "STRING"
        if vtype == _ARRAY:
            etype = cur.u32(f"array element type of {key!r}")
            count = cur.u64(f"array length of {key!r}")
            if etype in _SCALARS:
                name, dt, _ = _SCALARS[etype]
                arr = cur.take(count * dt.itemsize, f"array {key!r} of {count} {name}").view(dt)
                arr = arr.astype(bool) if etype == 7 else np.array(arr)
                return arr, f"ARRAY[{name}]"
            if etype == _STRING:
                cur.need(count * 8, f"array {key!r} of {count} strings")
                self._count(count, 0, key)
                return [cur.string(f"element {j} of {key!r}") for j in range(count)], "ARRAY[STRING]"
            if etype == _ARRAY:
                if depth + 1 >= MAX_ARRAY_DEPTH:
                    raise CorruptFileError(
                        f"metadata {key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH} (jquant's limit)",
                        file=self.path,
                    )
                cur.need(count * 12, f"array {key!r} of {count} arrays")
                self._count(0, count, key)
                vals = [self._value(cur, _ARRAY, f"{key}[{j}]", depth + 1)[0] for j in range(count)]
                return vals, "ARRAY[ARRAY]"
            raise CorruptFileError(f"metadata {key!r}: unknown array element type {etype}", file=self.path)
        raise CorruptFileError(f"metadata {key!r}: unknown value type {vtype}", file=self.path)

    def _check_tensor(self, name: str, ne: tuple[int, ...], tid: int, off: int, size: int) -> TensorInfo:
        if name in self.tensors:
            raise CorruptFileError("duplicate tensor name", file=self.path, tensor=name)
        if tid not in GGML_TYPES:
            known = ", ".join(f"{t.name}={i}" for i, t in sorted(GGML_TYPES.items()))
            raise UnsupportedFormatError(f"unknown GGML type id {tid} (known: {known})", file=self.path, tensor=name)
        t = GGML_TYPES[tid]
        if any(d <= 0 for d in ne):
            raise CorruptFileError(f"bad dims {list(ne)}", file=self.path, tensor=name)
        if ne[0] % t.block:
            raise CorruptFileError(
                f"innermost dim {ne[0]} is not a multiple of the {t.name} block size {t.block}",
                file=self.path,
                tensor=name,
            )
        nbytes = t.row_bytes(ne[0]) * int(np.prod(ne[1:], dtype=object))
        if off % self.alignment:
            raise CorruptFileError(
                f"data offset {off} is not a multiple of the alignment {self.alignment}", file=self.path, tensor=name
            )
        start = self.data_offset + off
        if start + nbytes > size:
            raise CorruptFileError(
                f"data [{start}, {start + nbytes}) ({list(reversed(ne))} x {t.name} = {nbytes} bytes) "
                f"ends past the end of the {size}-byte file (truncated?)",
                file=self.path,
                tensor=name,
            )
        return TensorInfo(name, ne, t, start, nbytes)

    # ---- access ------------------------------------------------------------------------------
    def release_pages(self) -> None:
        """Unmaps the file's pages from this process (``madvise(MADV_DONTNEED)``); the mapping stays valid.

        Converting reads every tensor, so every page of the file becomes resident in the process and
        counts in its RSS for as long as any view into the map lives (the dense tensors a `Checkpoint`
        keeps zero-copy, e.g. the norms, keep the whole map). For a read-only file mapping the kernel
        then drops the process's page-table entries only: a later read of a view faults the page back
        in from the page cache, with the same bytes (madvise(2)). A no-op where ``madvise`` is missing.
        """
        mm = getattr(self._mm, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, uint8 [rows, row_bytes] (rows = product of the outer dims)."""
        info = self.tensors[name]
        rows = int(np.prod(info.ne[1:], dtype=np.int64)) if len(info.ne) > 1 else 1
        return self._mm[info.offset : info.offset + info.nbytes].reshape(rows, -1)

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if info.type.dense is not None:
            return self._mm[info.offset : info.offset + info.nbytes].view(info.type.dense).reshape(info.shape)
        return self.raw(name)

    def tensor(self, name: str) -> RawTensor:
        """The tensor as a `RawTensor` record (what `jquant.formats.gguf.GGUF` converts)."""
        info = self.tensors[name]
        return RawTensor(name, info.type, info.shape, self[name], self.path)

    def ggml_type(self, name: str) -> GGMLType:
        return self.tensors[name].type

    def shape(self, name: str) -> tuple[int, ...]:
        """Logical numpy / HF shape (reversed ggml ne)."""
        return self.tensors[name].shape

    def dtype(self, name: str) -> np.dtype:
        t = self.tensors[name].type
        return t.dense if t.dense is not None else np.dtype(np.uint8)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        return f"GGUFFile({self.path.name}, v{self.version}, {len(self.tensors)} tensors, {len(self.metadata)} keys)"
