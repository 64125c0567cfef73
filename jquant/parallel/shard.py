"""``shard(model, mesh, rules)``, sharded checkpoints, and the per-device accounting the tests read."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jquant.convert.checkpoint import Checkpoint
from jquant.core.activation import ActQuant
from jquant.core.qarray import QArray
from jquant.nn.linear import QuantLinear
from jquant.parallel.linear import ShardedQuantLinear
from jquant.parallel.place import place, put_array, shardings_of
from jquant.parallel.rules import LLAMA_RULES, Layout, Rules, needs_reblock
from jquant.parallel.tp_ops import ExpertParallel

__all__ = [
    "make_mesh",
    "shard",
    "shard_checkpoint",
    "load_sharded",
    "layout_for",
    "device_bytes",
    "kv_cache_sharding",
]


def make_mesh(tp: int, axis: str = "tp", devices=None) -> Mesh:
    """A 1-D mesh of the first ``tp`` devices (``jax.devices()`` unless given).

    Raises:
        ValueError: fewer than ``tp`` devices (on CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
            must be set before JAX starts to get N devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    if tp < 1 or tp > len(devices):
        raise ValueError(
            f"tensor parallelism {tp} needs {tp} devices, {len(devices)} available "
            f"({devices[0].platform}; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={tp} "
            "before JAX starts)"
        )
    return Mesh(np.array(devices[:tp]), (axis,))


def kv_cache_sharding(mesh: Mesh, num_kv_heads: int, axis: str = "tp") -> NamedSharding:
    """Sharding of a KV buffer [B, S, kv_heads, head_dim]: split by heads when they divide over the
    axis (each device keeps the heads its k/v projection shards produce), else replicated."""
    if num_kv_heads % mesh.shape[axis] == 0:
        return NamedSharding(mesh, P(None, None, axis, None))
    return NamedSharding(mesh, P())


def _path_name(path) -> str:
    return ".".join(str(p) for p in path)


def shard(model: nnx.Module, mesh: Mesh, rules: Rules = LLAMA_RULES) -> nnx.Module:
    """Splits a built jquant model over ``mesh`` in place (and returns it).

    Every `QuantLinear` becomes a `ShardedQuantLinear` with the layout ``rules`` give its module
    path (``stacked_layers.self_attn.q_proj``: stacked layers keep their leading layer axis whole);
    MoE expert stacks are split along E (expert parallelism); every other array is replicated on
    the mesh; the KV cache the model creates is split by heads (`kv_cache_sharding`). Weights
    already placed as asked (`jquant.models.from_checkpoint` with ``mesh=``) are not moved.

    Raises:
        ShardingError: a weight that cannot be split as its layout asks, named.
    """
    axis = rules.axis
    nodes = list(nnx.iter_graph(model))
    by_path = {tuple(p): n for p, n in nodes}
    for path, node in nodes:
        if isinstance(node, QuantLinear):
            name = _path_name(path)
            layout = rules.layout_of(name)
            w = place(node.weight.get_value(), layout, mesh, axis, name=name)
            b = None if node.bias is None else place(node.bias[...], layout, mesh, axis, name=name, bias=True)
            act = None
            if node.input_quant is not None:
                act = place(node.input_quant.get_value(), Layout.REPLICATED, mesh, axis, name=name)
            new = ShardedQuantLinear.of(node, layout=layout, mesh=mesh, axis=axis, weight=w, bias=b, act=act)
            parent, key = by_path[tuple(path[:-1])], path[-1]
            if isinstance(key, int):
                parent[key] = new
            else:
                setattr(parent, key, new)
        elif hasattr(node, "expert_parallel"):  # jquant.models.mixtral.SparseMoeBlock
            node.expert_parallel = ExpertParallel(mesh, axis)
            for f in ("gate_up_proj", "gate_proj", "up_proj", "down_proj"):
                p = getattr(node, f)
                if p is not None:
                    name = f"{_path_name(path)}.{f}"
                    p.set_value(place(p.get_value(), Layout.EXPERT, mesh, axis, name=name))
    # Everything not split above (embeddings, norms, routers): replicated on the mesh.
    replicated = NamedSharding(mesh, P())

    def on_mesh(a):
        if isinstance(a, jax.Array) and isinstance(a.sharding, NamedSharding) and a.sharding.mesh == mesh:
            return a
        return put_array(a, replicated)

    state = nnx.state(model)
    nnx.update(model, jax.tree.map(on_mesh, state))
    if hasattr(model, "cache_sharding"):
        model.cache_sharding = kv_cache_sharding(mesh, model.config.num_key_value_heads, axis)
    return model


def layout_for(name: str, w, rules: Rules) -> tuple[Layout, bool]:
    """(layout, is a bias) of checkpoint tensor ``name``: rules for weights [N, K] and their biases [N];
    activation recipes and anything else (norms, rotary tables) replicated."""
    if isinstance(w, ActQuant):
        return Layout.REPLICATED, False
    layout = rules.layout_of(name)
    if isinstance(w, QArray) or len(w.shape) == 2:
        return layout, False
    if len(w.shape) == 1 and name.endswith(".bias"):
        return layout, True
    return Layout.REPLICATED, False


def shard_checkpoint(ckpt: Checkpoint, mesh: Mesh, rules: Rules = LLAMA_RULES) -> Checkpoint:
    """``ckpt`` with every tensor placed on ``mesh`` by name (`Rules`), dtypes kept.

    What `jquant.save(..., format="orbax")` writes shard by shard; weights that need re-blocking for
    the split (`jquant.parallel.rules.fit`) are stored re-blocked (an equivalent `QArray`).
    """
    weights = {}
    for name, w in ckpt.weights.items():
        layout, bias = layout_for(name, w, rules)
        weights[name] = place(w, layout, mesh, rules.axis, name=name, bias=bias)
    return dataclasses.replace(ckpt, weights=weights, metadata=dict(ckpt.metadata))


def load_sharded(folder, mesh: Mesh, rules: Rules = LLAMA_RULES) -> Checkpoint:
    """A canonical Orbax folder (`jquant.save(..., format="orbax")`) restored straight onto ``mesh``.

    Each device reads only its slices from disk, whatever mesh the folder was saved from (resharding
    on load); a tensor whose split needs re-blocked scales is restored to the host and placed after
    `jquant.parallel.rules.fit`.
    """
    from jquant.convert.orbax_io import load_orbax

    tp = mesh.shape[rules.axis]

    def placement(name: str, template):
        layout, bias = layout_for(name, template, rules)
        if isinstance(template, QArray) and needs_reblock(template, layout, tp, name=name):
            return None
        return shardings_of(template, layout, mesh, rules.axis, bias=bias)

    ckpt = load_orbax(folder, placement=placement)
    weights = {}
    for name, w in ckpt.weights.items():
        if all(isinstance(a, jax.Array) for a in jax.tree.leaves(w)):
            weights[name] = w
        else:
            layout, bias = layout_for(name, w, rules)
            weights[name] = place(w, layout, mesh, rules.axis, name=name, bias=bias)
    return dataclasses.replace(ckpt, weights=weights)


def device_bytes(tree) -> dict:
    """Bytes each device holds of the arrays in ``tree`` (a model state, ``jax.live_arrays()``...).

    Buffers are counted once each (by device pointer): ``jax.make_array_from_callback`` keeps the
    per-device arrays it assembled alive next to the global one, sharing their buffers.
    """
    out: dict = {}
    seen = set()
    for a in jax.tree.leaves(tree):
        if isinstance(a, jax.Array) and not a.is_deleted():
            for s in a.addressable_shards:
                key = (s.device, s.data.unsafe_buffer_pointer())
                if key not in seen:
                    seen.add(key)
                    out[s.device] = out.get(s.device, 0) + s.data.nbytes
    return out
