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
import math
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from jquant.convert._io import regular_file
from jquant.core.errors import CorruptFileError, UnsupportedFormatError

__all__ = ["SafetensorsFile", "write_safetensors", "DTYPES", "MAX_TENSORS"]

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
# jquant's limits (documented in the README): what a header may make the reader build in memory.
# The biggest real shards hold a few thousand tensors; 262144 entries parse in ~150 MB.
MAX_TENSORS = 1 << 18
MAX_NDIM = 16


class _TooMany(Exception):
    pass


def _hook(counter: list[int]):
    """json ``object_pairs_hook``: refuses duplicate keys and stops after `MAX_TENSORS` objects."""

    def hook(pairs):
        counter[0] += 1
        if counter[0] > MAX_TENSORS + 2:  # each entry is one object; plus __metadata__ and the header
            raise _TooMany
        d = dict(pairs)
        if len(d) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"duplicate key {dup!r}")
        return d

    return hook


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsFile(Mapping):
    """Read-only mapping ``name -> np.ndarray`` (memory-mapped views, created on access).

    Args:
        path: a ``.safetensors`` file (a regular file, or a link to one).

    Raises:
        CorruptFileError: bad header length, JSON, dtype, shape, or a byte range that does not
            fit the file, disagrees with shape x dtype, or overlaps another tensor's; more than
            `MAX_TENSORS` entries; not a regular file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        size = regular_file(self.path, CorruptFileError)
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptFileError(f"file is {size} bytes, too short for a safetensors header", file=self.path)
                (n,) = struct.unpack("<Q", head)
                if n > _MAX_HEADER or 8 + n > size:
                    raise CorruptFileError(
                        f"header length {n} does not fit a {size}-byte file (truncated?) or exceeds {_MAX_HEADER}",
                        file=self.path,
                    )
                raw = f.read(n)
        except OSError as e:
            raise CorruptFileError(f"cannot read ({e.strerror or e})", file=self.path) from None
        try:
            header = json.loads(raw, object_pairs_hook=_hook([0]))
        except _TooMany:
            raise CorruptFileError(
                f"header lists more than {MAX_TENSORS} tensors (jquant's limit per file)", file=self.path
            ) from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CorruptFileError(f"header is not valid JSON ({str(e)[:200]})", file=self.path) from None
        if not isinstance(header, dict):
            raise CorruptFileError("header is not a JSON object", file=self.path)
        if len(header) - ("__metadata__" in header) > MAX_TENSORS:
            raise CorruptFileError(
                f"header lists more than {MAX_TENSORS} tensors (jquant's limit per file)", file=self.path
            )
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CorruptFileError("__metadata__ is not an object of strings", file=self.path, tensor="__metadata__")
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + n
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            if not isinstance(e, dict):
                raise CorruptFileError(f"header entry is not an object: {str(e)[:80]}", file=self.path, tensor=name)
            dt, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
            if not isinstance(dt, str) or not isinstance(shape, list) or not isinstance(offs, list) or len(offs) != 2:
                raise CorruptFileError(
                    f"malformed header entry {str(e)[:120]} (needs dtype, shape, data_offsets [begin, end])",
                    file=self.path,
                    tensor=name,
                )
            if dt not in DTYPES:
                raise UnsupportedFormatError(f"unsupported dtype {dt[:40]!r}", file=self.path, tensor=name)
            a, b = offs
            if not all(_int(x) and x >= 0 for x in shape) or len(shape) > MAX_NDIM:
                raise CorruptFileError(
                    f"bad shape {str(shape)[:80]} (non-negative integers, at most {MAX_NDIM} dims)",
                    file=self.path,
                    tensor=name,
                )
            if not (_int(a) and _int(b) and 0 <= a <= b):
                raise CorruptFileError(f"bad data_offsets {str(offs)[:80]}", file=self.path, tensor=name)
            want = math.prod(shape) * DTYPES[dt].itemsize  # Python ints: no overflow
            if b - a != want:
                raise CorruptFileError(
                    f"byte range [{a}, {b}) holds {b - a} bytes but shape {shape} x {dt} needs {want}",
                    file=self.path,
                    tensor=name,
                )
            if b > data_len:
                raise CorruptFileError(
                    f"byte range [{a}, {b}) ends past the data section ({data_len} bytes): file truncated",
                    file=self.path,
                    tensor=name,
                )
            self._entries[name] = (DTYPES[dt], tuple(shape), a, b)
        # Tensors may not share bytes (the reference reader requires them back to back).
        spans = sorted((a, b, name) for name, (_, _, a, b) in self._entries.items() if b > a)
        for (a0, b0, n0), (a1, _, n1) in zip(spans, spans[1:]):
            if a1 < b0:
                raise CorruptFileError(
                    f"byte range [{a0}, {b0}) overlaps tensor {n1!r} starting at {a1}", file=self.path, tensor=n0
                )
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
