"""The canonical on-disk format: convert once, then load fast from either framework.

Layout of an output folder::

    OUT/jquant.json          {"layout_version", "format", "metadata"}: marks the folder as canonical
    OUT/config.json          the HF-style config
    OUT/model.safetensors    plain tensors under their HF name; a QArray's arrays under
                             "<name>:data", "<name>:scale", "<name>:zero", "<name>:perm", "<name>:scale2",
                             with its static description (qtype, shape, block) in __metadata__["qarrays"];
                             an ActQuant (input-activation recipe) likewise under "<name>:scale" etc.,
                             described in __metadata__["activations"]
    OUT/tokenizer*, ...      tokenizer files copied from a source folder, when it has them

The folder is written under a temporary name beside OUT and renamed into place only when complete,
so an interrupted or failing conversion never leaves a partial OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jquant.convert.checkpoint import Checkpoint
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core.activation import ActQuant
from jquant.core.errors import CorruptFileError, FormatError, UnsupportedFormatError
from jquant.core.qarray import LAYOUT_VERSION, QArray
from jquant.core.qtypes import QType

__all__ = ["save", "load", "is_canonical", "MARKER"]

MARKER = "jquant.json"
_FIELDS = ("data", "scale", "zero", "perm", "scale2")
_ACT_FIELDS = ("scale", "zero", "global_scale")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def is_canonical(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MARKER).exists()


def save(
    ckpt: Checkpoint,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Writes ``ckpt`` as a canonical folder at ``out`` atomically.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --force to replace it)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors: dict[str, np.ndarray] = {}
        statics: dict[str, dict] = {}
        acts: dict[str, dict] = {}
        items = list(ckpt.weights.items())
        for i, (name, w) in enumerate(items):
            if progress is not None:
                progress(i, len(items), name)
            if isinstance(w, QArray):
                w.validate(name)
                statics[name] = w.static_json()
                for f, a in w.arrays().items():
                    tensors[f"{name}:{f}"] = np.asarray(a)
            elif isinstance(w, ActQuant):
                w.validate(name)
                acts[name] = w.static_json()
                for f, a in w.arrays().items():
                    tensors[f"{name}:{f}"] = np.asarray(a)
            else:
                tensors[name] = np.asarray(w)
        meta = {"qarrays": json.dumps(statics), "layout_version": str(LAYOUT_VERSION)}
        if acts:
            meta["activations"] = json.dumps(acts)
        write_safetensors(tmp / "model.safetensors", tensors, meta)
        (tmp / "config.json").write_text(json.dumps(ckpt.config, indent=2, default=str))
        _save_tokenizer(ckpt, tmp)
        marker = {"layout_version": LAYOUT_VERSION, "format": ckpt.format, "metadata": ckpt.metadata}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=_json_default))
        if progress is not None:
            progress(len(items), len(items), "")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_tokenizer(ckpt: Checkpoint, folder: Path) -> None:
    """Copies tokenizer files from an HF source folder, or writes them from GGUF tokenizer metadata."""
    src = ckpt.metadata.get("source")
    if src and Path(src).is_dir():
        for f in _TOKENIZER_FILES:
            if (Path(src) / f).exists():
                shutil.copy2(Path(src) / f, folder / f)
    gguf_src = ckpt.metadata.get("tokenizer_source")
    if gguf_src and Path(gguf_src).is_file():
        try:
            from jquant.convert.gguf_tokenizer import save_tokenizer

            save_tokenizer(gguf_src, folder)
        except ImportError as e:  # tokenizers/transformers missing: weights are still complete
            warnings.warn(
                f"tokenizer not written to {folder.name} ({e}); generation will need the GGUF file", stacklevel=3
            )


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serializable")


def load(folder: str | os.PathLike) -> Checkpoint:
    """Loads a canonical folder written by `save` (arrays memory-mapped)."""
    folder = Path(folder)
    marker = json.loads((folder / MARKER).read_text())
    if marker.get("layout_version") != LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"canonical layout_version {marker.get('layout_version')} but this jquant reads {LAYOUT_VERSION}",
            file=folder / MARKER,
        )
    config = json.loads((folder / "config.json").read_text())
    sf = SafetensorsFile(folder / "model.safetensors")
    try:
        statics = json.loads(sf.metadata.get("qarrays", "{}"))
        acts = json.loads(sf.metadata.get("activations", "{}"))
    except json.JSONDecodeError:
        raise CorruptFileError("__metadata__['qarrays'] or ['activations'] is not valid JSON", file=sf.path) from None
    weights: dict = {}
    qnames = set(statics)
    for name in sf:
        base, sep, field = name.rpartition(":")
        if sep and base in qnames:
            if field not in _FIELDS:
                raise CorruptFileError(f"unknown QArray field {field!r}", file=sf.path, tensor=name)
            continue
        if sep and base in acts:
            if field not in _ACT_FIELDS:
                raise CorruptFileError(f"unknown ActQuant field {field!r}", file=sf.path, tensor=name)
            continue
        weights[name] = sf[name]
    for name, st in statics.items():
        arrays = {f: sf[f"{name}:{f}"] for f in _FIELDS if f"{name}:{f}" in sf}
        if "data" not in arrays or "scale" not in arrays:
            raise FormatError("QArray without data or scale", file=sf.path, tensor=name)
        q = QArray(
            **arrays,
            qtype=QType.from_json(st["qtype"]),
            shape=tuple(st["shape"]),
            block=tuple(st["block"]),
            layout_version=st["layout_version"],
        )
        weights[name] = q.validate(name)
    for name, st in acts.items():
        arrays = {f: np.asarray(sf[f"{name}:{f}"]) for f in _ACT_FIELDS if f"{name}:{f}" in sf}
        try:
            weights[name] = ActQuant.from_json(st, arrays).validate(name)
        except (KeyError, TypeError) as e:
            raise CorruptFileError(f"bad activation description ({e})", file=sf.path, tensor=name) from None
    metadata = dict(marker.get("metadata", {}))
    metadata["canonical_path"] = str(folder)
    return Checkpoint(format=marker["format"], config=config, weights=weights, metadata=metadata)
