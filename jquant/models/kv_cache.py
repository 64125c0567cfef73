"""`KVCache`: per-layer key/value buffers of a fixed length, filled in place during decoding.

A scanned model (``LlamaForCausalLM.stacked_layers``) asks for a **stacked** cache: one
[L, B, max_len, num_kv_heads, head_dim] array for k and one for v (scales [L, num_kv_heads]),
carried through the layer scan, where each layer writes only its new slots in place
(`jquant.models.kv_quant.write_layer` with ``layer=``). The per-layer form (tuples of L arrays)
would need a ``jnp.stack`` into the scan and an unstack out of it on every decode step (two
copies of the whole cache per token: ~1 ms of a 12 ms SmolLM2-135M step on 2 CPU threads).
Either form indexes the same way: ``cache.k[i]`` is layer i's [B, max_len, heads, head_dim].

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
from jax.sharding import NamedSharding, PartitionSpec

from jquant.models.kv_quant import KVQuant

__all__ = ["KVCache", "LayerKV", "cache_bytes"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for positions ``[0, length)``; slots past ``length`` are unused.

    Attributes:
        k: per layer, [B, max_len, num_kv_heads, head_dim] in the model dtype, or codes
            (float8_e4m3fn / float8_e5m2 / int8) for a quantized cache: a tuple of L arrays, or
            (``stacked``) one array [L, B, max_len, num_kv_heads, head_dim].
        v: same as ``k``.
        length: int32 scalar, number of positions written (the next token's position); or int32
            [B], one per row, for a right-padded batch of prompts of different lengths
            (`jquant.models.generate`).
        k_scale: quantized cache only: per layer, float32 [num_kv_heads] multipliers
            (``k ~= code * k_scale``); 0 until the first prefill computes it. None otherwise.
        v_scale: same as ``k_scale``, for ``v``.
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    length: jax.Array
    k_scale: tuple[jax.Array, ...] | jax.Array | None = None
    v_scale: tuple[jax.Array, ...] | jax.Array | None = None

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
        stacked: bool = False,
    ) -> KVCache:
        """Zeroed buffers [B, max_len, num_kv_heads, head_dim] per layer, on ``sharding`` (a
        ``jax.sharding.Sharding`` of one layer's buffer; None: the default device); in ``quant``'s
        code dtype when given (``dtype`` is then unused), with its initial per-head scales.
        ``stacked``: one [L, B, max_len, ...] array per k / v (scales [L, heads]) instead of L
        arrays; a `NamedSharding` then gets a leading unsplit layer axis."""
        shape = (batch, max_len, num_kv_heads, head_dim)
        if quant is not None:
            dtype = quant.code_dtype
        if stacked:
            shape = (num_layers, *shape)
            if isinstance(sharding, NamedSharding):
                sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        if sharding is None:
            zeros = lambda: jnp.zeros(shape, dtype)  # noqa: E731
        else:  # each device allocates only its heads (no whole buffer on one device first)
            zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
        if stacked:
            k, v = zeros(), zeros()
        else:
            k, v = tuple(zeros() for _ in range(num_layers)), tuple(zeros() for _ in range(num_layers))
        scales = {}
        if quant is not None:
            ks, vs = quant.initial_scales(num_layers, num_kv_heads)
            scales = dict(k_scale=jnp.stack(ks), v_scale=jnp.stack(vs)) if stacked else dict(k_scale=ks, v_scale=vs)
        return cls(k=k, v=v, length=jnp.zeros((), jnp.int32), **scales)

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    @property
    def is_stacked(self) -> bool:
        """Whether the buffers are one [L, ...] array each (a scanned model's cache)."""
        return not isinstance(self.k, tuple)

    def buffers(self) -> tuple:
        """``(k, v)`` or ``(k, v, k_scale, v_scale)``, as stored (tuples of L arrays, or stacks)."""
        return (self.k, self.v) + ((self.k_scale, self.v_scale) if self.quantized else ())

    def layer(self, i: int) -> tuple[jax.Array, ...]:
        """Layer ``i``'s buffers as `jquant.models.kv_quant.write_layer` takes them: ``(k, v)`` or
        ``(k_codes, v_codes, k_scale, v_scale)``."""
        return tuple(p[i] for p in self.buffers())

    def stacked(self) -> tuple[jax.Array, ...]:
        """Every layer's buffers stacked on a leading layer axis (copies unless already stacked)."""
        if self.is_stacked:
            return self.buffers()
        return tuple(jnp.stack(p) for p in self.buffers())

    def with_layers(self, layers, length: jax.Array) -> KVCache:
        """A cache of per-layer tuples (a list, as `layer` gives them), or of the stacked arrays
        (a tuple of stacks, as `buffers` of a stacked cache gives them: kept stacked)."""
        if isinstance(layers, list):
            parts = [tuple(p) for p in zip(*layers)]
        elif self.is_stacked:
            parts = list(layers)
        else:
            parts = [tuple(p) for p in layers]
        names = ("k", "v", "k_scale", "v_scale")[: len(parts)]
        return dataclasses.replace(self, length=length, **dict(zip(names, parts)))

    @property
    def max_len(self) -> int:
        return self.k.shape[2] if self.is_stacked else self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers and scales."""
        return sum(int(a.size) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(self) if a.ndim > 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerKV:
    """One layer's view of a stacked cache inside the layer scan: every layer's buffers and the
    index of this one (`jquant.models.llama.Attention` writes through
    ``write_layer(buffers, ..., layer=index)``, touching only the new slots).

    Attributes:
        buffers: ``(k, v)`` [L, B, S, H, D] or ``(k_codes, v_codes, k_scale, v_scale)`` with scales [L, H].
        index: int32 scalar, the layer.
    """

    buffers: tuple[jax.Array, ...]
    index: jax.Array


def cache_bytes(model, batch: int, max_len: int) -> int:
    """Bytes ``model.init_cache(batch, max_len)`` would take (shapes only: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: model.init_cache(batch, max_len))
    return sum(int(a.size) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(shapes) if len(a.shape) > 0)
