"""FP8 checkpoints outside compressed-tensors, plus the float-weight helpers the FP8-family formats share.

Formats (formats.md section 5):

* ``quant_method: "fp8"`` with ``weight_block_size: [bn, bk]`` -- HF / DeepSeek-V3 "fine-grained"
  FP8: ``weight`` float8_e4m3fn [N, K] and ``weight_scale_inv`` f32 [ceil(N/bn), ceil(K/bk)].
  Despite its name ``weight_scale_inv`` is a *multiplier*: ``W = fp8 * weight_scale_inv[n//bn, k//bk]``
  (DeepSeek-V3 ``inference/kernel.py weight_dequant_kernel``; transformers
  ``integrations/finegrained_fp8.py``). Activations: dynamic fp8 per group of ``bk`` channels.
  With ``scale_fmt: "ue8m0"`` the scales are powers of two, stored as f32 or as float8_e8m0fnu
  (kept in that dtype).
* ``quant_method: "fp8"`` without a block size -- per-tensor FP8 (AutoFP8 / vLLM serialized):
  ``weight_scale`` f32 scalar (multiplier), ``input_scale`` f32 scalar when
  ``activation_scheme == "static"``, else dynamic per-tensor activations.
* ``quant_method: "fbgemm_fp8"`` -- ``weight_scale`` f32 [N, 1] per output row; activations
  dynamic per token with amax clamped at ``activation_scale_ub`` (vLLM ``fbgemm_fp8.py``).

Canonical form: `QArray` with ``qtype=fp8_e4m3``, ``data`` the fp8 codes [N, K] as stored, ``scale``
in the source's float dtype with ``block`` (N, K) / (1, K) / (bn, bk). The helpers below
(`scale_geometry`, `fp8_qarray`, `KVCache`) are reused by compressed-tensors, ModelOpt and Quark.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jquant.core.activation import ActQuant, fp8_act
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.core.qarray import QArray
from jquant.core.qtypes import QType, fp8_e4m3, fp8_e5m2
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = [
    "FP8",
    "FBGEMMFP8",
    "scale_geometry",
    "load_scale",
    "fp8_qarray",
    "scalar",
    "static_input_scale",
    "KVCache",
    "INPUT_QUANT",
]

# Name of the `ActQuant` entry beside a module's weight in `Checkpoint.weights`.
INPUT_QUANT = "input_quant"

FP8_DTYPES: dict[np.dtype, QType] = {
    np.dtype(ml_dtypes.float8_e4m3fn): fp8_e4m3,
    np.dtype(ml_dtypes.float8_e5m2): fp8_e5m2,
}
FLOAT_SCALE_DTYPES = (np.float32, np.float16, ml_dtypes.bfloat16)
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)


# ---- shared helpers ------------------------------------------------------------------------------
def scale_geometry(
    group: TensorGroup,
    suffix: str,
    shape: tuple[int, ...],
    n: int,
    k: int,
    *,
    strategy: str,
    group_size: int | None = None,
    block: tuple[int, int] | None = None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Checks a scale tensor's shape against its strategy; returns (2-D scale shape, QArray block).

    Accepted on-disk shapes for a weight [N, K]: tensor: any single element (``()``, ``(1,)``,
    ``(1, 1)``); channel: ``(N,)`` or ``(N, 1)``; group: ``(N, K/G)`` (G must divide K); block:
    ``(ceil(N/bn), ceil(K/bk))`` (partial edge blocks are legal: producers pad, quantize and truncate).

    Raises:
        FormatError: naming the scale tensor, when the shape does not fit.
    """
    shape = tuple(int(s) for s in shape)
    if strategy == "tensor":
        if int(np.prod(shape, dtype=np.int64)) != 1:
            raise group.error(suffix, f"per-tensor scale must hold one element, got shape {list(shape)}")
        return (1, 1), (n, k)
    if strategy == "channel":
        if shape not in ((n,), (n, 1)):
            raise group.error(suffix, f"per-channel scale shape {list(shape)} does not fit weight [{n}, {k}]")
        return (n, 1), (1, k)
    if strategy == "group":
        if not group_size or group_size <= 0:
            raise group.error(suffix, f"group strategy needs a positive group_size, got {group_size}")
        if k % group_size:
            raise group.error(suffix, f"group_size {group_size} does not divide K={k}")
        if shape != (n, k // group_size):
            raise group.error(
                suffix, f"group scale shape {list(shape)} does not fit weight [{n}, {k}] with group_size {group_size}"
            )
        return (n, k // group_size), (1, group_size)
    if strategy == "block":
        if block is None or len(block) != 2 or min(block) <= 0:
            raise group.error(suffix, f"block strategy needs a block size [bn, bk], got {block}")
        bn, bk = int(block[0]), int(block[1])
        want = (-(-n // bn), -(-k // bk))
        if shape != want:
            raise group.error(
                suffix, f"block scale shape {list(shape)} does not fit weight [{n}, {k}] with block [{bn}, {bk}]"
            )
        return want, (bn, bk)
    raise group.error(suffix, f"unsupported scale strategy {strategy!r}", UnsupportedFormatError)


def load_scale(group: TensorGroup, suffix: str, dtypes: Iterable[Any] = FLOAT_SCALE_DTYPES) -> np.ndarray:
    """Loads a scale tensor after checking its dtype (a float weight with an int scale is refused)."""
    group.require(suffix)
    allowed = {np.dtype(d) for d in dtypes}
    dt = group.dtype(suffix)
    if dt not in allowed:
        want = ", ".join(sorted(d.name for d in allowed))
        raise group.error(suffix, f"scale dtype {dt.name} is not one of {want}")
    return np.asarray(group[suffix])


def scalar(group: TensorGroup, suffix: str, dtypes: Iterable[Any] = FLOAT_SCALE_DTYPES) -> np.ndarray:
    """A one-element float tensor (shapes ``()``, ``(1,)``...) as float32 (1,), finite and positive."""
    a = load_scale(group, suffix, dtypes)
    if a.size != 1:
        raise group.error(suffix, f"expected a single value, got shape {list(a.shape)}")
    v = a.astype(np.float32).reshape(1)
    if not np.isfinite(v).all() or v[0] <= 0:
        raise group.error(suffix, f"scale {v[0]} is not a positive finite number")
    return v


def fp8_qarray(
    group: TensorGroup,
    *,
    weight: str = "weight",
    scale: str = "weight_scale",
    strategy: str,
    group_size: int | None = None,
    block: tuple[int, int] | None = None,
    scale_dtypes: Iterable[Any] = FLOAT_SCALE_DTYPES,
    scale_view: Any = None,
) -> QArray:
    """A float8 weight [N, K] with one multiplier scale per tensor / channel / group / 2-D block.

    Args:
        group: the module's tensors.
        weight, scale: tensor suffixes.
        strategy, group_size, block: scale granularity (see `scale_geometry`).
        scale_dtypes: accepted on-disk scale dtypes.
        scale_view: reinterpret the scale bytes as this dtype (MX: uint8 exponents -> float8_e8m0fnu).

    Raises:
        FormatError: wrong weight dtype / rank, scale dtype or shape, non-finite scales.
    """
    group.require(weight, scale)
    dt = group.dtype(weight)
    if dt not in FP8_DTYPES:
        raise group.error(weight, f"dtype {dt.name} but an fp8 weight (float8_e4m3fn / float8_e5m2) was expected")
    wshape = group.shape(weight)
    if len(wshape) != 2:
        raise group.error(weight, f"expected a 2-D weight, got shape {list(wshape)}")
    n, k = wshape
    s = load_scale(group, scale, scale_dtypes)
    s2d, blk = scale_geometry(group, scale, s.shape, n, k, strategy=strategy, group_size=group_size, block=block)
    s = np.ascontiguousarray(s).reshape(s2d)
    if scale_view is not None:
        s = s.view(scale_view)
    q = QArray(data=np.asarray(group[weight]), scale=s, qtype=FP8_DTYPES[dt], shape=(n, k), block=blk)
    return checked(group, scale, q)


def checked(group: TensorGroup, scale_suffix: str, q: QArray) -> QArray:
    """`QArray.validate` with errors re-raised naming the source tensor and file."""
    try:
        return q.validate(group.full_name(scale_suffix))
    except FormatError as e:
        raise group.error(scale_suffix, e.problem, type(e)) from None


def missing(group: TensorGroup, suffix: str, problem: str, *, beside: str = "weight") -> FormatError:
    """A `FormatError` for an absent partner tensor, naming the file that holds ``beside``."""
    return FormatError(problem, file=group.file(beside), tensor=group.full_name(suffix))


def static_input_scale(group: TensorGroup, suffix: str = "input_scale") -> np.ndarray:
    """A static per-tensor activation scale (multiplier) as float32 (1,)."""
    return scalar(group, suffix)


@dataclasses.dataclass
class KVCache:
    """Collects per-layer KV-cache scales into `Checkpoint.metadata["kv_cache"]` (never into weights).

    The JSON written by `describe`::

        {"dtype": "fp8_e4m3", "scheme": {... source config ...},
         "layers": {"model.layers.0.self_attn": {"k_scale": [0.02], "v_scale": [0.01]}, ...}}

    Scales are multipliers (``k ~= fp8 * k_scale``, vLLM ``BaseKVCacheMethod``), float32 lists:
    one value per layer (per-tensor) or one per KV head (compressed-tensors ``attn_head``).
    """

    dtype: str = "fp8_e4m3"
    scheme: dict[str, Any] | None = None
    layers: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)

    def add(self, group: TensorGroup, suffix: str, layer: str, kind: str) -> None:
        """Records ``group[suffix]`` as the ``kind`` ("k_scale", "v_scale", "q_scale"...) of attention ``layer``."""
        a = load_scale(group, suffix)
        v = a.astype(np.float32).ravel()
        if not np.isfinite(v).all():
            raise group.error(suffix, f"non-finite KV-cache scale {v.tolist()}")
        self.layers.setdefault(layer, {})[kind] = [float(x) for x in v]

    def describe(self) -> dict[str, Any] | None:
        if not self.layers and self.scheme is None:
            return None
        return {"dtype": self.dtype, "scheme": self.scheme, "layers": dict(sorted(self.layers.items()))}


def attention_prefix(prefix: str) -> str:
    """``model.layers.0.self_attn.k_proj`` -> ``model.layers.0.self_attn`` (projection names stripped)."""
    return re.sub(r"\.(k_proj|v_proj|q_proj|qkv_proj|attn)$", "", prefix)


def module_excluded(prefix: str, patterns: Collection[str]) -> bool:
    """HF ``modules_to_not_convert`` / ``ignored_layers`` semantics: exact name or a dotted-prefix / substring match."""
    for p in patterns:
        if prefix == p or prefix.startswith(p + ".") or (p in prefix.split(".")) or prefix.endswith("." + p):
            return True
    return False


# ---- the formats -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FP8Config:
    """``quantization_config`` of ``quant_method: "fp8"`` (transformers ``FineGrainedFP8Config`` / AutoFP8)."""

    block: tuple[int, int] | None
    activation_scheme: str  # "dynamic" | "static"
    fmt: str  # "e4m3"
    exclude: tuple[str, ...]


class FP8(Format, name="fp8"):
    """HF fine-grained (block) FP8 and per-tensor FP8 (see module docstring)."""

    quant_methods = ("fp8",)
    partner_suffixes = frozenset({"weight_scale_inv", "weight_scale", "input_scale"})

    def __init__(self, cfg: FP8Config):
        self.cfg = cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> FP8:
        qc = quant_config(config) or {}
        fmt = str(qc.get("fmt", "e4m3")).lower()
        if fmt not in ("e4m3", "float8_e4m3fn"):
            raise UnsupportedFormatError(f"fp8 fmt {fmt!r}: only e4m3 checkpoints are supported")
        act = str(qc.get("activation_scheme", "dynamic")).lower()
        if act not in ("dynamic", "static"):
            raise ConfigError(f"activation_scheme {act!r} is neither 'dynamic' nor 'static'")
        bs = qc.get("weight_block_size")
        block = None
        if bs is not None:
            if not (isinstance(bs, list | tuple) and len(bs) == 2 and all(isinstance(b, int) and b > 0 for b in bs)):
                raise ConfigError(f"weight_block_size must be two positive ints, got {bs!r}")
            block = (int(bs[0]), int(bs[1]))
            if act != "dynamic":
                raise ConfigError("block-wise fp8 needs activation_scheme 'dynamic' (vLLM Fp8Config)")
            if not any(n.endswith(".weight_scale_inv") for n in tensor_names):
                raise ConfigError("weight_block_size is set but no tensor ends in .weight_scale_inv")
        exclude = tuple(qc.get("ignored_layers") or ()) + tuple(qc.get("modules_to_not_convert") or ())
        return cls(FP8Config(block=block, activation_scheme=act, fmt=fmt, exclude=exclude))

    def convert_module(self, group: TensorGroup):
        scale = "weight_scale_inv" if self.cfg.block else "weight_scale"
        if scale not in group:
            if "weight" in group and group.dtype("weight") in FP8_DTYPES:
                raise missing(group, scale, "fp8 weight without its scale")
            return self.passthrough(group)
        if module_excluded(group.prefix, self.cfg.exclude):
            raise group.error(scale, "module is in ignored_layers / modules_to_not_convert but carries fp8 scales")
        if self.cfg.block:
            # scale_fmt "ue8m0" checkpoints hold powers of two, as f32 or directly as float8_e8m0fnu
            q = fp8_qarray(
                group, scale=scale, strategy="block", block=self.cfg.block, scale_dtypes=(*FLOAT_SCALE_DTYPES, E8M0)
            )
            act = fp8_act(dynamic=True, granularity="group", group_size=self.cfg.block[1])
        else:
            q = fp8_qarray(group, scale=scale, strategy="tensor")
            if self.cfg.activation_scheme == "static":
                act = fp8_act(dynamic=False, granularity="tensor", scale=static_input_scale(group))
            else:
                act = fp8_act(dynamic=True, granularity="tensor")
        out: dict[str, Any] = self.passthrough(group, skip={"weight", scale, "input_scale"})
        out[group.full_name("weight")] = q
        out[group.full_name(INPUT_QUANT)] = act
        return out

    def describe(self):
        return {"format": self.name, "weight_block_size": list(self.cfg.block) if self.cfg.block else None}


class FBGEMMFP8(Format, name="fbgemm_fp8"):
    """FBGEMM FP8: per-row weight scales, dynamic per-token activations clamped at ``activation_scale_ub``."""

    quant_methods = ("fbgemm_fp8",)
    partner_suffixes = frozenset({"weight_scale", "input_scale_ub"})

    def __init__(self, ub: float | None, exclude: tuple[str, ...]):
        self.ub = ub
        self.exclude = exclude

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> FBGEMMFP8:
        qc = quant_config(config) or {}
        ub = qc.get("activation_scale_ub")
        if ub is not None and not (isinstance(ub, int | float) and ub > 0):
            raise ConfigError(f"activation_scale_ub must be a positive number, got {ub!r}")
        return cls(None if ub is None else float(ub), tuple(qc.get("modules_to_not_convert") or ()))

    def convert_module(self, group: TensorGroup):
        if "weight_scale" not in group:
            if "weight" in group and group.dtype("weight") in FP8_DTYPES:
                raise missing(group, "weight_scale", "fp8 weight without its scale")
            return self.passthrough(group)
        q = fp8_qarray(group, strategy="channel")
        out: dict[str, Any] = self.passthrough(group, skip={"weight", "weight_scale", "input_scale_ub"})
        out[group.full_name("weight")] = q
        out[group.full_name(INPUT_QUANT)] = ActQuant(fp8_e4m3, True, "token", amax_ub=self.ub).validate(
            group.full_name(INPUT_QUANT)
        )
        return out
