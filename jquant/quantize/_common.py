"""Helpers shared by the quantizer families: input checks, the arithmetic dtype, per-block min / max."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jquant.core.errors import FormatError
from jquant.quantize.scheme import WeightRecipe

__all__ = ["FLOAT_DTYPES", "check_weight", "compute_dtype", "scale_block", "block_minmax", "eps"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def check_weight(name: str, w: np.ndarray) -> tuple[int, int]:
    """(N, K) of a 2-D float weight; FormatError naming ``name`` otherwise."""
    if w.ndim != 2:
        raise FormatError(f"only 2-D linear weights can be quantized, got shape {list(w.shape)}", tensor=name)
    if np.dtype(w.dtype) not in FLOAT_DTYPES:
        raise FormatError(
            f"dtype {np.dtype(w.dtype).name} is not a float weight (float32 / float16 / bfloat16); "
            "quantized or integer tensors cannot be quantized again",
            tensor=name,
        )
    n, k = (int(s) for s in w.shape)
    if n == 0 or k == 0:
        raise FormatError(f"empty weight of shape {[n, k]}", tensor=name)
    return n, k


def compute_dtype(w: np.ndarray, recipe: WeightRecipe) -> np.dtype:
    """The dtype scales and codes are computed in: the weight's own (compressed-tensors) or float32."""
    return np.dtype(np.float32) if recipe.arithmetic == "float32" else np.dtype(w.dtype)


def eps(dtype: np.dtype):
    """``torch.finfo(dtype).eps`` in ``dtype``: what compressed-tensors puts in place of a zero scale
    (quantization/utils/helpers.py ``_get_dtype_eps``, step 5 of ``calculate_qparams``)."""
    return dtype.type(ml_dtypes.finfo(dtype).eps)


def scale_block(recipe: WeightRecipe, n: int, k: int) -> tuple[int, int]:
    """The `QArray` ``block`` of the recipe's granularity for a weight [N, K]."""
    if recipe.granularity == "tensor":
        return (n, k)
    if recipe.granularity == "channel":
        return (1, k)
    if recipe.granularity == "group":
        return (1, min(int(recipe.group_size), k))
    return (int(recipe.block[0]), int(recipe.block[1]))


def block_minmax(x: np.ndarray, block: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """min and max of ``x`` [N, K] per block: two arrays [ceil(N/bn), ceil(K/bk)] in ``x``'s dtype.

    Partial edge blocks are padded with zeros, which changes nothing downstream: every recipe
    first widens the range to include 0 (compressed-tensors ``calculate_qparams``:
    ``min(min, 0)``, ``max(max, 0)``; absmax recipes take ``|x|``).
    """
    n, k = x.shape
    bn, bk = block
    gn, gk = -(-n // bn), -(-k // bk)
    if (gn * bn, gk * bk) != (n, k):
        padded = np.zeros((gn * bn, gk * bk), dtype=x.dtype)
        padded[:n, :k] = x
        x = padded
    r = x.reshape(gn, bn, gk, bk)
    return r.min(axis=(1, 3)), r.max(axis=(1, 3))


def expand(a: np.ndarray, block: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Per-block values [ceil(N/bn), ceil(K/bk)] broadcast to [N, K] (a view where possible)."""
    bn, bk = block
    n, k = shape
    if a.shape == (1, 1):
        return a
    if bn == 1 and a.shape[1] == 1:
        return a
    return np.repeat(np.repeat(a, bn, axis=0)[:n], bk, axis=1)[:, :k]
