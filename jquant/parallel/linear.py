"""`ShardedQuantLinear`: a `QuantLinear` whose weight is split over a mesh axis (column or row parallel)."""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from jquant.core.qarray import QArray
from jquant.nn.linear import LayerOf, QuantLinear
from jquant.ops.qmatmul import take_layer
from jquant.parallel.rules import Layout
from jquant.parallel.tp_ops import parallel_qmatmul

__all__ = ["ShardedQuantLinear"]


class ShardedQuantLinear(QuantLinear):
    """``y = x @ W.T + b`` with ``W`` [out, in] split over ``mesh[axis]`` (`jquant.parallel.tp_ops`).

    Same arguments as `QuantLinear` plus:

    Args:
        layout: `Layout.COLUMN` (output sharded along its last axis), `Layout.ROW` (replicated
            output after a psum) or `Layout.REPLICATED`.
        mesh: the device mesh (static: part of the module's graph, hashable).
        axis: the mesh axis of the split.

    The weight must already be fitted and placed for the layout (`jquant.parallel.place`);
    `jquant.parallel.shard` and `jquant.parallel.ShardedWeights` build these modules.
    """

    def __init__(self, in_features: int, out_features: int, *, layout: Layout, mesh: Mesh, axis: str = "tp", **kw):
        super().__init__(in_features, out_features, **kw)
        self.layout = layout
        self.mesh = mesh
        self.axis = axis

    @classmethod
    def of(cls, q: QuantLinear, *, layout: Layout, mesh: Mesh, axis: str, weight=None, bias=None, act=None):
        """A sharded twin of ``q`` (its weight / bias / recipe replaced by the placed ones given).

        Layer-stacked weights (a leading layer axis on every array) are accepted: the module is
        built on layer 0's slice, which `QuantLinear` checks, then given the whole stack.
        """
        weight = q.weight.get_value() if weight is None else weight
        bias = (None if q.bias is None else q.bias[...]) if bias is None else bias
        act = (None if q.input_quant is None else q.input_quant.get_value()) if act is None else act
        lead = (weight.data if isinstance(weight, QArray) else weight).ndim - 2
        first = (lambda t: jax.tree.map(lambda a: a[(0,) * lead], t)) if lead else (lambda t: t)  # noqa: E731
        new = cls(
            q.in_features,
            q.out_features,
            dtype=q.dtype,
            implementation=q.implementation,
            weight=first(weight),
            bias=None if bias is None else first(bias),
            input_quant=None if act is None else first(act),
            layout=layout,
            mesh=mesh,
            axis=axis,
        )
        if lead:
            new.weight.set_value(weight)
            if bias is not None:
                new.bias.set_value(bias)
            if act is not None:
                new.input_quant.set_value(act)
        return new

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., in_features] -> [..., out_features] in ``dtype`` (or ``x.dtype``)."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        act = None if self.input_quant is None else self.input_quant.get_value()
        w = self.weight.get_value()
        if isinstance(w, LayerOf):  # inside a scanned model: this layer's slice (its split axes intact)
            w = take_layer(w.stacked, w.index)
        y = parallel_qmatmul(
            x,
            w,
            act,
            layout=self.layout,
            mesh=self.mesh,
            axis=self.axis,
            implementation=self.implementation,
        )
        if self.bias is not None:  # column: bias split like y; row: replicated, added after the psum
            y = y + self.bias[...].astype(y.dtype)
        return y
