"""`QuantEmbed`: a token embedding whose table may be a `QArray`, also usable as the tied LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jquant.core.errors import ConfigError
from jquant.core.qarray import QArray
from jquant.nn.linear import QParam, weight_shape
from jquant.ops import qmatmul, qtake

__all__ = ["QuantEmbed"]


class QuantEmbed(nnx.Module):
    """``nnx.Embed``'s twin over a [num_embeddings, features] table that may be quantized.

    Lookups gather the rows' codes and scales and dequantize only those rows (`jquant.ops.qtake`);
    ``attend`` is the tied LM head, ``x @ table.T`` through `qmatmul`.

    Args:
        num_embeddings: vocabulary size (rows).
        features: embedding width (columns).
        dtype: result dtype of lookups (default float32).
        rngs: initializes a dense normal(0.02) table when ``weight`` is None.
        weight: a `QArray` of shape (num_embeddings, features) or a dense array of that shape.
        implementation: force a `qmatmul` backend for ``attend``.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype=None,
        rngs: nnx.Rngs | None = None,
        weight: QArray | jax.Array | None = None,
        implementation: str | None = None,
    ):
        self.num_embeddings = num_embeddings
        self.features = features
        self.dtype = dtype or jnp.float32
        self.implementation = implementation
        if weight is None:
            if rngs is None:
                raise ConfigError("QuantEmbed needs either `weight` or `rngs` to initialize one")
            weight = 0.02 * jax.random.normal(rngs.params(), (num_embeddings, features), self.dtype)
        if weight_shape(weight) != (num_embeddings, features):
            raise ConfigError(f"embedding shape {weight_shape(weight)} != ({num_embeddings}, {features})")
        self.embedding = QParam(weight)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """int [...] -> [..., features] in ``dtype``."""
        return qtake(self.embedding.get_value(), ids, dtype=self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """[..., features] -> [..., num_embeddings]: logits of a tied LM head."""
        return qmatmul(x.astype(self.dtype), self.embedding.get_value(), implementation=self.implementation)
