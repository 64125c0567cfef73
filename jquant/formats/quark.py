"""AMD Quark exports (``quant_method: "quark"``): FP8 and OCP MXFP4 linears, FP8 KV cache.

Config (formats.md 10; vLLM ``quantization/quark/quark.py``)::

    {"quant_method": "quark",
     "global_quant_config": {"weight": QTensorConfig | [QTensorConfig, ...], "input_tensors": ..., "output_tensors": ...},
     "layer_quant_config": {"<fnmatch pattern>": {...}}, "layer_type_quant_config": {...},
     "exclude": ["lm_head", ...], "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": ...}}

``QTensorConfig``: ``dtype`` (``fp8_e4m3``, ``fp4``, ``int8``...), ``qscheme`` (``per_tensor``,
``per_channel``, ``per_group``), ``group_size``, ``is_dynamic``, ``scale_format`` / ``scale_type``
(``e8m0``). A module's config is ``layer_quant_config[name]``, else the first fnmatch pattern
that matches, else the global one; ``exclude`` (fnmatch) wins.

Supported layouts (``quark/torch/utils/pack.py``; vLLM ``quark/schemes``):

* FP8 W8A8 (``quark_w8a8_fp8.py``): ``weight`` e4m3 [N, K], ``weight_scale`` f32 scalar (per_tensor)
  or [N] (per_channel), multiplier; ``input_scale`` f32 scalar for static inputs, or dynamic.
* OCP MXFP4 (``quark_ocp_mx.py``; dtype ``fp4``, ``per_group``, group 32, e8m0 scales): ``weight``
  uint8 [N, K/2] (``Pack_fp4``: element 2j low nibble), ``weight_scale`` uint8 [N, K/32] E8M0;
  MXFP4 inputs are dynamic with e8m0 scales per 32.
* KV cache: ``<attn>.k_proj.output_scale`` / ``v_proj.output_scale`` of the ``kv_cache_group``
  modules (vLLM ``QuarkConfig.get_cache_scale_mapper``) -> ``Checkpoint.metadata["kv_cache"]``.

Other Quark dtypes (int4 / uint4 AWQ-style, fp6, legacy ``mx``, two-level NVFP4 lists) raise
`UnsupportedFormatError` naming the module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jquant.core.activation import ActQuant, fp4_act, fp8_act
from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.core.qtypes import fp8_e4m3
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.fp8 import INPUT_QUANT, KVCache, attention_prefix, fp8_qarray, missing, static_input_scale
from jquant.formats.mxfp4 import MX_GROUP, fp4_qarray

__all__ = ["Quark", "QuarkTensorConfig"]

_CONSUMED = ("weight", "weight_scale", "input_scale", "output_scale", "weight_zero_point", "input_zero_point")


@dataclasses.dataclass(frozen=True)
class QuarkTensorConfig:
    """The fields of a Quark ``QTensorConfig`` that decide the layout."""

    dtype: str
    qscheme: str | None
    group_size: int | None
    is_dynamic: bool
    scale_e8m0: bool

    @classmethod
    def parse(cls, d: Any, where: str) -> QuarkTensorConfig | None:
        if d is None:
            return None
        if isinstance(d, list):
            if len(d) != 1:
                raise UnsupportedFormatError(f"{where}: multi-level Quark schemes ({len(d)} configs) are not supported")
            d = d[0]
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be an object, got {d!r}")
        sf = str(d.get("scale_format") or d.get("scale_type") or "").lower()
        gs = d.get("group_size")
        return cls(
            dtype=str(d.get("dtype", "")).lower(),
            qscheme=None if d.get("qscheme") is None else str(d["qscheme"]).lower(),
            group_size=None if gs is None else int(gs),
            is_dynamic=bool(d.get("is_dynamic", False)),
            scale_e8m0=sf in ("e8m0", "float8_e8m0fnu"),
        )

    @property
    def is_mxfp4(self) -> bool:
        return self.dtype == "fp4" and self.qscheme == "per_group" and self.group_size == MX_GROUP


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    weight: QuarkTensorConfig | None
    input: QuarkTensorConfig | None


class Quark(Format, name="quark"):
    """AMD Quark FP8 / MXFP4 (see module docstring)."""

    quant_methods = ("quark",)
    partner_suffixes = frozenset({"weight_scale", "weight_zero_point"})

    def __init__(self, glob: LayerConfig, layers: dict[str, LayerConfig], exclude: tuple[str, ...], kv_group):
        self.glob = glob
        self.layers = layers
        self.exclude = exclude
        self.kv_group = tuple(kv_group)
        self.kv = KVCache(dtype="fp8_e4m3", scheme={"kv_cache_group": list(kv_group)} if kv_group else None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> Quark:
        qc = quant_config(config) or {}

        def layer(d, where):
            if not isinstance(d, Mapping):
                raise ConfigError(f"{where} must be an object")
            return LayerConfig(
                QuarkTensorConfig.parse(d.get("weight"), f"{where}.weight"),
                QuarkTensorConfig.parse(d.get("input_tensors"), f"{where}.input_tensors"),
            )

        if "global_quant_config" not in qc:
            raise ConfigError("Quark config has no global_quant_config")
        glob = layer(qc["global_quant_config"], "global_quant_config")
        layers = {str(k): layer(v, f"layer_quant_config.{k}") for k, v in (qc.get("layer_quant_config") or {}).items()}
        if qc.get("layer_type_quant_config"):
            raise UnsupportedFormatError(
                "Quark layer_type_quant_config is not supported (module classes are not on disk)"
            )
        exclude = tuple(str(p) for p in (qc.get("exclude") or ()))
        kv_group = tuple((qc.get("export") or {}).get("kv_cache_group") or ())
        return cls(glob, layers, exclude, kv_group)

    def config_for(self, prefix: str) -> LayerConfig | None:
        if any(prefix == p or fnmatch.fnmatchcase(prefix, p) for p in self.exclude):
            return None
        if prefix in self.layers:
            return self.layers[prefix]
        for pat, cfg in self.layers.items():
            if fnmatch.fnmatchcase(prefix, pat):
                return cfg
        return self.glob

    def convert_module(self, group: TensorGroup):
        skip: set[str] = set()
        if "output_scale" in group:
            kind = {"k_proj": "k_scale", "v_proj": "v_scale", "q_proj": "q_scale"}.get(group.prefix.rpartition(".")[2])
            in_kv = any(fnmatch.fnmatchcase(group.prefix, p) for p in self.kv_group)
            if kind is None or not (in_kv or not self.kv_group):
                raise group.error(
                    "output_scale", "output quantization outside the KV cache is not supported", UnsupportedFormatError
                )
            self.kv.add(group, "output_scale", attention_prefix(group.prefix), kind)
            skip.add("output_scale")
        if "weight_scale" not in group:
            if "weight" in group and group.dtype("weight") == np.dtype(fp8_e4m3.storage_dtype):
                raise missing(group, "weight_scale", "fp8 weight without its scale")
            return self.passthrough(group, skip=skip)
        cfg = self.config_for(group.prefix)
        if cfg is None or cfg.weight is None:
            raise group.error(
                "weight_scale", "module is excluded / unquantized in the config but carries scales", ConfigError
            )
        wc, ic = cfg.weight, cfg.input
        if wc.dtype == "fp8_e4m3" and wc.qscheme in ("per_tensor", "per_channel"):
            w = fp8_qarray(group, strategy="tensor" if wc.qscheme == "per_tensor" else "channel")
        elif wc.is_mxfp4 and wc.scale_e8m0:
            w = fp4_qarray(group, packed="weight", scale="weight_scale", group_size=MX_GROUP, scale_kind="e8m0")
        else:
            raise group.error(
                "weight", f"Quark weight dtype {wc.dtype!r} / {wc.qscheme} is not supported", UnsupportedFormatError
            )
        out: dict[str, Any] = self.passthrough(group, skip=skip | set(_CONSUMED))
        out[group.full_name("weight")] = w
        act = self._activation(group, ic)
        if act is not None:
            out[group.full_name(INPUT_QUANT)] = act
        return out

    @staticmethod
    def _activation(group: TensorGroup, ic: QuarkTensorConfig | None) -> ActQuant | None:
        if ic is None:
            return None
        if ic.dtype == "fp8_e4m3" and ic.qscheme == "per_tensor":
            if ic.is_dynamic:
                return fp8_act(dynamic=True, granularity="tensor")
            return fp8_act(dynamic=False, granularity="tensor", scale=static_input_scale(group))
        if ic.dtype == "fp8_e4m3" and ic.qscheme == "per_channel" and ic.is_dynamic:  # per-token
            return fp8_act(dynamic=True, granularity="token")
        if ic.is_mxfp4:
            return fp4_act(group_size=MX_GROUP, scale_dtype="float8_e8m0fnu")
        raise group.error(
            "weight", f"Quark input_tensors {ic.dtype!r} / {ic.qscheme} is not supported", UnsupportedFormatError
        )

    def describe(self):
        d: dict[str, Any] = {"format": self.name}
        kv = self.kv.describe()
        if kv is not None:
            d["kv_cache"] = kv
        return d
