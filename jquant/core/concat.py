"""Concatenating quantized weights along the output dimension (N), losslessly.

Linear layers that read the same input (q/k/v, gate/up) run faster as one matmul: fewer kernel
launches and a larger N to spread over the GPU (vLLM's ``QKVParallelLinear`` /
``MergedColumnParallelLinear`` do the same at load). Stacking rows of canonical `QArray`s is a
pure concatenation of their arrays when every piece has one scale row per weight row (group or
per-channel scales) and the same code type, scale dtype, zero kind and act-order permutation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jquant.core.qarray import QArray

__all__ = ["concat_rows", "why_not_concat"]


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    import jax.numpy as jnp  # device arrays: concatenate on device

    return jnp


def why_not_concat(ws) -> str:
    """Empty string when `concat_rows` can stack ``ws`` (QArrays or dense [N, K] arrays), else why not."""
    if len(ws) < 2:
        return "fewer than two weights"
    if all(not isinstance(w, QArray) for w in ws):
        ks = {tuple(w.shape[1:]) for w in ws}
        dts = {np.dtype(w.dtype) for w in ws}
        return "" if len(ks) == 1 and len(dts) == 1 else f"dense weights differ in K or dtype: {ks}, {dts}"
    if not all(isinstance(w, QArray) for w in ws):
        return "mix of quantized and dense weights"
    a = ws[0]
    for w in ws[1:]:
        if w.qtype != a.qtype:
            return f"code types differ: {a.qtype.name} vs {w.qtype.name}"
        if w.shape[1] != a.shape[1] or w.block != (1, a.block[1]) or a.block[0] != 1:
            return f"blocks {a.block} / {w.block}: only one scale row per weight row stacks"
        if np.dtype(w.scale.dtype) != np.dtype(a.scale.dtype):
            return "scale dtypes differ"
        if (w.zero is None) != (a.zero is None) or (
            w.zero is not None and np.dtype(w.zero.dtype) != np.dtype(a.zero.dtype)
        ):
            return "zero points differ in kind"
        if (w.perm is None) != (a.perm is None):
            return "act-order permutations differ"
        if w.perm is not None and not bool(np.array_equal(np.asarray(w.perm), np.asarray(a.perm))):
            return "act-order permutations differ"
        if w.scale2 is not None or a.scale2 is not None:
            return "per-tensor second scales (scale2) do not stack"
    return ""


def concat_rows(ws):
    """Stacks weights [N_i, K] into one [sum N_i, K] of the same kind (`why_not_concat` must be "").

    Args:
        ws: QArrays (numpy or device arrays) or dense arrays.

    Returns:
        a `QArray` whose `dequantize` is the row-concatenation of the pieces' (bit-exact), or the
        concatenated dense array.
    """
    why = why_not_concat(ws)
    if why:
        raise ValueError(f"concat_rows: {why}")
    if not isinstance(ws[0], QArray):
        return _xp(ws[0]).concatenate(list(ws), axis=0)
    a = ws[0]
    xp = _xp(a.data)
    cat = lambda field: xp.concatenate([getattr(w, field) for w in ws], axis=0)  # noqa: E731
    return dataclasses.replace(
        a,
        data=cat("data"),
        scale=cat("scale"),
        zero=None if a.zero is None else cat("zero"),
        shape=(sum(w.shape[0] for w in ws), a.shape[1]),
    )
