"""Converting a GGUF file (llama.cpp) into a `Checkpoint` of canonical tensors under HF names.

The file is opened with the strict memory-mapped `GGUFFile`; `jquant.formats.gguf.GGUF` derives the
HF config from the metadata and converts each tensor (canonical `QArray`, dense array, or exact
float32 for types with no canonical form). Tensors are grouped per HF module, like HF folders, so a
progress callback sees one step per module.

``Checkpoint.metadata`` keeps the file's small metadata (JSON-serializable) under ``"gguf"``; the
tokenizer's big arrays (tokens, merges, scores, token types) stay in the file, whose path is kept in
``metadata["source"]``: `jquant.convert.gguf_tokenizer.load_tokenizer` rebuilds the tokenizer from it.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jquant.convert.checkpoint import Checkpoint
from jquant.convert.gguf_reader import GGUFFile
from jquant.convert.gguf_tokenizer import check_tokenizer_metadata
from jquant.convert.validate import check_config
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from jquant.core.qarray import LAYOUT_VERSION, QArray
from jquant.formats.base import TensorGroup
from jquant.formats.gguf import GGUF, NON_WEIGHTS, RawTensor, hf_name

__all__ = ["convert_gguf", "gguf_metadata_summary"]

# Arrays longer than this stay out of Checkpoint.metadata (their length is recorded instead).
_MAX_ARRAY_IN_METADATA = 64


class _Records:
    """What a `TensorGroup` reads from: GGUF name -> `RawTensor` (lazy, memory-mapped)."""

    def __init__(self, f: GGUFFile):
        self.f, self.path = f, f.path

    def __getitem__(self, name: str) -> RawTensor:
        return self.f.tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.f.shape(name)

    def dtype(self, name: str) -> np.dtype:
        return self.f.dtype(name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def gguf_metadata_summary(f: GGUFFile) -> dict[str, Any]:
    """The file's metadata as JSON-able values; big arrays replaced by ``{"length": n}``."""
    out: dict[str, Any] = {}
    for k, v in f.metadata.items():
        if isinstance(v, np.ndarray | list) and len(v) > _MAX_ARRAY_IN_METADATA:
            out[k] = {"length": len(v), "type": f.value_types[k]}
        else:
            out[k] = _jsonable(v)
    return out


def convert_gguf(path: str | os.PathLike, *, progress: Callable[[int, int, str], None] | None = None) -> Checkpoint:
    """Converts a GGUF file to a `Checkpoint` (weights under HF names, HF orientation).

    Args:
        path: a ``.gguf`` file (v2 or v3, little-endian, single file).
        progress: optional callback ``(done, total, current_module)``.

    Raises:
        CorruptFileError: the file does not parse (truncated, bad magic, out-of-range data...).
        UnsupportedFormatError: unknown architecture, GGML type or tensor name; a split file.
        ConfigError: required metadata missing.
    """
    path = Path(path)
    f = GGUFFile(path)
    splits = f.metadata.get("split.count", 1)
    if not isinstance(splits, int) or isinstance(splits, bool):
        raise ConfigError(f"expected an integer, got {f.value_types['split.count']}", file=path, tensor="split.count")
    if splits != 1:  # llama.cpp's gguf-split shards (split.count / split.no); one file holds a part of the tensors
        raise UnsupportedFormatError(
            f"this is one of {splits!r} split files; merge them first (llama-gguf-split --merge)",
            file=path,
            tensor="split.count",
        )
    rope_freqs = f["rope_freqs.weight"] if "rope_freqs.weight" in f else None
    if rope_freqs is not None and f.ggml_type("rope_freqs.weight").name != "F32":
        raise CorruptFileError("rope_freqs must be F32", file=path, tensor="rope_freqs.weight")
    fmt = GGUF.from_metadata(f.metadata, list(f.tensors), rope_freqs=rope_freqs, file=path)
    check_config(fmt.config, file=path)
    if "tokenizer.ggml.model" in f.metadata or "tokenizer.ggml.tokens" in f.metadata:
        check_tokenizer_metadata(f)
    records = _Records(f)
    groups: dict[str, dict[str, tuple[_Records, str]]] = collections.defaultdict(dict)
    seen: dict[str, str] = {}
    for gname in f.tensors:
        if gname in NON_WEIGHTS:
            continue
        name = hf_name(gname, file=path, spec=fmt.spec)
        if name in seen:
            raise CorruptFileError(f"maps to HF name {name!r} like {seen[name]!r}", file=path, tensor=gname)
        seen[name] = gname
        prefix, _, suffix = name.rpartition(".")
        groups[prefix][suffix] = (records, gname)
    weights: dict[str, QArray | np.ndarray] = {}
    for i, prefix in enumerate(groups):
        if progress is not None:
            progress(i, len(groups), prefix)
        try:
            weights.update(fmt.convert_module(TensorGroup(prefix, groups[prefix])))
        except FormatError as e:
            raise e.with_file(path) from None
    if progress is not None:
        progress(len(groups), len(groups), "")
    types = collections.Counter(t.type.name for t in f.tensors.values())
    metadata = {
        "source": str(path),
        "layout_version": LAYOUT_VERSION,
        **fmt.describe(),
        "gguf_version": f.version,
        "tensor_types": dict(sorted(types.items())),
        "tokenizer_source": str(path) if "tokenizer.ggml.model" in f.metadata else None,
        "gguf": gguf_metadata_summary(f),
    }
    if rope_freqs is not None:
        metadata["rope_freqs"] = np.asarray(rope_freqs, dtype=np.float32).tolist()
    return Checkpoint(format=fmt.name, config=fmt.config, weights=weights, metadata=metadata)
