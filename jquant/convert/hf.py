"""Reading HF checkpoint folders: config (+ side files), one or many safetensors shards, lazily.

Every shard is opened header-only and memory-mapped; tensors are grouped by module prefix across
shards (a layer's ``qweight`` and ``scales`` may live in different files), and each group is
converted and released before the next, so peak memory is one module beyond the output.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jquant.convert.checkpoint import Checkpoint
from jquant.convert.safetensors_io import SafetensorsFile
from jquant.core.errors import ConfigError, CorruptFileError, FormatError
from jquant.core.qarray import LAYOUT_VERSION, QArray
from jquant.formats import Format, TensorGroup, detect_format

__all__ = ["read_config", "open_shards", "iter_groups", "convert_hf"]

# Side files some producers write instead of (or besides) config.json's quantization_config.
_SIDE_FILES = {"quantize_config.json": "gptq", "quant_config.json": "awq", "hf_quant_config.json": "modelopt"}


def _load_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read JSON ({e})", file=path) from None
    if not isinstance(d, dict):
        raise ConfigError("not a JSON object", file=path)
    return d


def read_config(folder: Path) -> dict[str, Any]:
    """config.json with any side quantization config merged into ``quantization_config``."""
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FormatError("no config.json in checkpoint folder", file=folder)
    config = _load_json(cfg_path)
    for fname, method in _SIDE_FILES.items():
        side = folder / fname
        if not side.exists():
            continue
        sc = _load_json(side)
        sc.setdefault("quant_method", method)
        qc = config.get("quantization_config")
        if qc is None:
            config["quantization_config"] = sc
        elif str(qc.get("quant_method", "")).lower() != str(sc["quant_method"]).lower():
            raise ConfigError(
                f"config.json says quant_method={qc.get('quant_method')!r} but {fname} says {sc['quant_method']!r}",
                file=side,
            )
    return config


def open_shards(folder: Path) -> dict[str, SafetensorsFile]:
    """tensor name -> opened shard, from ``model.safetensors.index.json`` or every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError("index has no weight_map", file=index)
        files = {f: SafetensorsFile(folder / f) for f in sorted(set(weight_map.values())) if _exists(folder / f, index)}
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


def _exists(p: Path, index: Path) -> bool:
    if not p.exists():
        raise CorruptFileError(f"index refers to missing shard {p.name}", file=index)
    return True


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
    names = open_shards(folder)
    fmt: Format = detect_format(config, list(names), file=folder / "config.json")
    weights: dict[str, Any] = {}
    groups = list(iter_groups(names, fmt.split_name))
    for i, group in enumerate(groups):
        if progress is not None:
            progress(i, len(groups), group.prefix)
        for name, value in fmt.convert_module(group).items():
            if isinstance(value, QArray):
                value.validate(name)
            weights[name] = value
    if progress is not None:
        progress(len(groups), len(groups), "")
    metadata = {"source": str(folder), "layout_version": LAYOUT_VERSION, **fmt.describe()}
    return Checkpoint(format=fmt.name, config=config, weights=weights, metadata=metadata)
