"""jnp twin of `jquant.core.activation.fake_quantize`: run-time activation quantize-dequantize.

W8A8 / FP8 / NVFP4 / MXFP4 checkpoints quantize each linear layer's input at run time. Until a
kernel fuses it, the reference path applies ``x -> dequantize(quantize(x))`` before `qmatmul`:
the same numbers a fused kernel computes (codes times scales), in float32, in the same order as
the numpy spec, so the two agree bit-exactly (tests/ops/test_act_quant.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.activation import (
    _E4M3_ZERO_SCALE,
    _MX_ELEM_MANTISSA,
    _MX_EMAX,
    ACT_QTYPES,
    ActQuant,
    register_pytree,
    scale_divisor,
    unit_view,
)

__all__ = ["fake_quantize", "native_act_reason", "quantize_act"]

register_pytree()


def _div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` as a true IEEE division, ``b`` broadcast to ``a``'s shape.

    XLA's algebraic simplifier rewrites a division by a broadcast value (scalar or per-row scale)
    into a multiplication by its rounded reciprocal, one ulp off the spec's division; a divisor
    of the full shape behind an optimization barrier is left alone.
    """
    shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b))
    b = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, jnp.float32), shape))
    return jnp.broadcast_to(a, shape) / b


def _round_to_fp4(v: jax.Array) -> jax.Array:
    """Nearest E2M1 value, ties to even, times ``sign(v)`` (the numpy spec, compressed-tensors cast_to_fp4)."""
    a = jnp.abs(v)
    out = jnp.select(
        [a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0, a > 5.0],
        [jnp.float32(c) for c in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)],
        jnp.float32(jnp.nan),
    )
    return out * ((v > 0).astype(jnp.float32) - (v < 0).astype(jnp.float32))  # -0.0 -> +0.0, NaN stays


def _round_to_e4m3(v: jax.Array) -> jax.Array:
    """Nearest float8 e4m3fn value of f32 ``v`` (|v| <= 448), as f32.

    The barrier is load-bearing: XLA GPU's ``SimplifyFPConversions`` pass (on by default, with
    ``xla_allow_excess_precision``) folds a chain of float converts ``f32 -> f8 -> f32`` into
    nothing, so without it the rounding silently vanishes on a GPU (and only there).
    """
    return jax.lax.optimization_barrier(v.astype(jnp.float8_e4m3fn)).astype(jnp.float32)


def _round_codes(q: jax.Array, act: ActQuant) -> jax.Array:
    name = act.qtype.name
    if name == "int8":
        return jnp.round(q)  # round half to even, like np.rint / torch.round
    if name == "fp8_e4m3":
        return _round_to_e4m3(q)
    return _round_to_fp4(q)


def _pow2_round(amax: jax.Array) -> jax.Array:
    bits = jax.lax.bitcast_convert_type(amax.astype(jnp.float32), jnp.uint32)
    add = jnp.uint32(1 << (23 - _MX_ELEM_MANTISSA - 1))
    mask = jnp.uint32(((1 << 9) - 1) << 23)
    return jax.lax.bitcast_convert_type((bits + add) & mask, jnp.float32)


def _dynamic_scale(xu: jax.Array, act: ActQuant):
    f32 = jnp.float32
    if not act.symmetric:
        lo = jnp.minimum(xu.min(-1, keepdims=True), 0)
        hi = jnp.maximum(xu.max(-1, keepdims=True), 0)
        s = _div(hi - lo, f32(255.0))
        s = jnp.where(s == 0, f32(1), s)
        return s, jnp.round(f32(-128.0) - _div(lo, s))
    amax = jnp.abs(xu).max(-1, keepdims=True)
    if act.amax_ub is not None:
        amax = jnp.minimum(amax, f32(act.amax_ub))
    if act.scale_dtype == "float8_e8m0fnu":
        # floor(log2(p)) of the power of two p read from its exponent bits, and 2**e built from
        # bits: XLA's log2 / exp2 are approximations (exp2 on CPU is off for most integers |e| >= 13).
        # p = 0 (biased exponent 0) is the spec's -inf -> -127; p = inf (|x| >= 1.75 * 2**127) goes
        # to -127 as in the spec. e = -127 (2**-127, subnormal; the spec's all-zero units) becomes
        # 2**-126 here: XLA flushes subnormals, and 0 / 0 would be NaN. Same output for all-zero
        # units; differs only for units whose amax is below ~2**-124 (fp4) / 2**-118 (fp8).
        bexp = (jax.lax.bitcast_convert_type(_pow2_round(amax), jnp.uint32) >> 23).astype(jnp.int32) & 0xFF
        e = jnp.where((bexp == 0) | (bexp == 255), -127, bexp - 127 - _MX_EMAX[act.qtype.name])
        e = jnp.clip(e, -126, 127)
        return jax.lax.bitcast_convert_type(((e + 127) << 23).astype(jnp.uint32), f32), None
    s = _div(amax, f32(scale_divisor(act.qtype.name, act.scale_rule)))
    if act.scale_dtype == "float8_e4m3fn":
        g = act.global_scale.astype(f32).reshape(())
        s8 = _round_to_e4m3(jnp.clip(g * s, -448, 448))
        return _div(jnp.where(s8 == 0, _E4M3_ZERO_SCALE, s8), g), None  # CT _get_dtype_eps: 0.125
    return jnp.where(s == 0, f32(1), s), None


def fake_quantize(x: jax.Array, act: ActQuant) -> jax.Array:
    """``dequantize(quantize(x))`` per ``act``; float32 math, result in ``x.dtype``.

    Args:
        x: activations [..., K].
        act: the `ActQuant` recipe (arrays may be JAX arrays).
    """
    xf = x.astype(jnp.float32)
    xu = unit_view(xf, act)
    if act.dynamic:
        s, z = _dynamic_scale(xu, act)
    else:
        s = act.scale.astype(jnp.float32).reshape(1, 1, 1)
        z = None if act.zero is None else act.zero.astype(jnp.float32).reshape(1, 1, 1)
    q = _div(xu, s)
    if z is not None:
        q = q + z
    lo = -128.0 if act.qtype.name == "int8" else -ACT_QTYPES[act.qtype.name]
    q = _round_codes(jnp.clip(q, jnp.float32(lo), jnp.float32(ACT_QTYPES[act.qtype.name])), act)
    out = (q - z) * s if z is not None else q * s
    return out.reshape(x.shape).astype(x.dtype)


# ---- real (not fake) quantization for the fused W8A8 kernels ------------------------------------

# Activation code types the fused W8A8 paths quantize to, and the dtype of their codes.
_NATIVE_CODE_DTYPES = {"int8": jnp.int8, "fp8_e4m3": jnp.float8_e4m3fn}


def native_act_reason(act: ActQuant) -> str:
    """Empty string when the fused W8A8 kernels run ``act`` (`quantize_act` + an 8-bit dot), else why not.

    Runs: int8 or fp8 e4m3 codes, symmetric, float32 scales (``scale_dtype`` None), one scale per
    tensor / token / group of K columns, dynamic or static per-tensor. ``amax_ub`` and either
    ``scale_rule`` only change the scale's value, so they run too.
    """
    if not isinstance(act, ActQuant):
        return f"not an ActQuant ({type(act).__name__})"
    name = act.qtype.name
    if name not in _NATIVE_CODE_DTYPES:
        return f"activation qtype {name} (the W8A8 kernels quantize to int8 / fp8_e4m3)"
    if not act.symmetric:
        return "asymmetric activation quantization (a zero point needs a correction term in the epilogue)"
    if act.scale_dtype is not None:
        return f"activation scale_dtype {act.scale_dtype} (two-level / MX scales are fp4 recipes)"
    if act.granularity not in ("tensor", "token", "group"):
        return f"activation granularity {act.granularity!r}"
    if not act.dynamic and act.granularity != "tensor":
        return f"static per-{act.granularity} activation scales"
    return ""


def quantize_act(x: jax.Array, act: ActQuant) -> tuple[jax.Array, jax.Array]:
    """Quantizes activations to 8-bit codes and float32 scales, bit-exact with `fake_quantize`.

    ``codes.astype(f32) * scales`` (each scale broadcast over its unit of K columns), cast to
    ``x.dtype``, equals ``fake_quantize(x, act)`` exactly: the same f32 steps (`_dynamic_scale`,
    `_div`, the clip, `_round_codes`) on the same `unit_view`.

    Args:
        x: float activations [..., K] (bf16 / f16 / f32).
        act: a recipe with ``native_act_reason(act) == ""``.

    Returns:
        ``(codes, scales)``: codes [..., K], int8 or float8_e4m3fn; scales float32 [..., n_units]
        with n_units = 1 for per-token and per-tensor recipes (a per-tensor or static scale is
        broadcast to every row) and K / group_size for per-group ones.

    Raises:
        ValueError: ``act`` is not a native recipe (see `native_act_reason`), or K is not a
            multiple of the group size.
    """
    why = native_act_reason(act)
    if why:
        raise ValueError(f"quantize_act: {why}")
    name = act.qtype.name
    lead = x.shape[:-1]
    xu = unit_view(x.astype(jnp.float32), act)
    if act.dynamic:
        s, _ = _dynamic_scale(xu, act)
    else:
        s = act.scale.astype(jnp.float32).reshape(1, 1, 1)
    lo = jnp.float32(-128.0 if name == "int8" else -ACT_QTYPES[name])  # same clip as `fake_quantize`
    q = jnp.clip(_div(xu, s), lo, jnp.float32(ACT_QTYPES[name]))
    # One rounding to the code dtype: the same value `_round_codes` gives `fake_quantize` (int8:
    # half to even, exact in int8 after the clip; fp8: the f32 -> e4m3fn conversion).
    codes = (jnp.round(q) if name == "int8" else q).astype(_NATIVE_CODE_DTYPES[name]).reshape(x.shape)
    if act.granularity == "group":
        scales = s.reshape(*lead, -1)  # [..., units, 1] -> [..., units]
    else:  # token: [..., 1, 1]; tensor (dynamic or static): [1, 1, 1], one value for every row
        scales = jnp.broadcast_to(s.reshape(lead if act.granularity == "token" else ()), lead)[..., None]
    return codes, scales
