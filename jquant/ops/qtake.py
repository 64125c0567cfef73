"""``qtake(w, ids)``: rows of a quantized table, dequantized (an embedding lookup on a `QArray`).

Equivalent to ``dequantize(w)[ids]`` but only the gathered rows are unpacked and scaled: the codes,
scales and zero points of those rows are gathered first, and the small [len(ids), K] result is
dequantized with the same jnp code as the reference (`jquant.core.jnp_dequant`), so it is bit-exact
with it. A GGUF ``token_embd`` in Q4_1 (49152 x 576 for SmolLM2) never gets dequantized whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray

__all__ = ["qtake"]


def _take_rows(w: QArray, rows: jax.Array) -> QArray:
    """The `QArray` holding rows ``rows`` (int32 [R]) of ``w``, with one scale row per row."""
    bn, bk = w.block
    srow = rows // bn  # the scale / zero row that covers each gathered row
    return QArray(
        data=jnp.take(w.data, rows, axis=0),
        scale=jnp.take(w.scale, srow, axis=0),
        zero=None if w.zero is None else jnp.take(w.zero, srow, axis=0),
        perm=w.perm,
        scale2=w.scale2,
        qtype=w.qtype,
        shape=(rows.shape[0], w.k),
        block=(1, bk),
        layout_version=w.layout_version,
    )


def qtake(w: QArray | jax.Array, ids: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Rows ``ids`` of the dense matrix ``w`` stands for.

    Args:
        w: `QArray` of shape (N, K) (e.g. a token embedding table [vocab, hidden]) or a dense
            [N, K] array.
        ids: integer array of any shape, values in [0, N).
        dtype: result dtype.

    Returns:
        ``ids.shape + (K,)`` array of ``dtype``, equal to ``dequantize(w)[ids]`` (bit-exact in f32).
    """
    if not isinstance(w, QArray):
        return jnp.take(w, ids, axis=0).astype(dtype)
    flat = ids.reshape(-1).astype(jnp.int32)
    rows = jnp_dequant.dequantize_permuted(_take_rows(w, flat))  # [R, K] f32, columns in data order
    if w.perm is not None:  # column j of data holds channel perm[j]
        rows = jnp.zeros_like(rows).at[:, w.perm].set(rows)
    return rows.reshape(*ids.shape, w.k).astype(dtype)
