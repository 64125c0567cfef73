"""Intel Neural Compressor (INC) FP8 checkpoints, the Gaudi FP8 flow (``neural_compressor.torch`` ``save``).

INC 3.x FP8 (``neural_compressor/torch/algorithms/fp8_quant``) first measures a bf16 model
(``FP8Config(mode="MEASURE")`` -> ``<dump_stats_path>_hooks_maxabs.json`` / ``.npz``, the
measured-scale files vLLM's ``--quantization inc`` reads through ``QUANT_CONFIG``), then converts
it (``mode="QUANTIZE"``) and ``save(model, dir, format="huggingface")`` writes (``save_load.py``
``save`` / ``save_for_single_device``; layout confirmed on a CPU run of neural-compressor-pt 3.10
with ``use_qdq=True``, see tests/formats_variants/producers_inc.py)::

    config.json["quantization_config"] = FP8Config.to_dict() with mode "LOAD" -- and no
        ``quant_method`` key: {"fp8_config": "E4M3", "hp_dtype": "bf16", "mode": "LOAD",
        "scale_method": "maxabs_hw" | ..., "blocklist": {"names": [...], "types": [...]},
        "allowlist": {...}, "use_qdq": "True", "fake_quant": "False", ...}
        (the same dict is also written to a side ``quantization_config.json``)
    <m>.weight                       float8_e4m3fn [K, N]   TRANSPOSED (PatchedLinear computes
                                                            ``matmul(x, dequant_weights(weight))``)
    <m>.dequant_weights.scale        bf16 () per tensor, or [N] per output channel (``*_pcs_*``)
    <m>.dequant_weights.zero_point   f32 ()  0 (written with per-channel methods)
    <m>.quant_input.scale            bf16 ()  static input scale (multiplier)
    <m>.quant_input.scale_inv        bf16 ()  1 / scale, what INC multiplies activations by
    <m>.quant_input.zero_point       f32 ()  0 (per-channel methods)
    <m>.bias                         optional, hp dtype

``W[n, k] = float(weight[k, n]) * scale[n or 0]`` (``DequantOutput``: ``dequantize_per_tensor`` /
``dequantize_per_channel`` along axis 1 of [K, N], f32 math, cast to the hp dtype).

Canonical: ``data`` = ``weight.T`` (fp8, [N, K]), ``scale`` in its stored dtype, (1, 1) with block
(N, K) or [N, 1] with block (1, K); ``input_quant`` = static per-tensor fp8 e4m3 with the stored
``quant_input.scale`` (INC itself multiplies by the rounded ``scale_inv``; dividing by ``scale``
can differ from that in the last bit of an input, never in the weights). Detection: INC writes no
``quant_method``, so this format owns ``quant_method: "inc"`` *and* a ``quantization_config``
without one whose keys are INC's (``fp8_config`` and ``mode``); any other config without a
``quant_method`` is refused as before. Not handled (refused by name): KV-cache / matmul / softmax
patched modules (``k_cache.quant_input.scale`` ...), ``fake_quant``, modes other than LOAD, and
non-zero zero points.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jquant.core.activation import fp8_act
from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.core.qarray import QArray, block_for
from jquant.core.qtypes import fp8_e4m3, fp8_e5m2
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.fp8 import INPUT_QUANT, checked

__all__ = ["INC", "is_inc_config"]

_W_SCALE = "dequant_weights.scale"
_W_ZP = "dequant_weights.zero_point"
_IN_SCALE = "quant_input.scale"
_IN_INV = "quant_input.scale_inv"
_IN_ZP = "quant_input.zero_point"
_DOTTED = (_W_SCALE, _W_ZP, _IN_SCALE, _IN_INV, _IN_ZP)
_FP8 = {"E4M3": (np.dtype(ml_dtypes.float8_e4m3fn), fp8_e4m3), "E5M2": (np.dtype(ml_dtypes.float8_e5m2), fp8_e5m2)}
_SCALE_DTYPES = (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32))
CONFIG_FILE = "config.json"


def is_inc_config(qc: Mapping[str, Any]) -> bool:
    """True for INC's FP8Config dict (``fp8_config`` and ``mode`` keys, no or ``"inc"`` quant_method)."""
    return str(qc.get("quant_method", "inc")).lower() in ("inc", "") and "fp8_config" in qc and "mode" in qc


def _flag(qc: Mapping[str, Any], key: str) -> bool:
    # FP8Config.to_dict writes some booleans as the strings "True" / "False"
    v = qc.get(key, False)
    return v is True or str(v).lower() == "true"


class INC(Format, name="inc"):
    """INC FP8 (Gaudi) checkpoints; see the module docstring."""

    # "" = a quantization_config with no quant_method: INC writes none (from_config checks INC's keys).
    quant_methods = ("inc", "")
    partner_suffixes = frozenset(_DOTTED)
    main_suffix = "weight"

    def __init__(self, fp8: str, blocklist: tuple[str, ...], scale_method: str):
        self.fp8 = fp8
        self.blocklist = blocklist
        self.scale_method = scale_method

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> INC:
        qc = quant_config(config) or {}
        if not is_inc_config(qc):
            raise UnsupportedFormatError(
                "quantization_config has no quant_method and is not an Intel Neural Compressor FP8 config "
                "(no fp8_config / mode keys)",
                file=CONFIG_FILE,
                tensor="quantization_config.quant_method",
            )
        mode = str(qc["mode"]).upper()
        if mode != "LOAD":
            raise UnsupportedFormatError(
                f"INC mode {qc['mode']!r}: only saved (mode LOAD) checkpoints hold fp8 weights",
                file=CONFIG_FILE,
                tensor="quantization_config.mode",
            )
        fp8 = str(qc["fp8_config"]).upper()
        if fp8 not in _FP8:
            raise UnsupportedFormatError(
                f"INC fp8_config {qc['fp8_config']!r} (only {sorted(_FP8)})",
                file=CONFIG_FILE,
                tensor="quantization_config.fp8_config",
            )
        if _flag(qc, "fake_quant"):
            raise UnsupportedFormatError(
                "INC fake_quant checkpoints keep high-precision weights",
                file=CONFIG_FILE,
                tensor="quantization_config.fake_quant",
            )
        block = qc.get("blocklist") or {}
        names = block.get("names", []) if isinstance(block, Mapping) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(
                f"blocklist={block!r} must be {{'names': [str, ...], 'types': [...]}}",
                file=CONFIG_FILE,
                tensor="quantization_config.blocklist",
            )
        if not any(n.endswith("." + _W_SCALE) for n in tensor_names):
            raise ConfigError(
                f"INC FP8 config but no tensor is named *.{_W_SCALE}", file=CONFIG_FILE, tensor="quantization_config"
            )
        return cls(fp8, tuple(names), str(qc.get("scale_method", "")))

    def split_name(self, name: str) -> tuple[str, str]:
        for s in _DOTTED:
            if name.endswith("." + s):
                return name[: -len(s) - 1], s
        return super().split_name(name)

    def convert_module(self, group: TensorGroup):
        if _W_SCALE not in group:
            if "weight" in group and group.dtype("weight") in {d for d, _ in _FP8.values()}:
                group.require(_W_SCALE)  # an fp8 weight without its scale: "missing tensor", named
            stray = sorted(s for s in group if s in _DOTTED)
            if stray:
                raise group.error(
                    stray[0],
                    "INC scales on a module without an fp8 weight (KV-cache / matmul / softmax patching) "
                    "are not supported",
                    UnsupportedFormatError,
                )
            return self.passthrough(group)
        if any(group.prefix == b or group.prefix.endswith("." + b) for b in self.blocklist):
            raise group.error(_W_SCALE, "module is in the INC blocklist but carries fp8 scales", ConfigError)
        out: dict[str, Any] = self.passthrough(group, skip={"weight", *_DOTTED})
        out[group.full_name("weight")] = self._weight(group)
        if _IN_SCALE in group:
            out[group.full_name(INPUT_QUANT)] = fp8_act(
                dynamic=False, granularity="tensor", scale=self._scalar(group, _IN_SCALE)
            )
        elif _IN_INV in group:
            raise group.error(_IN_SCALE, f"missing tensor beside {group.full_name(_IN_INV)}")
        for zp in (_W_ZP, _IN_ZP):
            if zp in group and np.asarray(group[zp], np.float32).any():
                raise group.error(
                    zp, "non-zero fp8 zero point (asymmetric INC recipes are not supported)", UnsupportedFormatError
                )
        return out

    def _scalar(self, group: TensorGroup, suffix: str) -> np.ndarray:
        s = group.expect(suffix, dtypes=_SCALE_DTYPES).astype(np.float32).reshape(-1)
        if s.size != 1 or not np.isfinite(s).all() or s[0] <= 0:
            raise group.error(
                suffix, f"expected one positive finite scale, got {s[:4].tolist()} (shape {list(group.shape(suffix))})"
            )
        return s

    def _weight(self, group: TensorGroup) -> QArray:
        dt, qtype = _FP8[self.fp8]
        w = group.expect("weight")
        if w.dtype != dt or w.ndim != 2:
            raise group.error(
                "weight", f"{w.dtype.name} {list(w.shape)} but INC {self.fp8} stores a 2-D {dt.name} weight [K, N]"
            )
        k, n = w.shape
        s = group.expect(_W_SCALE, dtypes=_SCALE_DTYPES)
        if s.size == 1:
            scale, blk = s.reshape(1, 1), block_for(n, k, per="tensor")
        elif s.shape in ((n,), (n, 1)):
            scale, blk = s.reshape(n, 1), block_for(n, k, per="channel")
        else:
            raise group.error(
                _W_SCALE,
                f"shape {list(s.shape)} but expected a scalar or [{n}] (one per output channel; weight is [K, N] = {[k, n]})",
            )
        q = QArray(
            data=np.ascontiguousarray(w.T), scale=np.ascontiguousarray(scale), qtype=qtype, shape=(n, k), block=blk
        )
        return checked(group, _W_SCALE, q)

    def describe(self) -> dict[str, Any]:
        return {
            "format": self.name,
            "inc": {"fp8_config": self.fp8, "scale_method": self.scale_method, "blocklist": list(self.blocklist)},
        }
