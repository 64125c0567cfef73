"""NVIDIA ModelOpt (TensorRT Model Optimizer) exports: FP8 and NVFP4 families (``quant_method: "modelopt"``).

Config (formats.md 5.4; vLLM ``quantization/modelopt.py ModelOptQuantConfigBase.from_config``):
either ``hf_quant_config.json`` ``{"producer": {...}, "quantization": {"quant_algo", "kv_cache_quant_algo",
"group_size", "exclude_modules"}}`` (merged into ``quantization_config`` by `jquant.convert.hf`) or
``config.json`` ``{"quant_method": "modelopt", "quant_algo", "ignore" | "exclude_modules", ...}``.
``exclude_modules`` are fnmatch wildcards. ``MIXED_PRECISION`` gives per-layer algorithms in
``quantized_layers: {"<module>": {"quant_algo": ...}}``.

Tensors per linear (ModelOpt ``torch/export/unified_export_hf.py``; ``qtensor/nvfp4_tensor.py``):

* ``FP8``: ``weight`` e4m3 [N, K], ``weight_scale`` f32 scalar (multiplier, amax/448),
  ``input_scale`` f32 scalar -> static per-tensor fp8 activations.
* ``FP8_PER_CHANNEL_PER_TOKEN``: ``weight_scale`` [N] or [N, 1]; dynamic per-token activations.
* ``FP8_PB_WO`` (alias ``FP8_BLOCK_SCALES``): ``weight_scale`` [ceil(N/128), ceil(K/128)] (multiplier),
  weight-only.
* ``NVFP4``: ``weight`` uint8 [N, K/2] (element 2j in the low nibble), ``weight_scale`` e4m3
  [N, K/16], ``weight_scale_2`` f32 scalar = amax / (6 * 448), a *multiplier*:
  ``W = E2M1[code] * float(weight_scale) * weight_scale_2`` (``NVFP4QTensor.dequantize``) -- exactly
  the canonical ``scale * scale2``. ``input_scale`` f32 scalar = activation amax / (6 * 448); the
  activation global divisor is its reciprocal (vLLM: ``input_global_scale = 1 / input_scale``).
  ``W4A16_NVFP4``: the same weights, no activation quantization.
* ``MXFP8``: ``weight`` e4m3 [N, K], ``weight_scale`` uint8 E8M0 [N, K/32]; dynamic MX activations.
* KV cache (``kv_cache_quant_algo: FP8``): ``<attn>.k_proj.k_scale``, ``<attn>.v_proj.v_scale`` f32
  scalars -> ``Checkpoint.metadata["kv_cache"]``.
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
from jquant.formats.fp8 import INPUT_QUANT, KVCache, attention_prefix, fp8_qarray, missing, scalar, static_input_scale
from jquant.formats.mxfp4 import E8M0, MX_GROUP, NV_GROUP, fp4_qarray

__all__ = ["ModelOpt", "ModelOptConfig", "ALGOS"]

ALGOS = ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO", "FP8_BLOCK_SCALES", "NVFP4", "W4A16_NVFP4", "MXFP8")
_KV = ("k_scale", "v_scale", "q_scale", "kv_scale")
_CONSUMED = ("weight", "weight_scale", "weight_scale_2", "input_scale")


@dataclasses.dataclass(frozen=True)
class ModelOptConfig:
    """The parsed ModelOpt quantization config."""

    algo: str  # one of ALGOS, or "MIXED_PRECISION"
    exclude: tuple[str, ...]
    group_size: int
    kv_algo: str | None
    per_layer: dict[str, str]  # MIXED_PRECISION: module -> algo


class ModelOpt(Format, name="modelopt"):
    """ModelOpt FP8 / NVFP4 / MXFP8 exports (see module docstring)."""

    quant_methods = ("modelopt",)
    partner_suffixes = frozenset({"weight_scale", "weight_scale_2"})

    def __init__(self, cfg: ModelOptConfig):
        self.cfg = cfg
        self.kv = KVCache(dtype="fp8_e4m3", scheme={"kv_cache_quant_algo": cfg.kv_algo} if cfg.kv_algo else None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> ModelOpt:
        qc = dict(quant_config(config) or {})
        qc.update(qc.get("quantization") or {})  # hf_quant_config.json nests the settings
        algo = str(qc.get("quant_algo") or "").upper()
        if not algo:
            raise ConfigError("ModelOpt config has no quant_algo")
        per_layer = {}
        if algo == "MIXED_PRECISION":
            layers = qc.get("quantized_layers")
            if not isinstance(layers, Mapping) or not layers:
                raise ConfigError("MIXED_PRECISION needs a quantized_layers map")
            per_layer = {str(k): str(v.get("quant_algo", "")).upper() for k, v in layers.items()}
            bad = sorted({a for a in per_layer.values() if a not in ALGOS})
            if bad:
                raise UnsupportedFormatError(f"ModelOpt quant_algo {bad} is not supported; supported: {list(ALGOS)}")
        elif algo not in ALGOS:
            raise UnsupportedFormatError(f"ModelOpt quant_algo {algo!r} is not supported; supported: {list(ALGOS)}")
        exclude = tuple(str(p) for p in (qc.get("exclude_modules") or qc.get("ignore") or ()))
        kv_algo = qc.get("kv_cache_quant_algo")
        if kv_algo is None and isinstance(qc.get("kv_cache_scheme"), Mapping):
            kv_algo = "FP8"
        if kv_algo is not None and str(kv_algo).upper() not in ("FP8",):
            raise UnsupportedFormatError(f"kv_cache_quant_algo {kv_algo!r} is not supported (only FP8)")
        gs = int(qc.get("group_size") or NV_GROUP)
        return cls(ModelOptConfig(algo, exclude, gs, None if kv_algo is None else "FP8", per_layer))

    def algo_for(self, prefix: str) -> str | None:
        if any(fnmatch.fnmatchcase(prefix, p) for p in self.cfg.exclude):
            return None
        if self.cfg.algo == "MIXED_PRECISION":
            return self.cfg.per_layer.get(prefix)
        return self.cfg.algo

    def convert_module(self, group: TensorGroup):
        kv = [s for s in group if s in _KV]
        for s in kv:
            kinds = ("k_scale", "v_scale") if s == "kv_scale" else (s,)  # deprecated single kv_scale: both
            for kind in kinds:
                self.kv.add(group, s, attention_prefix(group.prefix), kind)
        if "weight_scale" not in group:
            if "weight" in group and group.dtype("weight") == np.dtype(fp8_e4m3.storage_dtype):
                raise missing(group, "weight_scale", "fp8 weight without its scale")
            return self.passthrough(group, skip=set(kv))
        algo = self.algo_for(group.prefix)
        if algo is None:
            raise group.error("weight_scale", "module is excluded from quantization but carries scales", ConfigError)
        out: dict[str, Any] = self.passthrough(group, skip=set(kv) | set(_CONSUMED))
        act: ActQuant | None = None
        if algo == "FP8":
            w = fp8_qarray(group, strategy="tensor")
            act = fp8_act(dynamic=False, granularity="tensor", scale=static_input_scale(group))
        elif algo == "FP8_PER_CHANNEL_PER_TOKEN":
            w = fp8_qarray(group, strategy="channel")
            act = fp8_act(dynamic=True, granularity="token")
        elif algo in ("FP8_PB_WO", "FP8_BLOCK_SCALES"):
            w = fp8_qarray(group, strategy="block", block=(128, 128))
        elif algo in ("NVFP4", "W4A16_NVFP4"):
            w = fp4_qarray(
                group, packed="weight", scale="weight_scale", group_size=self.cfg.group_size, scale_kind="e4m3",
                scale2=scalar(group, "weight_scale_2").reshape(1, 1),
            )  # fmt: skip
            if algo == "NVFP4":
                inv = np.float32(1) / static_input_scale(group)  # ModelOpt stores the multiplier
                act = fp4_act(group_size=self.cfg.group_size, scale_dtype="float8_e4m3fn", global_scale=inv)
        else:  # MXFP8
            w = fp8_qarray(group, strategy="group", group_size=MX_GROUP, scale_dtypes=(np.uint8, E8M0), scale_view=E8M0)
            act = ActQuant(fp8_e4m3, True, "group", MX_GROUP, scale_dtype="float8_e8m0fnu").validate()
        out[group.full_name("weight")] = w
        if act is not None:
            out[group.full_name(INPUT_QUANT)] = act
        return out

    def describe(self):
        d: dict[str, Any] = {"format": self.name, "quant_algo": self.cfg.algo}
        kv = self.kv.describe()
        if kv is not None:
            d["kv_cache"] = kv
        return d
