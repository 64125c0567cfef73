"""Rotary position embeddings of the Llama family (HF ``rope_type`` default / linear / llama3)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.errors import UnsupportedFormatError

__all__ = ["inv_frequencies", "rope_cos_sin", "apply_rope"]


@functools.lru_cache(maxsize=32)
def inv_frequencies(head_dim: int, rope_parameters: tuple) -> np.ndarray:
    """float32 [head_dim // 2] inverse frequencies, as transformers' ``ROPE_INIT_FUNCTIONS`` compute them.

    Args:
        head_dim: rotary dimension.
        rope_parameters: sorted (key, value) pairs of the HF ``rope_parameters`` dict.

    Raises:
        UnsupportedFormatError: a ``rope_type`` other than default, linear, llama3.
    """
    p = dict(rope_parameters)
    base = float(p.get("rope_theta", 10000.0))
    # _compute_default_rope_parameters: 1 / base ** (arange(0, dim, 2) / dim), in float32.
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (1.0 / (np.float32(base) ** exponent)).astype(np.float32)
    kind = p.get("rope_type", "default")
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(p["factor"])).astype(np.float32)
    if kind == "llama3":
        # transformers modeling_rope_utils._compute_llama3_parameters.
        factor, lo, hi = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
        old_ctx = float(p["original_max_position_embeddings"])
        low_freq_wavelen, high_freq_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = 2 * math.pi / inv
        inv_l = np.where(wavelen > low_freq_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(medium, smoothed, inv_l).astype(np.float32)
    raise UnsupportedFormatError(f"rope_type {kind!r} (jquant runs default, linear, llama3)", tensor="config.rope")


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim] for int positions [B, T] (angles in f32, then cast to ``dtype``)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x * cos + rotate_half(x) * sin`` for x [B, T, heads, head_dim] (HF's half-split rotation)."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]
