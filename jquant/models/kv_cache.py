"""`KVCache`: per-layer key/value buffers of a fixed length, filled in place during decoding.

On a device mesh (`jquant.parallel`) the buffers are created already split by KV heads
(``sharding`` from `jquant.parallel.kv_cache_sharding`): each device keeps the heads its k/v
projection shards compute, so attention reads and the in-place updates stay local.
"""

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
    def create(
        cls, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype, *, sharding=None
    ) -> KVCache:
        """Zeroed buffers [B, max_len, num_kv_heads, head_dim] per layer, on ``sharding`` (a
        ``jax.sharding.Sharding``; None: the default device)."""
        shape = (batch, max_len, num_kv_heads, head_dim)
        if sharding is None:
            zeros = lambda: jnp.zeros(shape, dtype)  # noqa: E731
        else:  # each device allocates only its heads (no whole buffer on one device first)
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
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
