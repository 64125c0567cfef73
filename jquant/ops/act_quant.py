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
    _MX_ELEM_MANTISSA,
    _MX_EMAX,
    ACT_QTYPES,
    ActQuant,
    register_pytree,
    scale_divisor,
    unit_view,
)

__all__ = ["fake_quantize"]

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
    """Nearest E2M1 value, ties to even (same thresholds as the numpy spec, compressed-tensors cast_to_fp4)."""
    a = jnp.abs(v)
    out = jnp.select(
        [a <= 0.25, a < 0.75, a <= 1.25, a < 1.75, a <= 2.5, a < 3.5, a <= 5.0],
        [jnp.float32(c) for c in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)],
        jnp.float32(6.0),
    )
    return jnp.copysign(out, v)


def _round_codes(q: jax.Array, act: ActQuant) -> jax.Array:
    name = act.qtype.name
    if name == "int8":
        return jnp.round(q)  # round half to even, like np.rint / torch.round
    if name == "fp8_e4m3":
        return q.astype(jnp.float8_e4m3fn).astype(jnp.float32)
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
        p = _pow2_round(amax)
        e = jnp.floor(jnp.log2(p)) - _MX_EMAX[act.qtype.name]
        e = jnp.clip(jnp.where(jnp.isfinite(e), e, -127), -127, 127)
        return jnp.exp2(e).astype(f32), None
    s = _div(amax, f32(scale_divisor(act.qtype.name, act.scale_rule)))
    if act.scale_dtype == "float8_e4m3fn":
        g = act.global_scale.astype(f32).reshape(())
        s8 = jnp.clip(g * s, -448, 448).astype(jnp.float8_e4m3fn).astype(f32)
        return _div(jnp.where(s8 == 0, f32(1) * g, s8), g), None
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
