"""`ActQuant`: how a quantized linear layer quantizes its *input activations* (format-neutral).

W8A8 / FP8 / NVFP4 / MXFP4 checkpoints quantize the activations too, at run time. The checkpoint
fixes the recipe (type, granularity, static scales); the serving engine applies it per call.
Converters put one `ActQuant` beside each such weight, under ``"<module>.input_quant"`` in
`Checkpoint.weights` (e.g. ``model.layers.0.self_attn.q_proj.input_quant``); canonical save/load
round-trips it. Kernels read it; `fake_quantize` is the numpy spec they are tested against.

Semantics of `quantize_activations` (x: float [..., K], computed in float32):

* scale ``s`` per tensor / per token (row) / per group of ``group_size`` along K:
  static: ``s = scale`` (a checkpoint tensor); dynamic: ``s = amax / qmax`` over the unit
  (``amax = max|x|``, clamped at ``amax_ub`` when set), where ``qmax`` is 127 (int8), 448 (fp8
  e4m3), 6 (fp4 e2m1). This is vLLM's run-time rule (``scaled_int8_quant``, ``scaled_fp8_quant``:
  ``absmax / 127`` resp. ``/ 448``), ``scale_rule="qmax"`` (the default).
  ``scale_rule="half_range"`` is compressed-tensors' own QDQ forward (``forward.forward_quantize``
  -> ``utils/helpers.py`` ``compute_dynamic_scales_and_zp`` -> ``calculate_qparams``:
  ``amax / (bit_range / 2)`` with ``bit_range = qmax - qmin``), i.e. ``amax / 127.5`` for int8; for
  fp8 / fp4 the range is symmetric and both rules give the same scale, bit for bit. The
  compressed-tensors loader sets it, so its checkpoints reproduce the producer (llm-compressor).
* two-level scales: with ``scale_dtype="float8_e4m3fn"`` (NVFP4) the group scale is rounded to
  e4m3 after multiplying by ``global_scale`` and used as ``s = e4m3(global_scale * amax / 6) /
  global_scale`` (compressed-tensors ``calculate_qparams`` + ``_quantize``: the global scale is a
  *divisor*); with ``scale_dtype="float8_e8m0fnu"`` (MX) ``s = 2**(floor(log2(p)) - emax)``
  where ``p`` is amax rounded to a power of two at the element's mantissa width and ``emax`` is
  2 (fp4) or 8 (fp8) (compressed-tensors ``generate_mx_scales``, OCP MX spec).
* ``q = clamp(x / s + z, qmin, qmax)`` then rounded: int8 round-half-even, fp8 cast (RNE), fp4
  nearest E2M1 value, ties to even (compressed-tensors ``cast_to_fp4``).
* ``fake_quantize(x) = (q - z) * s``. A unit whose amax is 0 gets codes 0 and ``s = 1``, or
  compressed-tensors' own placeholder for the two-level recipes: ``0.125 / global_scale`` (NVFP4)
  and ``2**-127`` (MX, the e8m0 code 0).
* fp4 signs follow ``cast_to_fp4`` (``magnitude * sign(v)``): -0.0 -> +0.0, NaN stays NaN.

This module imports numpy and ml_dtypes only; `register_pytree` makes `ActQuant` a JAX pytree
(arrays are leaves; everything else is static), lazily, as `jquant.core.qarray` does.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

import ml_dtypes
import numpy as np

from jquant.core.errors import FormatError
from jquant.core.qtypes import QType, fp4_e2m1, fp8_e4m3, get_qtype, int8

__all__ = [
    "ActQuant",
    "quantize_activations",
    "fake_quantize",
    "int8_act",
    "fp8_act",
    "fp4_act",
    "register_pytree",
    "ACT_QTYPES",
    "SCALE_RULES",
    "scale_divisor",
]

Granularity = Literal["tensor", "token", "group"]

# Activation code types and their largest magnitude (the ``qmax`` of the dynamic-scale rule).
ACT_QTYPES: dict[str, float] = {"int8": 127.0, "fp8_e4m3": 448.0, "fp4_e2m1": 6.0}
_SCALE_DTYPES = (None, "float8_e4m3fn", "float8_e8m0fnu")
# MX: exponent of the element type's largest normal (compressed-tensors mxfp_utils._MX_ELEM_OFFSET)
# and its mantissa width (round_to_power_2's elem_mantissa: E2M1 for fp4 and, as in CT, for fp8).
_MX_EMAX = {"fp4_e2m1": 2, "fp8_e4m3": 8}
_MX_ELEM_MANTISSA = 1
# What a zero NVFP4 group scale becomes (compressed-tensors utils/helpers.py _get_dtype_eps(float8_e4m3fn)).
_E4M3_ZERO_SCALE = np.float32(0.125)
# Divisor of the symmetric dynamic scale ``amax / divisor`` per `ActQuant.scale_rule`.
SCALE_RULES = ("qmax", "half_range")
_ACT_QMIN: dict[str, float] = {"int8": -128.0, "fp8_e4m3": -448.0, "fp4_e2m1": -6.0}


def scale_divisor(qtype_name: str, scale_rule: str) -> float:
    """The ``d`` of the symmetric dynamic scale ``amax / d``: ``qmax`` or ``(qmax - qmin) / 2``.

    ``"half_range"`` follows compressed-tensors ``calculate_qparams`` (``bit_range / 2``, 127.5 for
    int8); ``"qmax"`` is vLLM's ``scaled_int8_quant`` / ``scaled_fp8_quant`` (127 for int8). The two
    differ only for int8, whose range is asymmetric.
    """
    qmax = ACT_QTYPES[qtype_name]
    return qmax if scale_rule == "qmax" else (qmax - _ACT_QMIN[qtype_name]) / 2.0


@dataclasses.dataclass(frozen=True, eq=False)
class ActQuant:
    """Input-activation quantization of one linear layer.

    Attributes:
        qtype: code type: `jquant.core.qtypes.int8`, ``fp8_e4m3`` or ``fp4_e2m1``.
        dynamic: scales computed from each input at run time (True) or fixed in the checkpoint.
        granularity: one scale per ``"tensor"``, per ``"token"`` (row of x) or per ``"group"``
            of ``group_size`` consecutive input channels.
        group_size: channels per scale for ``granularity="group"``, else None.
        symmetric: no zero point. Asymmetric is int8 only (static ``zero`` or dynamic per token).
        scale: static only: float32 array of shape (1,), the per-tensor scale (a multiplier:
            ``x ~= (q - z) * scale``). None when dynamic.
        zero: static asymmetric only: int32 array (1,), the zero point in code units. Else None.
        scale_dtype: dynamic scales are rounded to this dtype: None (float32),
            ``"float8_e4m3fn"`` (NVFP4) or ``"float8_e8m0fnu"`` (MX power-of-two scales).
        global_scale: NVFP4 only: float32 (1,), the static per-tensor *divisor* of the e4m3
            group scales (compressed-tensors ``input_global_scale``; ModelOpt's ``input_scale``
            is its reciprocal). Else None.
        amax_ub: optional upper bound on dynamic amax (FBGEMM's ``activation_scale_ub``).
        scale_rule: divisor of the symmetric dynamic scale: ``"qmax"`` (vLLM, ``amax / 127`` for
            int8) or ``"half_range"`` (compressed-tensors' QDQ forward, ``amax / 127.5`` for int8);
            see `scale_divisor`. Same numbers for fp8 / fp4 and for static or asymmetric recipes.
    """

    qtype: QType
    dynamic: bool
    granularity: Granularity = "token"
    group_size: int | None = None
    symmetric: bool = True
    scale: Any = None
    zero: Any = None
    scale_dtype: str | None = None
    global_scale: Any = None
    amax_ub: float | None = None
    scale_rule: str = "qmax"

    def validate(self, name: str | None = None) -> ActQuant:
        """Checks the fields against each other; returns self.

        Raises:
            FormatError: naming ``name`` and the inconsistency.
        """

        def fail(msg):
            raise FormatError(msg, tensor=name)

        if not isinstance(self.qtype, QType) or self.qtype.name not in ACT_QTYPES:
            fail(f"activation qtype must be one of {sorted(ACT_QTYPES)}, got {self.qtype!r}")
        if self.granularity not in ("tensor", "token", "group"):
            fail(f"unknown activation granularity {self.granularity!r}")
        if (self.granularity == "group") != (self.group_size is not None):
            fail(f"group_size={self.group_size} does not go with granularity {self.granularity!r}")
        if self.group_size is not None and self.group_size <= 0:
            fail(f"bad activation group_size {self.group_size}")
        if self.scale_dtype not in _SCALE_DTYPES:
            fail(f"unknown activation scale_dtype {self.scale_dtype!r}")
        if self.scale_rule not in SCALE_RULES:
            fail(f"unknown activation scale_rule {self.scale_rule!r} (one of {SCALE_RULES})")
        if not self.symmetric and self.qtype.name != "int8":
            fail("asymmetric activation quantization exists only for int8")
        if self.dynamic:
            if self.scale is not None or self.zero is not None:
                fail("dynamic activation quantization has no static scale / zero point")
        else:
            if self.granularity != "tensor":
                fail(f"static activation scales are per tensor, not per {self.granularity}")
            if self.scale is None:
                fail("static activation quantization needs a scale")
            _check_array(self.scale, np.float32, "scale", fail)
            if not np.isfinite(np.asarray(self.scale)).all() or float(np.asarray(self.scale)[0]) <= 0:
                fail(f"static activation scale {np.asarray(self.scale).ravel()[0]} is not a positive finite number")
            if self.symmetric != (self.zero is None):
                fail("a static zero point goes with symmetric=False and only with it")
            if self.zero is not None:
                _check_array(self.zero, np.int32, "zero", fail)
        if (self.scale_dtype == "float8_e4m3fn") != (self.global_scale is not None):
            fail("an e4m3 (NVFP4) activation scale needs a global_scale, and only it")
        if self.global_scale is not None:
            _check_array(self.global_scale, np.float32, "global_scale", fail)
            if not np.isfinite(np.asarray(self.global_scale)).all() or float(np.asarray(self.global_scale)[0]) <= 0:
                fail(f"activation global_scale {np.asarray(self.global_scale).ravel()[0]} is not positive finite")
        if self.scale_dtype is not None and not self.dynamic:
            fail(f"scale_dtype {self.scale_dtype} is for dynamic (run-time) scales")
        if self.scale_dtype == "float8_e8m0fnu" and self.qtype.name not in _MX_EMAX:
            fail(f"MX scales are defined for fp4 / fp8 activations, not {self.qtype.name}")
        return self

    def arrays(self) -> dict[str, Any]:
        """The non-None array fields by name (``scale``, ``zero``, ``global_scale``)."""
        return {f: getattr(self, f) for f in ("scale", "zero", "global_scale") if getattr(self, f) is not None}

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * np.dtype(a.dtype).itemsize for a in self.arrays().values())

    def static_json(self) -> dict:
        """Every non-array field, JSON-able (arrays travel separately in canonical files)."""
        return {
            "qtype": self.qtype.name,
            "dynamic": self.dynamic,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "scale_dtype": self.scale_dtype,
            "amax_ub": self.amax_ub,
            "scale_rule": self.scale_rule,
        }

    @classmethod
    def from_json(cls, d: dict, arrays: dict[str, Any]) -> ActQuant:
        d = dict(d)
        d["qtype"] = get_qtype(d["qtype"])
        return cls(**d, **arrays)

    def __repr__(self) -> str:
        how = "dynamic" if self.dynamic else "static"
        g = f"{self.group_size}" if self.group_size else ""
        sym = "" if self.symmetric else ", asym"
        sd = f", scale={self.scale_dtype}" if self.scale_dtype else ""
        return f"ActQuant({self.qtype.name}, {how} per-{self.granularity}{g}{sym}{sd})"


def _check_array(a, dtype, field, fail):
    if tuple(np.shape(a)) != (1,) or np.dtype(a.dtype) != np.dtype(dtype):
        fail(f"activation {field} must be {np.dtype(dtype).name} of shape (1,), got {a.dtype} {tuple(np.shape(a))}")


def _round_to_fp4(v: np.ndarray) -> np.ndarray:
    """Nearest E2M1 value, ties to the even mantissa (compressed-tensors fp4_utils.cast_to_fp4 thresholds).

    The sign is applied as cast_to_fp4 does, ``magnitude * torch.sign(v)``: -0.0 gives +0.0, a
    negative value that rounds to 0 gives -0.0, and NaN stays NaN (torch.sign(nan) is 0, nan * 0 is
    nan); not ``copysign``, which kept -0.0 and turned NaN into +-6.
    """
    a = np.abs(v)
    out = np.select(
        [a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0, a > 5.0],
        [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0],
        np.nan,
    ).astype(np.float32)
    sign = (v > 0).astype(np.float32) - (v < 0).astype(np.float32)
    return (out * sign).astype(np.float32)


def _round_codes(q: np.ndarray, qtype: QType) -> np.ndarray:
    if qtype.name == "int8":
        return np.rint(q).astype(np.float32)  # np.rint: round half to even, as torch.round
    if qtype.name == "fp8_e4m3":
        return q.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return _round_to_fp4(q)


def _pow2_round(amax: np.ndarray) -> np.ndarray:
    """compressed-tensors mxfp_utils.round_to_power_2 on float32: add half an element-mantissa ulp, keep the exponent."""
    bits = amax.astype(np.float32).view(np.uint32).astype(np.int64)
    add = 1 << (23 - _MX_ELEM_MANTISSA - 1)
    mask = ((1 << 9) - 1) << 23  # sign + exponent
    return ((bits + add) & mask).astype(np.uint32).view(np.float32)


def unit_view(x, act: ActQuant):
    """x reshaped so that the last axis is one scale unit: [..., units, G] / [..., 1, K] / [1, size].

    Shape logic only: works on numpy and jnp arrays alike (the jnp twin in `jquant.ops.act_quant`
    uses it too).
    """
    if act.granularity == "group":
        g = act.group_size
        if x.shape[-1] % g:
            raise ValueError(f"activation width {x.shape[-1]} is not a multiple of group_size {g}")
        return x.reshape(*x.shape[:-1], x.shape[-1] // g, g)
    if act.granularity == "token":
        return x.reshape(*x.shape[:-1], 1, x.shape[-1])
    return x.reshape(1, 1, -1)


def _dynamic_scale(xu: np.ndarray, act: ActQuant) -> tuple[np.ndarray, np.ndarray | None]:
    if not act.symmetric:  # int8 dynamic asymmetric (vLLM scaled_int8_quant with azp): range over [min, max]
        lo = np.minimum(xu.min(-1, keepdims=True), 0).astype(np.float32)
        hi = np.maximum(xu.max(-1, keepdims=True), 0).astype(np.float32)
        s = (hi - lo) / np.float32(255.0)
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        z = np.rint(np.float32(-128.0) - lo / s).astype(np.float32)
        return s, z
    amax = np.abs(xu).max(-1, keepdims=True).astype(np.float32)
    if act.amax_ub is not None:
        amax = np.minimum(amax, np.float32(act.amax_ub))
    if act.scale_dtype == "float8_e8m0fnu":
        p = _pow2_round(amax)
        with np.errstate(divide="ignore"):
            e = np.floor(np.log2(p)) - _MX_EMAX[act.qtype.name]
        # CT stores 127 + e as uint8 (round_to_quantized_type_dtype clamps to [0, 255]), so an
        # all-zero unit (log2(0) = -inf) gets 2**-127 (maybe_convert_from_mx_exp), its codes 0.
        e = np.clip(np.where(np.isfinite(e), e, -127), -127, 127)
        return np.exp2(e).astype(np.float32), None
    s = (amax / np.float32(scale_divisor(act.qtype.name, act.scale_rule))).astype(np.float32)
    if act.scale_dtype == "float8_e4m3fn":
        g = np.float32(np.asarray(act.global_scale, np.float32)[0])
        s8 = np.clip(g * s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        # calculate_qparams step 5 replaces a zero e4m3 scale by _get_dtype_eps(float8_e4m3fn) =
        # 0.125 before _quantize_dequantize divides it by the global scale (its codes are 0 anyway).
        s = np.where(s8 == 0, _E4M3_ZERO_SCALE, s8) / g
        return s.astype(np.float32), None
    return np.where(s == 0, np.float32(1), s).astype(np.float32), None


def quantize_activations(x: np.ndarray, act: ActQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Quantizes activations per `ActQuant` (numpy reference; see the module docstring).

    Args:
        x: float array [..., K].
        act: the recipe.

    Returns:
        ``(q, s, z)``: q float32 [..., K] holding the code *values* (int8 integers, fp8 / fp4
        values); s float32 scales broadcastable to ``q`` after the unit reshape, returned as
        [..., units, 1] (units = 1 for tensor / token); z the zero point like s, or None.
    """
    xf = np.asarray(x, dtype=np.float32)
    xu = unit_view(xf, act)
    if act.dynamic:
        s, z = _dynamic_scale(xu, act)
    else:
        s = np.asarray(act.scale, np.float32).reshape(1, 1, 1)  # static scales are per tensor (validate)
        z = None if act.zero is None else np.asarray(act.zero).astype(np.float32).reshape(s.shape)
    q = xu / s
    if z is not None:
        q = q + z
    lo = -128.0 if act.qtype.name == "int8" else -ACT_QTYPES[act.qtype.name]
    q = np.clip(q, np.float32(lo), np.float32(ACT_QTYPES[act.qtype.name]))
    q = _round_codes(q.astype(np.float32), act.qtype)
    return q.reshape(xf.shape), s, z


def fake_quantize(x: np.ndarray, act: ActQuant) -> np.ndarray:
    """Quantize-dequantize activations exactly as the serving engine would: float32 [..., K]."""
    xf = np.asarray(x, dtype=np.float32)
    q, s, z = quantize_activations(xf, act)
    qu = unit_view(q, act)
    out = (qu - z) * s if z is not None else qu * s
    return out.astype(np.float32).reshape(xf.shape)


def int8_act(*, dynamic: bool, granularity: Granularity = "token", scale=None, zero=None, symmetric=True) -> ActQuant:
    """Shorthand for the common int8 recipes (W8A8)."""
    return ActQuant(int8, dynamic, granularity, None, symmetric, scale, zero).validate()


def fp8_act(*, dynamic: bool, granularity: Granularity = "token", group_size=None, scale=None, amax_ub=None):
    """Shorthand for fp8 e4m3 recipes (static per-tensor, dynamic per-token or per-group)."""
    return ActQuant(fp8_e4m3, dynamic, granularity, group_size, True, scale, amax_ub=amax_ub).validate()


def fp4_act(*, group_size: int, scale_dtype: str, global_scale=None) -> ActQuant:
    """Dynamic fp4 e2m1 per-group recipes: NVFP4 (e4m3 scales + global divisor) or MXFP4 (e8m0 scales)."""
    return ActQuant(
        fp4_e2m1, True, "group", group_size, True, scale_dtype=scale_dtype, global_scale=global_scale
    ).validate()


def register_pytree() -> None:
    """Registers `ActQuant` as a JAX pytree (idempotent): arrays are leaves, the rest is static."""
    import jax

    if getattr(register_pytree, "_done", False):
        return
    jax.tree_util.register_dataclass(
        ActQuant,
        data_fields=["scale", "zero", "global_scale"],
        meta_fields=[
            "qtype",
            "dynamic",
            "granularity",
            "group_size",
            "symmetric",
            "scale_dtype",
            "amax_ub",
            "scale_rule",
        ],
    )
    register_pytree._done = True


if sys.modules.get("jax") is not None:
    register_pytree()
