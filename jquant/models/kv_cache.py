"""`KVCache`: per-layer key/value buffers of a fixed length, filled in place during decoding.

On a device mesh (`jquant.parallel`) the buffers are created already split by KV heads
(``sharding`` from `jquant.parallel.kv_cache_sharding`): each device keeps the heads its k/v
projection shards compute, so attention reads and the in-place updates stay local.

With a `jquant.models.kv_quant.KVQuant` (``kv_cache_dtype`` fp8 / int8) the buffers hold codes
and each layer has f32 per-KV-head scales: half the bytes of a bf16 cache, a quarter of f32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jquant.models.kv_quant import KVQuant

__all__ = ["KVCache", "cache_bytes"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for positions ``[0, length)``; slots past ``length`` are unused.

    Attributes:
        k: per layer, [B, max_len, num_kv_heads, head_dim] in the model dtype, or codes
            (float8_e4m3fn / float8_e5m2 / int8) for a quantized cache.
        v: same as ``k``.
        length: int32 scalar, number of positions written (the next token's position); or int32
            [B], one per row, for a right-padded batch of prompts of different lengths
            (`jquant.models.generate`).
        k_scale: quantized cache only: per layer, float32 [num_kv_heads] multipliers
            (``k ~= code * k_scale``); 0 until the first prefill computes it. None otherwise.
        v_scale: same as ``k_scale``, for ``v``.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array
    k_scale: tuple[jax.Array, ...] | None = None
    v_scale: tuple[jax.Array, ...] | None = None

    @classmethod
    def create(
        cls,
        num_layers: int,
        batch: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype,
        *,
        sharding=None,
        quant: KVQuant | None = None,
    ) -> KVCache:
        """Zeroed buffers [B, max_len, num_kv_heads, head_dim] per layer, on ``sharding`` (a
        ``jax.sharding.Sharding``; None: the default device); in ``quant``'s code dtype when given
        (``dtype`` is then unused), with its initial per-head scales."""
        shape = (batch, max_len, num_kv_heads, head_dim)
        if quant is not None:
            dtype = quant.code_dtype
        if sharding is None:
            zeros = lambda: jnp.zeros(shape, dtype)  # noqa: E731
        else:  # each device allocates only its heads (no whole buffer on one device first)
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
        return cls(
            k=tuple(zeros() for _ in range(num_layers)),
            v=tuple(zeros() for _ in range(num_layers)),
            length=jnp.zeros((), jnp.int32),
            **(
                {}
                if quant is None
                else dict(zip(("k_scale", "v_scale"), quant.initial_scales(num_layers, num_kv_heads)))
            ),
        )

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    def layer(self, i: int) -> tuple[jax.Array, ...]:
        """Layer ``i``'s buffers as `jquant.models.kv_quant.write_layer` takes them: ``(k, v)`` or
        ``(k_codes, v_codes, k_scale, v_scale)``."""
        if self.quantized:
            return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]
        return self.k[i], self.v[i]

    def stacked(self) -> tuple[jax.Array, ...]:
        """Every layer's buffers stacked on a leading layer axis (the ``lax.scan`` input)."""
        parts = (self.k, self.v) + ((self.k_scale, self.v_scale) if self.quantized else ())
        return tuple(jnp.stack(p) for p in parts)

    def with_layers(self, layers, length: jax.Array) -> KVCache:
        """A cache of per-layer tuples (as `layer` gives them; or the stacked arrays of `stacked`)."""
        parts = [tuple(p) for p in zip(*layers)] if isinstance(layers, list) else [tuple(p) for p in layers]
        names = ("k", "v", "k_scale", "v_scale")[: len(parts)]
        return dataclasses.replace(self, length=length, **dict(zip(names, parts)))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers and scales."""
        return sum(int(a.size) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(self) if a.ndim > 0)


def cache_bytes(model, batch: int, max_len: int) -> int:
    """Bytes ``model.init_cache(batch, max_len)`` would take (shapes only: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: model.init_cache(batch, max_len))
    return sum(int(a.size) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(shapes) if len(a.shape) > 0)
