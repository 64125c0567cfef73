"""A small, strict safetensors reader (memory-mapped) and an atomic writer, numpy + ml_dtypes only.

Why not `safetensors.numpy`: it cannot represent fp8 / e8m0 (numpy has no such dtypes; see
notes/environment.md section 5), and it trusts the header. This reader validates every header
entry against the file before handing out a view, so a truncated or tampered file raises a
`CorruptFileError` naming the file and tensor instead of a numpy traceback.

File layout (https://github.com/huggingface/safetensors#format): u64 little-endian header size
``n``; ``n`` bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``; then the data buffer, offsets relative to its start.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from jquant.core.errors import CorruptFileError, UnsupportedFormatError

__all__ = ["SafetensorsFile", "write_safetensors", "DTYPES"]

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


class SafetensorsFile(Mapping):
    """Read-only mapping ``name -> np.ndarray`` (memory-mapped views, created on access).

    Args:
        path: a ``.safetensors`` file.

    Raises:
        CorruptFileError: bad header length, JSON, dtype, shape, or a byte range that does not
            fit the file or disagrees with shape x dtype.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptFileError(f"file is {size} bytes, too short for a safetensors header", file=self.path)
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CorruptFileError(
                    f"header length {n} does not fit a {size}-byte file (truncated?)", file=self.path
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"header is not valid JSON ({e})", file=self.path) from None
        if not isinstance(header, dict):
            raise CorruptFileError("header is not a JSON object", file=self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dt, shape, (a, b) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CorruptFileError(f"malformed header entry {e!r}", file=self.path, tensor=name) from None
            if dt not in DTYPES:
                raise UnsupportedFormatError(f"unsupported dtype {dt!r}", file=self.path, tensor=name)
            if any(s < 0 for s in shape) or not (0 <= a <= b):
                raise CorruptFileError(f"bad shape {shape} or offsets {[a, b]}", file=self.path, tensor=name)
            want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dt].itemsize
            if b - a != want:
                raise CorruptFileError(
                    f"byte range [{a}, {b}) holds {b - a} bytes but shape {list(shape)} x {dt} needs {want}",
                    file=self.path,
                    tensor=name,
                )
            if b > data_len:
                raise CorruptFileError(
                    f"byte range [{a}, {b}) ends past the data section ({data_len} bytes): file truncated",
                    file=self.path,
                    tensor=name,
                )
            self._entries[name] = (DTYPES[dt], shape, a, b)
        self._mm = None

    def _buffer(self) -> np.memmap:
        if self._mm is None:
            if self.path.stat().st_size == self._data_start:
                self._mm = np.zeros(0, np.uint8)
            else:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        return self._mm

    def __getitem__(self, name: str) -> np.ndarray:
        dt, shape, a, b = self._entries[name]
        if a == b:
            return np.zeros(shape, dt)
        return self._buffer()[a:b].view(dt).reshape(shape)

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def nbytes(self, name: str) -> int:
        _, _, a, b = self._entries[name]
        return b - a

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
):
    """Writes ``tensors`` to ``path`` (via a temporary file in the same folder, then rename).

    Arrays of any `DTYPES` dtype are written as their raw little-endian bytes, in sorted order,
    8-byte aligned as the reference writer does.
    """
    path = Path(path)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NAMES:
            raise UnsupportedFormatError(f"cannot write dtype {a.dtype}", file=path, tensor=name)
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for a in arrays:
                f.write(memoryview(a.reshape(-1).view(np.uint8)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
