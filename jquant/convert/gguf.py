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
import dataclasses
import mmap
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


_OWN_MAP_MIN_BYTES = 1 << 20


def _own_mapping(a: Any) -> Any:
    """``a`` (a `QArray` or an array) with every host array of >= 1 MiB moved into its own anonymous,
    page-aligned memory map (one copy, one tensor at a time while converting).

    Two reasons, both about peak memory (bench/results/cpu/decode_1b_q4_0.md): XLA's CPU client adopts
    a 64-byte-aligned numpy buffer without a copy (`jquant.nn.weights.stack_to_device`), so the weights
    a model keeps unstacked (embedding table, LM head: 0.16 GB on the 1B-class Q4_0 bench model) are
    then held once, by the checkpoint and the model together; and a freed map goes back to the system
    at once, while glibc keeps the heap chunks numpy allocates below its (dynamic, up to 32 MiB)
    mmap threshold: 0.6-0.8 GB of a dropped checkpoint stayed in the process (``malloc_trim`` gave it
    back) and the model's compilation then came on top. Views into the file's map stay as they are.
    """
    if isinstance(a, QArray):
        return dataclasses.replace(a, **{k: _own_mapping(v) for k, v in a.arrays().items()})
    if not isinstance(a, np.ndarray) or a.nbytes < _OWN_MAP_MIN_BYTES:
        return a
    base = a
    while base is not None:  # already a map (the file's, or one of ours)
        if isinstance(base, np.memmap | mmap.mmap):
            return a
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    out = np.frombuffer(mmap.mmap(-1, a.nbytes), dtype=a.dtype).reshape(a.shape)
    out[...] = a
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
            weights.update(
                {k: _own_mapping(v) for k, v in fmt.convert_module(TensorGroup(prefix, groups[prefix])).items()}
            )
        except FormatError as e:
            raise e.with_file(path) from None
        # The pages just read would otherwise stay in this process's RSS next to their conversions for
        # as long as any zero-copy view (norms) keeps the map: the whole file by the end (0.71 GB on the
        # 1B-class Q4_0 bench model, bench/results/cpu/decode_1b_q4_0.md). Cheap: ~150 groups.
        f.release_pages()
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
    f.release_pages()  # the metadata's pages
    return Checkpoint(format=fmt.name, config=fmt.config, weights=weights, metadata=metadata)
