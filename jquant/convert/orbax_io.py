"""The canonical format stored with Orbax: same tensors and metadata as the safetensors folder, written
shard by shard from the devices that hold them, and restorable onto any mesh.

Layout of an output folder::

    OUT/jquant.json     {"layout_version", "format", "metadata", "storage": "orbax",
                         "tensors": {HF name: {"kind": "qarray" | "act" | "array", "key": "t00012",
                                               "static": QArray / ActQuant description}}}
    OUT/config.json     the HF-style config
    OUT/arrays/         one Orbax ``PyTreeCheckpointer`` item: {"t00012": {"data": ..., "scale": ...}, ...}
    OUT/tokenizer*      as in the safetensors folder

Tensors are stored under short positional keys (HF names contain dots, which Orbax joins pytree
paths with) and described in ``jquant.json``; a QArray keeps its fields' dtypes (uint8 codes, fp8 /
e8m0 scales: tensorstore stores them natively). Device arrays (a checkpoint placed by
`jquant.parallel.shard_checkpoint`) are written by each device for its shards, never gathered;
numpy arrays are written from the host.

The folder is written under ``.OUT.tmp-PID`` and renamed into place when complete, as
`jquant.convert.canonical.save` does (one process; see `jquant.parallel` for multi-host).

This module imports Orbax (and with it JAX) only inside its functions: `jquant.convert` stays
importable without JAX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jquant.convert._io import read_json
from jquant.convert.checkpoint import Checkpoint
from jquant.core.activation import ActQuant
from jquant.core.errors import CorruptFileError
from jquant.core.qarray import LAYOUT_VERSION, QArray
from jquant.core.qtypes import QType

__all__ = ["save_orbax", "load_orbax", "STORAGE", "ARRAYS"]

STORAGE = "orbax"
ARRAYS = "arrays"
_MARKER = "jquant.json"


def save_orbax(ckpt: Checkpoint, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes ``ckpt`` as a canonical Orbax folder at ``out`` atomically (see the module docstring).

    Args:
        ckpt: a `Checkpoint` whose tensors are numpy arrays (from `jquant.convert`) or device arrays
            (e.g. `jquant.parallel.shard_checkpoint`: each shard is written by its device).
        out: the folder to create.
        overwrite: replace an existing ``out``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        FormatError: a malformed QArray / activation recipe, named.
    """
    from jquant.convert.canonical import (
        _cleanup_on_sigterm,
        _json_default,
        _publish,
        _remove,
        _save_tokenizer,
        remove_stale,
    )

    out = Path(out)
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --force to replace it)")
    remove_stale(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with _cleanup_on_sigterm():
        try:
            tmp.mkdir(parents=True)
            tree, described = {}, {}
            for i, (name, w) in enumerate(ckpt.weights.items()):
                key = f"t{i:05d}"
                if isinstance(w, QArray):
                    if isinstance(w.data, np.ndarray):
                        w.validate(name)
                    described[name] = {"kind": "qarray", "key": key, "static": w.static_json()}
                    tree[key] = dict(w.arrays())
                elif isinstance(w, ActQuant):
                    described[name] = {"kind": "act", "key": key, "static": w.static_json()}
                    tree[key] = {f: np.asarray(a) for f, a in w.arrays().items()}
                else:
                    described[name] = {"kind": "array", "key": key}
                    tree[key] = {"value": w}
            _orbax_save(tmp / ARRAYS, tree)
            (tmp / "config.json").write_text(json.dumps(ckpt.config, indent=2, default=str))
            _save_tokenizer(ckpt, tmp)
            marker = {
                "layout_version": LAYOUT_VERSION,
                "format": ckpt.format,
                "metadata": ckpt.metadata,
                "storage": STORAGE,
                "tensors": described,
            }
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2, default=_json_default))
            _publish(tmp, out)
        finally:
            _remove(tmp)
    return out


def _orbax_save(path: Path, tree: dict) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.PyTreeCheckpointer()
    ckptr.save(path.absolute(), tree)


def _check_marker(folder: Path) -> tuple[dict, str, dict]:
    """(marker, source format, metadata) of ``folder``'s ``jquant.json``, checked as `canonical.load` does."""
    from jquant.core.errors import UnsupportedFormatError

    marker = read_json(folder / _MARKER, CorruptFileError)
    if marker.get("layout_version") != LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"canonical layout_version {str(marker.get('layout_version'))[:40]} but this jquant reads {LAYOUT_VERSION}",
            file=folder / _MARKER,
        )
    fmt, meta = marker.get("format"), marker.get("metadata", {})
    if not isinstance(fmt, str) or not fmt:
        raise CorruptFileError("'format' must be a non-empty string", file=folder / _MARKER, tensor="format")
    if not isinstance(meta, dict):
        raise CorruptFileError("'metadata' must be an object", file=folder / _MARKER, tensor="metadata")
    return marker, fmt, meta


def _template(kind: str, static: dict | None, shapes: dict, name: str):
    """The tensor as ShapeDtypeStructs (for a placement to choose shardings from); None for recipes."""
    import jax

    sds = {f: jax.ShapeDtypeStruct(s, d) for f, (s, d) in shapes.items()}
    if kind == "act":
        return None
    if kind == "qarray":
        return QArray(
            **sds,
            qtype=QType.from_json(static["qtype"]),
            shape=tuple(static["shape"]),
            block=tuple(static["block"]),
            layout_version=static["layout_version"],
        )
    return sds.get("value")


def load_orbax(
    folder: str | os.PathLike,
    *,
    placement: Callable[[str, object], object] | None = None,
) -> Checkpoint:
    """Loads a canonical Orbax folder written by `save_orbax`.

    Args:
        folder: the folder.
        placement: optional ``(HF name, template) -> shardings | None``: ``template`` is the tensor
            with ``jax.ShapeDtypeStruct`` arrays (a `QArray` / `ActQuant` / a struct); the result is
            a matching pytree of ``jax.sharding.Sharding`` (each device then reads only its slices
            from disk) or None (restore that tensor to host numpy). Without ``placement`` every
            tensor comes back as numpy (`jquant.parallel.load_sharded` passes one).

    Returns:
        the `Checkpoint`: the same format, config, metadata and tensors as saved.

    Raises:
        CorruptFileError: a missing or malformed ``jquant.json`` / ``arrays`` item, naming it.
        UnsupportedFormatError: another ``layout_version``.
    """
    import orbax.checkpoint as ocp

    from jquant.convert.validate import check_config

    folder = Path(folder)
    marker, fmt, meta = _check_marker(folder)
    config = read_json(folder / "config.json", CorruptFileError)
    check_config(config, file=folder / "config.json")
    described = marker.get("tensors")
    if not isinstance(described, dict):
        raise CorruptFileError("'tensors' must be an object", file=folder / _MARKER, tensor="tensors")
    ckptr = ocp.PyTreeCheckpointer()
    arrays = (folder / ARRAYS).absolute()
    if not arrays.is_dir():
        raise CorruptFileError("missing the Orbax item 'arrays'", file=folder)
    tree_meta = ckptr.metadata(arrays)
    tree_meta = getattr(tree_meta, "item_metadata", tree_meta)
    tree_meta = getattr(tree_meta, "tree", tree_meta)
    restore_args, templates = {}, {}
    for name, d in described.items():
        try:
            key, kind = d["key"], d["kind"]
            fields = tree_meta[key]
            shapes = {f: (tuple(m.shape), np.dtype(m.dtype)) for f, m in fields.items()}
            templates[name] = _template(kind, d.get("static"), shapes, name)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(
                f"bad tensor description ({type(e).__name__}: {e})", file=folder, tensor=name
            ) from None
        # activation recipes are a few scalars: always restored to the host
        sh = None if placement is None or kind == "act" else placement(name, templates[name])
        if sh is None:
            restore_args[key] = {f: ocp.RestoreArgs(restore_type=np.ndarray) for f in shapes}
        else:
            field_sh = {"value": sh} if kind == "array" else {f: getattr(sh, f) for f in shapes}
            restore_args[key] = {f: ocp.ArrayRestoreArgs(sharding=s) for f, s in field_sh.items()}
    restored = ckptr.restore(arrays, restore_args=restore_args)
    weights: dict = {}
    for name, d in described.items():
        got, kind, t = restored[d["key"]], d["kind"], templates[name]
        if kind == "qarray":
            q = t.replace(**got)
            weights[name] = q.validate(name) if all(isinstance(a, np.ndarray) for a in got.values()) else q
        elif kind == "act":
            weights[name] = ActQuant.from_json(d["static"], {f: np.asarray(a) for f, a in got.items()})
        else:
            weights[name] = got["value"]
    metadata = dict(meta)
    metadata["canonical_path"] = str(folder)
    return Checkpoint(format=fmt, config=config, weights=weights, metadata=metadata)
