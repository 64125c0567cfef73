"""Expert-stacked weights: one `QArray` (or dense array) per projection for all experts of a MoE layer.

Convention (the one the layer-stacked decoder of `jquant.models.llama` already uses for ``scan``):
an expert-stacked `QArray` is an ordinary `QArray` whose every array field carries one extra
leading axis E, while its static fields (``qtype``, ``shape``, ``block``) describe *one* expert::

    data   [E, N, K * c / 8]          scale  [E, ceil(N / bn), ceil(K / bk)]
    zero   [E, ...scale] or None      perm   [E, K] or None (each expert its own act-order)
    scale2 [E, 1, 1] or None

Expert e is the `QArray` of the arrays' e-th slices, so everything per-expert follows from the
pytree: ``jax.vmap(jnp_dequant.dequantize)(w)`` is the [E, N, K] dequantization, and
`jquant.ops.grouped_qmatmul` reads the stack as it is. Dense experts are a plain [E, N, K] array.
Stacking is a pure `np.stack` of the per-expert arrays, so it is lossless by construction
(`unstack_experts` inverts it bit for bit; tests/ops/test_grouped.py checks both).

Numpy only (no JAX), like the rest of `jquant.core`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jquant.core.errors import FormatError
from jquant.core.qarray import QArray

__all__ = ["stack_experts", "unstack_experts", "num_experts", "why_not_stack"]

_FIELDS = ("data", "scale", "zero", "perm", "scale2")


def why_not_stack(ws) -> str:
    """Empty string when `stack_experts` can stack ``ws`` (per-expert QArrays or dense [N, K] arrays), else why not."""
    if not ws:
        return "no experts"
    if all(not isinstance(w, QArray) for w in ws):
        shapes, dts = {tuple(w.shape) for w in ws}, {np.dtype(w.dtype) for w in ws}
        if len(shapes) != 1 or len(dts) != 1 or len(next(iter(shapes))) != 2:
            return f"dense experts differ in shape or dtype, or are not 2-D: {shapes}, {dts}"
        return ""
    if not all(isinstance(w, QArray) for w in ws):
        return "mix of quantized and dense experts"
    a = ws[0]
    for w in ws[1:]:
        if (w.qtype, w.shape, w.block, w.layout_version) != (a.qtype, a.shape, a.block, a.layout_version):
            return (
                f"experts differ in code type, shape or block: {a.qtype.name} {a.shape} {a.block}"
                f" vs {w.qtype.name} {w.shape} {w.block}"
            )
        for f in _FIELDS:
            x, y = getattr(a, f), getattr(w, f)
            if (x is None) != (y is None):
                return f"some experts have {f} and others do not"
            if x is not None and (np.dtype(x.dtype) != np.dtype(y.dtype) or x.shape != y.shape):
                return f"{f} differs in dtype or shape: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
    return ""


def stack_experts(ws, *, name: str | None = None):
    """One expert-stacked weight from the per-expert ones (see the module docstring), losslessly.

    Args:
        ws: E per-expert `QArray`s of one projection (numpy arrays, e.g. from `jquant.convert`), or
            E dense [N, K] arrays.
        name: named in errors (e.g. ``model.layers.0.block_sparse_moe.experts.*.w1.weight``).

    Returns:
        a `QArray` whose arrays have a leading expert axis, or a dense [E, N, K] array.

    Raises:
        FormatError: the experts do not share one code type, shape, block and set of arrays.
    """
    why = why_not_stack(ws)
    if why:
        raise FormatError(f"experts do not stack: {why}", tensor=name)
    if not isinstance(ws[0], QArray):
        return np.stack([np.asarray(w) for w in ws])
    stacked = {f: np.stack([np.asarray(getattr(w, f)) for w in ws]) for f in ws[0].arrays()}
    return dataclasses.replace(ws[0], **stacked)


def num_experts(w) -> int:
    """E of an expert-stacked `QArray` or dense [E, N, K] array."""
    return int((w.data if isinstance(w, QArray) else w).shape[0])


def unstack_experts(w) -> list:
    """The per-expert `QArray`s (or [N, K] arrays) of an expert-stacked weight: `stack_experts` inverted."""
    if not isinstance(w, QArray):
        return [w[e] for e in range(w.shape[0])]
    return [dataclasses.replace(w, **{f: a[e] for f, a in w.arrays().items()}) for e in range(num_experts(w))]
