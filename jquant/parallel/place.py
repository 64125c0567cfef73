"""Placing one tensor on its shards: each device receives only its slice, read from the host array.

Host arrays from `jquant.convert` are memory-mapped; `place` hands each device the slice its
`NamedSharding` asks for (``jax.make_array_from_callback``), so a weight is never materialized
whole on one device, and on the host only the pages of the slices being copied are touched.
Float tensors are cast to the model dtype per slice. Arrays already on devices are resharded with
``jax.device_put`` (XLA moves only what changes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jquant.core.activation import ActQuant
from jquant.core.qarray import QArray
from jquant.parallel.rules import Layout, ShardingError, array_spec, field_specs, fit, why_not_split

__all__ = ["place", "put_array", "shardings_of"]


def put_array(a, sharding: NamedSharding, dtype=None) -> jax.Array:
    """``a`` (numpy, memory-mapped numpy, or a jax.Array) as a jax.Array with ``sharding``.

    Args:
        a: the array.
        sharding: where each slice goes.
        dtype: cast floating arrays to it (per slice, on the host), or None to keep the dtype.
    """
    if isinstance(a, jax.Array):
        if dtype is not None and jnp.issubdtype(a.dtype, jnp.floating):
            a = a.astype(dtype)
        return a if a.sharding == sharding else jax.device_put(a, sharding)
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    cast = None
    if dtype is not None and (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
        cast = np.dtype(jnp.dtype(dtype))
    target = a.dtype if cast is None else cast

    def slice_of(index):
        s = np.asarray(a[index])
        return s if cast is None else s.astype(cast)

    return jax.make_array_from_callback(tuple(a.shape), sharding, slice_of, dtype=target)


def shardings_of(w, layout: Layout, mesh: Mesh, axis: str, *, bias: bool = False):
    """The `NamedSharding` pytree (prefix of ``w``) of a fitted weight under ``layout``."""
    if isinstance(w, QArray):
        specs = field_specs(w, layout, axis)
        return dataclasses.replace(w, **{f: NamedSharding(mesh, s) for f, s in specs.arrays().items()})
    if isinstance(w, ActQuant):  # input-activation recipes: small scales, replicated
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), w)
    return NamedSharding(mesh, array_spec(tuple(w.shape), layout, axis, bias=bias))


def place(w, layout: Layout, mesh: Mesh, axis: str = "tp", *, dtype=None, name: str | None = None, bias=False):
    """``w`` fitted to ``layout`` (`jquant.parallel.rules.fit`) and placed on ``mesh``.

    Args:
        w: a `QArray` (its arrays keep their dtypes), an `ActQuant`, or a float / int array.
        layout: how to split it over ``axis``.
        mesh: the device mesh.
        axis: the mesh axis of the split.
        dtype: float arrays (not QArray fields) are cast to it.
        name: named in errors.
        bias: ``w`` is a bias [..., N] (split with a column layout's outputs, replicated otherwise).

    Raises:
        ShardingError: the split does not align (see `fit`).
    """
    tp = mesh.shape[axis]
    if isinstance(w, ActQuant):
        layout = Layout.REPLICATED
    elif bias:
        why = why_not_split(tuple(w.shape), layout, tp, bias=True)
        if why:
            raise ShardingError(why, tensor=name)
    else:
        w = fit(w, layout, tp, name=name)
    sh = shardings_of(w, layout, mesh, axis, bias=bias)
    if isinstance(w, (QArray, ActQuant)):
        return jax.tree.map(put_array, w, sh)
    return put_array(w, sh, dtype)
