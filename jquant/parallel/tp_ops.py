"""Tensor- and expert-parallel matmuls: the local `qmatmul` per shard under ``jax.shard_map``, plus the
collectives the layout needs.

Each device runs the ordinary dispatcher (`jquant.ops.qmatmul` / `jquant.ops.grouped_qmatmul`) on
its local `QArray` (the CUDA / Pallas / XLA backends are unchanged: they only ever see a smaller
weight). What differs per layout (`jquant.parallel.rules`):

* column (N split): input replicated, local ``x @ w_r.T`` gives the device's N / tp outputs; the
  result stays sharded along its last axis (no collective). Column-then-row pairs (q/k/v -> o,
  gate/up -> down) therefore need no communication in between (Megatron-LM).
* row (K split): input sharded along its last axis, local partial products, one ``psum`` (the
  all-reduce) -> replicated output. The psum sums tp partial dot products, so the result differs
  from one device's in f32 reduction order only. An input-activation recipe (W8A8) is applied to
  the whole input first (its per-token scales need the whole row), then the local matmul runs
  weight-only on the fake-quantized input (what the dispatcher's composed routes do). With
  act-order (``perm``), each device gathers the whole input row and takes its own ``perm`` entries.
* expert (E split): every device holds E / tp experts and sees all rows (sorted by expert); it
  rotates its experts' rows to the front, runs the grouped matmul over its local group sizes (rows
  past their sum come out as zeros: ``ragged_dot``'s rule), rotates back, and a ``psum`` merges the
  devices' disjoint rows (adding exact zeros). Equal to one device's result within f32 rounding:
  with few rows, a device holding fewer experts than rows may take `grouped_qmatmul`'s routed
  decode path where one device would not (a different summation order).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jquant.core.qarray import QArray
from jquant.ops import grouped_qmatmul, qmatmul
from jquant.ops.act_quant import fake_quantize
from jquant.parallel.rules import Layout, field_specs

__all__ = ["parallel_qmatmul", "expert_parallel_grouped_qmatmul", "ExpertParallel"]


def _shard_map(f, mesh, in_specs, out_specs):
    # check_vma=False: the local kernels (Pallas, jax.ffi) carry no varying-manual-axes types.
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _local(w):
    """Inside ``shard_map``: a `QArray` whose static ``shape`` / ``block`` describe the local shard.

    shard_map hands the body the local arrays but the global static fields; the shard's logical
    shape follows from its codes, and a block larger than the shard (per-tensor / per-channel
    scales, kept whole) shrinks to it (`jquant.parallel.rules.fit` already aligned split blocks).
    """
    if not isinstance(w, QArray):
        return w
    n, k = w.data.shape[-2], w.data.shape[-1] * w.qtype.codes_per_byte
    return w.replace(shape=(n, k), block=(min(w.block[0], n), min(w.block[1], k)))


def _w_specs(w, layout: Layout, axis: str):
    if isinstance(w, QArray):
        return field_specs(w, layout, axis)
    nd = w.ndim
    return P(*([None] * (nd - 2)), axis, None) if layout is Layout.COLUMN else P(*([None] * (nd - 1)), axis)


def parallel_qmatmul(
    x: jax.Array, w, act=None, *, layout: Layout, mesh: Mesh, axis: str = "tp", implementation: str | None = None
) -> jax.Array:
    """``qmatmul(x, w, act)`` with ``w`` split over ``mesh[axis]`` as ``layout`` says.

    Equivalent to: ``fake_quantize(x, act) @ dequantize(w).T`` (f32 accumulation; row layouts sum
    tp partial products).

    Args:
        x: [..., K] activations (any sharding: GSPMD moves them to what the layout reads).
        w: `QArray` (N, K) fitted to the layout (`jquant.parallel.rules.fit`), or a dense [N, K]
            array; sharded as `jquant.parallel.rules.field_specs` says (else GSPMD reshards it).
        act: the layer's input-activation recipe or None.
        layout: `Layout.COLUMN`, `Layout.ROW` or `Layout.REPLICATED`.
        mesh: the device mesh.
        axis: the mesh axis of the split.
        implementation: force a local `qmatmul` backend by name.

    Returns:
        [..., N] in ``x.dtype``: sharded along N for a column layout, replicated otherwise.
    """
    if layout is Layout.REPLICATED:
        return qmatmul(x, w, act, implementation=implementation)
    lead = [None] * (x.ndim - 1)

    def local(x, w, act=None):
        return qmatmul(x, _local(w), act, implementation=implementation)

    if layout is Layout.COLUMN:
        act_spec = None if act is None else jax.tree.map(lambda _: P(), act)
        f = _shard_map(local, mesh, (P(), _w_specs(w, layout, axis), act_spec), P(*lead, axis))
        return f(x, w, act)
    if layout is not Layout.ROW:
        raise ValueError(f"parallel_qmatmul: layout {layout} is not column, row or replicated")
    if act is not None:  # per-token / per-group scales need the whole row: quantize before the split
        x = fake_quantize(x, act)
    if isinstance(w, QArray) and w.perm is not None:

        def local_perm(x, w):  # x: the whole row; w.perm: this device's act-order entries
            y = local(jnp.take(x, w.perm, axis=-1), dataclasses.replace(w, perm=None))
            return jax.lax.psum(y, axis)

        f = _shard_map(local_perm, mesh, (P(), _w_specs(w, layout, axis)), P())
        return f(x, w)

    def local_row(x, w):
        return jax.lax.psum(local(x, w), axis)

    f = _shard_map(local_row, mesh, (P(*lead, axis), _w_specs(w, layout, axis)), P())
    return f(x, w)


def expert_parallel_grouped_qmatmul(
    x: jax.Array, w, group_sizes: jax.Array, *, mesh: Mesh, axis: str = "tp", implementation: str | None = None
) -> jax.Array:
    """`jquant.ops.grouped_qmatmul` with the experts of ``w`` split over ``mesh[axis]``.

    Equivalent to: ``grouped_qmatmul(x, w, group_sizes)`` (each row is computed by one device, the
    others add zeros; equal within f32 rounding, since the local and the global call may pick
    different paths, see `jquant.ops.grouped.explain_grouped`).

    Args:
        x: [M, K] rows sorted by expert (replicated on every device).
        w: expert-stacked `QArray` (E experts) or dense [E, N, K], E split over the axis.
        group_sizes: int32 [E].
        mesh: the device mesh.
        axis: the mesh axis holding the experts.
        implementation: forced `grouped_qmatmul` implementation.

    Returns:
        [M, N] in ``x.dtype``, replicated.
    """
    e = (w.data if isinstance(w, QArray) else w).shape[0]
    tp = mesh.shape[axis]
    if e % tp:
        raise ValueError(f"{e} experts are not divisible by the {tp} devices of mesh axis {axis!r}")
    w_spec = field_specs(w, Layout.EXPERT, axis) if isinstance(w, QArray) else P(axis, None, None)

    def local(x, w, gs):
        e_loc = e // tp
        first = jax.lax.axis_index(axis) * e_loc
        gs = gs.astype(jnp.int32)
        offset = jnp.sum(jnp.where(jnp.arange(e) < first, gs, 0))
        mine = jax.lax.dynamic_slice_in_dim(gs, first, e_loc)
        y = grouped_qmatmul(jnp.roll(x, -offset, axis=0), _local(w), mine, implementation=implementation)
        return jax.lax.psum(jnp.roll(y, offset, axis=0), axis)

    return _shard_map(local, mesh, (P(), w_spec, P()), P())(x, w, group_sizes)


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """Expert parallelism of an MoE block: its expert stacks split over ``mesh[axis]``.

    A static (hashable) attribute of `jquant.models.mixtral.SparseMoeBlock`; None there means one
    device.
    """

    mesh: Mesh
    axis: str = "tp"

    def grouped_qmatmul(self, x, w, group_sizes, *, implementation: str | None = None):
        return expert_parallel_grouped_qmatmul(
            x, w, group_sizes, mesh=self.mesh, axis=self.axis, implementation=implementation
        )
