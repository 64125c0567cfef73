"""`RMSNorm` as Llama-family checkpoints define it (HF ``LlamaRMSNorm``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["RMSNorm"]


class RMSNorm(nnx.Module):
    """``weight * (x / sqrt(mean(x**2) + eps))``, normalized in float32.

    Same rounding as transformers' ``LlamaRMSNorm.forward``: normalize in f32, cast back to the
    input dtype, then multiply by the weight.

    Args:
        weight: [features] scale.
        eps: variance epsilon.
        dtype: dtype of the weight as used (default: kept as given).
    """

    def __init__(self, weight: jax.Array, *, eps: float = 1e-6, dtype=None):
        self.eps = eps
        self.weight = nnx.Param(jnp.asarray(weight, dtype=dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * h.astype(x.dtype)
