"""Reading HF checkpoint folders: config (+ side files), one or many safetensors shards, lazily.

Every shard is opened header-only and memory-mapped; tensors are grouped by module prefix across
shards (a layer's ``qweight`` and ``scales`` may live in different files), and each group is
converted and released before the next, so peak memory is one module beyond the output.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jquant.convert._io import read_json
from jquant.convert.checkpoint import Checkpoint
from jquant.convert.safetensors_io import SafetensorsFile
from jquant.convert.validate import check_config
from jquant.core.errors import ConfigError, CorruptFileError, FormatError
from jquant.core.experts import split_fused_experts
from jquant.core.qarray import LAYOUT_VERSION, QArray
from jquant.formats import Format, TensorGroup, detect_format

__all__ = ["read_config", "open_shards", "iter_groups", "convert_hf"]

# Side files some producers write instead of (or besides) config.json's quantization_config.
_SIDE_FILES = {"quantize_config.json": "gptq", "quant_config.json": "awq", "hf_quant_config.json": "modelopt"}
# Settings a side file and config.json's quantization_config must agree on when both give them:
# canonical key -> the spellings producers use (AutoAWQ's quant_config.json says w_bit / q_group_size).
_SEMANTIC_KEYS = {
    "bits": ("bits", "w_bit"),
    "group_size": ("group_size", "q_group_size"),
    "sym": ("sym",),
    "zero_point": ("zero_point",),
    "desc_act": ("desc_act",),
    "checkpoint_format": ("checkpoint_format", "format"),
    "version": ("version",),
    "quant_algo": ("quant_algo",),
    "kv_cache_quant_algo": ("kv_cache_quant_algo",),
    "lm_head": ("lm_head",),
}


def _load_json(path: Path) -> dict:
    return read_json(path, ConfigError)


def _semantic(qc: dict) -> dict[str, tuple[str, Any]]:
    """canonical key -> (spelling, value) of the settings in ``qc`` (ModelOpt's nested ``quantization`` too)."""
    flat = dict(qc)
    if isinstance(qc.get("quantization"), dict):  # hf_quant_config.json: {"producer": ..., "quantization": {...}}
        flat.update(qc["quantization"])
    out = {}
    for key, spellings in _SEMANTIC_KEYS.items():
        for sp in spellings:
            if flat.get(sp) is not None:
                v = flat[sp]
                out[key] = (sp, v.lower() if isinstance(v, str) else v)
                break
    return out


def read_config(folder: Path) -> dict[str, Any]:
    """config.json with any side quantization config merged into ``quantization_config``.

    Raises:
        ConfigError: unreadable JSON, a ``quantization_config`` that is not an object, or a side file
            that contradicts config.json on the method or on a setting both give (bits, group size,
            symmetry, act-order, checkpoint format, version, algorithm).
    """
    cfg_path = folder / "config.json"
    if not os.path.lexists(cfg_path):
        raise FormatError("no config.json in checkpoint folder", file=folder)
    config = _load_json(cfg_path)
    qc = config.get("quantization_config")
    if qc is not None and not isinstance(qc, dict):
        raise ConfigError(
            f"quantization_config is a {type(qc).__name__}, not an object", file=cfg_path, tensor="quantization_config"
        )
    for fname, method in _SIDE_FILES.items():
        side = folder / fname
        if not os.path.lexists(side):
            continue
        sc = _load_json(side)
        sc.setdefault("quant_method", method)
        qc = config.get("quantization_config")
        if qc is None:
            config["quantization_config"] = sc
            continue
        if str(qc.get("quant_method", "")).lower() != str(sc["quant_method"]).lower():
            raise ConfigError(
                f"config.json says quant_method={qc.get('quant_method')!r} but {fname} says {sc['quant_method']!r}",
                file=side,
            )
        mine, theirs = _semantic(qc), _semantic(sc)
        for key in (k for k in _SEMANTIC_KEYS if k in mine and k in theirs):
            (sa, a), (sb, b) = mine[key], theirs[key]
            if a != b:
                raise ConfigError(
                    f"config.json's quantization_config says {sa}={a!r} but {fname} says {sb}={b!r}",
                    file=side,
                    tensor=f"quantization_config.{sa}",
                )
    return config


def open_shards(folder: Path) -> dict[str, SafetensorsFile]:
    """tensor name -> opened shard, from ``model.safetensors.index.json`` or every ``*.safetensors``.

    Shard names in the index must be relative paths that stay inside ``folder`` (``..`` and absolute
    paths are refused; symbolic links inside the folder are followed, as the HF cache uses them).
    """
    index = folder / "model.safetensors.index.json"
    if os.path.lexists(index):
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError("index has no weight_map object", file=index)
        for name, f in weight_map.items():
            if not isinstance(f, str) or not f:
                raise CorruptFileError(f"shard name {f!r} is not a file name", file=index, tensor=name)
        files = {f: SafetensorsFile(_shard_path(folder, f, index)) for f in sorted(set(weight_map.values()))}
        out = {}
        for name, f in weight_map.items():
            if name not in files[f]:
                raise CorruptFileError(
                    f"index maps tensor to {f} but that shard does not contain it", file=index, tensor=name
                )
            out[name] = files[f]
        return out
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FormatError("no *.safetensors files in checkpoint folder", file=folder)
    out: dict[str, SafetensorsFile] = {}
    for p in shards:
        sf = SafetensorsFile(p)
        for name in sf:
            if name in out:
                raise CorruptFileError(f"tensor also present in {out[name].path.name}", file=p, tensor=name)
            out[name] = sf
    return out


def _shard_path(folder: Path, name: str, index: Path) -> Path:
    """``folder / name`` for a shard named in the index, refusing names that leave the folder."""
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or "\0" in name:
        raise CorruptFileError(f"shard path {name!r} points outside the checkpoint folder", file=index)
    p = folder / norm
    if not os.path.lexists(p):
        raise CorruptFileError(f"index refers to missing shard {name}", file=index)
    return p


def iter_groups(
    names: dict[str, SafetensorsFile], split: Callable[[str], tuple[str, str]] | None = None
) -> Iterator[TensorGroup]:
    """Groups tensors by module prefix, in a stable order.

    Args:
        names: tensor name -> opened shard.
        split: name -> (prefix, suffix), the format's `Format.split_name`; default: at the last dot.
    """
    groups: dict[str, dict[str, tuple]] = defaultdict(dict)
    for name, f in names.items():
        prefix, suffix = split(name) if split is not None else name.rpartition(".")[::2]
        groups[prefix][suffix] = (f, name)
    for prefix in sorted(groups):
        yield TensorGroup(prefix, groups[prefix])


def convert_hf(folder: Path, *, progress: Callable[[int, int, str], None] | None = None) -> Checkpoint:
    """Converts an HF checkpoint folder (config.json + safetensors) to a `Checkpoint`."""
    folder = Path(folder)
    config = read_config(folder)
    check_config(config, file=folder / "config.json")
    names = open_shards(folder)
    fmt: Format = detect_format(config, list(names), file=folder / "config.json")
    weights: dict[str, Any] = {}
    groups = list(iter_groups(names, fmt.split_name))
    for i, group in enumerate(groups):
        if progress is not None:
            progress(i, len(groups), group.prefix)
        try:
            for fused_name, fused in fmt.convert_module(group).items():
                # transformers-5 / gpt-oss fused 3-D experts -> per-expert HF names (lossless slices)
                for name, value in split_fused_experts(fused_name, fused, config.get("model_type")).items():
                    if isinstance(value, QArray):
                        value.validate(name)
                    weights[name] = value
        except FormatError as e:
            raise e.with_file(group.file(next(iter(group)))) from None
    if progress is not None:
        progress(len(groups), len(groups), "")
    metadata = {"source": str(folder), "layout_version": LAYOUT_VERSION, **fmt.describe()}
    return Checkpoint(format=fmt.name, config=config, weights=weights, metadata=metadata)
