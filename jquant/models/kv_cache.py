"""`KVCache`: per-layer key/value buffers of a fixed length, filled in place during decoding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["KVCache"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for positions ``[0, length)``; slots past ``length`` are unused.

    Attributes:
        k: per layer, [B, max_len, num_kv_heads, head_dim] in the model dtype.
        v: same as ``k``.
        length: int32 scalar, number of positions written (the next token's position).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array

    @classmethod
    def create(cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype) -> KVCache:
        zeros = lambda: jnp.zeros((batch, max_len, num_kv_heads, head_dim), dtype)  # noqa: E731
        return cls(
            k=tuple(zeros() for _ in range(num_layers)),
            v=tuple(zeros() for _ in range(num_layers)),
            length=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(int(a.size) * a.dtype.itemsize for a in self.k + self.v)
