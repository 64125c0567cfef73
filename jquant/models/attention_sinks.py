"""Attention sinks (gpt-oss): a learned per-head logit that joins every query's softmax, then is dropped.

transformers ``modeling_gpt_oss.eager_attention_forward``::

    combined = cat([scores + mask, sinks[h]], -1);  combined -= combined.max(-1)
    probs = softmax(combined)[..., :-1]

so each query's weights sum to ``1 - p_sink`` instead of 1: the sink absorbs attention mass without
contributing a value. The sink logit is not scaled by ``head_dim**-0.5``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["softmax_with_sinks"]


def softmax_with_sinks(scores: jax.Array, sinks: jax.Array | None) -> jax.Array:
    """Softmax over the last axis with an extra per-head logit in the denominator.

    Args:
        scores: float32 [B, kv_heads, group, T, S] scaled, masked attention logits (query head
            ``h = kv * group + g``, the order of HF's ``repeat_kv``).
        sinks: [num_heads] sink logits, or None for the plain softmax.

    Returns:
        float32 [B, kv_heads, group, T, S] attention weights (rows sum to 1 - the sink's share).
    """
    if sinks is None:
        return jax.nn.softmax(scores, axis=-1)
    _, kv, g, _, _ = scores.shape
    sink = sinks.astype(jnp.float32).reshape(1, kv, g, 1, 1)
    m = jnp.maximum(jnp.max(scores, axis=-1, keepdims=True), sink)
    e = jnp.exp(scores - m)
    return e / (jnp.sum(e, axis=-1, keepdims=True) + jnp.exp(sink - m))
