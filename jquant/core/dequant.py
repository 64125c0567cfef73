"""Reference dequantization of a `QArray`: the spec (numpy), with a jnp twin for device arrays.

`dequantize` dispatches on the array type: numpy arrays go through the numpy reference here,
JAX arrays through `jquant.core.jnp_dequant` (imported only then). Both compute in float32 in the
same order (see `QArray`'s invariant) and agree bit-exactly.
"""

from __future__ import annotations

import numpy as np

from jquant.core.packing import unpack_codes
from jquant.core.qarray import QArray
from jquant.core.qtypes import QType

__all__ = ["dequantize", "decode_values", "expand_blocks"]


def decode_values(codes: np.ndarray, qtype: QType) -> np.ndarray:
    """Unpacked codes (uint8 / int8 / fp8) -> float32 values before scaling."""
    if qtype.codebook is not None:
        return np.asarray(qtype.codebook, dtype=np.float32)[codes.astype(np.intp)]
    if qtype.storage is not None or qtype.signed:
        return codes.astype(np.float32)
    return codes.astype(np.float32) - np.float32(qtype.bias)


def expand_blocks(a: np.ndarray, block: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Broadcasts a per-block array [ceil(N/bn), ceil(K/bk)] to [N, K]."""
    bn, bk = block
    n, k = shape
    return np.repeat(np.repeat(a, bn, axis=0)[:n], bk, axis=1)[:, :k]


def dequantize(w, dtype=None):
    """Dequantizes a `QArray` to a dense float array in HF orientation [N, K].

    Plain arrays pass through unchanged (cast to ``dtype`` if given), so callers can map this
    over ``Checkpoint.weights``.

    Args:
        w: `QArray` (numpy or JAX arrays) or an array.
        dtype: result dtype; default float32.

    Returns:
        [N, K] array, numpy for a numpy QArray, jax.Array for a JAX one.
    """
    if not isinstance(w, QArray):
        return w if dtype is None else w.astype(dtype)
    if not isinstance(w.data, np.ndarray):
        from jquant.core import jnp_dequant

        return jnp_dequant.dequantize(w, dtype)
    out = _dequantize_np(w)
    return out if dtype is None else out.astype(dtype)


def _dequantize_np(w: QArray) -> np.ndarray:
    q = w.qtype
    codes = unpack_codes(np.asarray(w.data), q.container_bits)
    v = decode_values(codes, q)
    s = np.asarray(w.scale).astype(np.float32)
    if w.scale2 is not None:
        s = s * np.asarray(w.scale2, dtype=np.float32)
    s = expand_blocks(s, w.block, w.shape)
    if w.zero is None:
        out = v * s
    elif np.dtype(w.zero.dtype).kind == "u":
        out = (v - expand_blocks(np.asarray(w.zero).astype(np.float32), w.block, w.shape)) * s
    else:
        out = v * s - expand_blocks(np.asarray(w.zero).astype(np.float32), w.block, w.shape)
    if w.perm is not None:
        res = np.empty_like(out)
        res[:, np.asarray(w.perm)] = out
        out = res
    return out
