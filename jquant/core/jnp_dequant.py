"""jnp twins of `jquant.core.packing.unpack_codes` and `jquant.core.dequant.dequantize`.

Imported only when JAX arrays are involved. Same float32 arithmetic in the same order as the numpy
reference, so results are bit-exact (tests/core/test_dequant.py feeds random bytes through both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core.qarray import QArray, register_pytree
from jquant.core.qtypes import QType

__all__ = ["unpack_codes", "decode_values", "expand_blocks", "dequantize_permuted", "dequantize"]

register_pytree()


def unpack_codes(packed: jax.Array, container_bits: int) -> jax.Array:
    """uint8 [..., K*c/8] -> uint8 codes [..., K] (little-endian within each byte)."""
    if container_bits == 8:
        return packed
    per = 8 // container_bits
    shifts = (jnp.arange(per, dtype=jnp.uint8) * container_bits).astype(jnp.uint8)
    out = (packed[..., None] >> shifts) & jnp.uint8((1 << container_bits) - 1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def decode_values(codes: jax.Array, qtype: QType) -> jax.Array:
    if qtype.codebook is not None:
        return jnp.asarray(qtype.codebook, dtype=jnp.float32)[codes.astype(jnp.int32)]
    if qtype.storage is not None or qtype.signed:
        return codes.astype(jnp.float32)
    return codes.astype(jnp.float32) - jnp.float32(qtype.bias)


def expand_blocks(a: jax.Array, block: tuple[int, int], shape: tuple[int, int]) -> jax.Array:
    bn, bk = block
    n, k = shape
    return jnp.repeat(jnp.repeat(a, bn, axis=0)[:n], bk, axis=1)[:, :k]


def dequantize_permuted(w: QArray) -> jax.Array:
    """float32 [N, K] in ``data``'s column order (act-order perm *not* undone): what kernels compute with."""
    q = w.qtype
    v = decode_values(unpack_codes(w.data, q.container_bits), q)
    s = w.scale.astype(jnp.float32)
    if w.scale2 is not None:
        s = s * w.scale2.astype(jnp.float32)
    s = expand_blocks(s, w.block, w.shape)
    if w.zero is None:
        return v * s
    z = expand_blocks(w.zero.astype(jnp.float32), w.block, w.shape)
    if jnp.issubdtype(w.zero.dtype, jnp.unsignedinteger):
        return (v - z) * s
    # XLA (CPU and GPU) contracts v*s - z into one FMA, which rounds once where numpy rounds twice.
    # Both agree whenever v*s is exact in f32, which float-zero sources guarantee (GGUF: fp16 d x
    # 6-bit sub-scale x <=6-bit code needs <= 23 mantissa bits); see QArray's docstring.
    return v * s - z


def dequantize(w: QArray, dtype=None) -> jax.Array:
    """jnp version of `jquant.dequantize`: [N, K] in HF column order."""
    out = dequantize_permuted(w)
    if w.perm is not None:
        out = jnp.zeros_like(out).at[:, w.perm].set(out)
    return out if dtype is None else out.astype(dtype)
