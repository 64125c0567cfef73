"""fp8 e4m3 weights per tensor / channel / 2-D block, as compressed-tensors (llm-compressor) makes them.

Algorithm (compressed-tensors 0.20, the arithmetic llm-compressor's ``FP8`` / ``FP8_DYNAMIC`` /
``FP8_BLOCK`` recipes run on a weight; every step in the weight's own dtype ``D``):

1. ``amax = max(|min(x, 0)|, max(x, 0))`` per unit (the min-max observer, then
   ``calculate_qparams``' widening to include 0);
2. ``s = amax / D(448)`` (``bit_range / 2`` of e4m3's [-448, 448]); ``s == 0`` becomes
   ``finfo(D).eps`` (step 5, "prevent div by 0");
3. ``q = e4m3(clamp(x / s, -448, 448))``: the division rounds to ``D``, the cast rounds to
   nearest even (``forward_helpers._quantize`` -> ``round_to_quantized_type_args``).

Canonical result: ``QArray(fp8_e4m3)`` with the codes [N, K] and the scales in ``D``:
per tensor [1, 1] (block (N, K)), per channel [N, 1] (block (1, K)), per block
[ceil(N/bn), ceil(K/bk)] (block (bn, bk); partial edge blocks allowed).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jquant.core.qarray import QArray
from jquant.core.qtypes import fp8_e4m3
from jquant.quantize._common import block_minmax, check_weight, compute_dtype, eps, expand, scale_block
from jquant.quantize.scheme import WeightRecipe

__all__ = ["quantize_fp8"]

_E4M3_MAX = 448.0


def quantize_fp8(name: str, w: np.ndarray, recipe: WeightRecipe) -> QArray:
    """Quantizes a float weight to fp8 e4m3 (see the module docstring).

    Args:
        name: the tensor's name, for errors.
        w: float32 / float16 / bfloat16 [N, K].
        recipe: a ``kind="fp8"`` recipe (tensor, channel or block granularity).

    Returns:
        a validated `QArray` (fp8_e4m3 codes [N, K], scales in the arithmetic dtype).
    """
    n, k = check_weight(name, w)
    d = compute_dtype(w, recipe)
    x = np.asarray(w).astype(d, copy=False)
    block = scale_block(recipe, n, k)
    lo, hi = block_minmax(x, block)
    amax = np.maximum(np.abs(np.minimum(lo, d.type(0))), np.abs(np.maximum(hi, d.type(0))))
    s = (amax / d.type(_E4M3_MAX)).astype(d)
    s = np.where(s == 0, eps(d), s).astype(d)
    q = np.clip(x / expand(s, block, (n, k)), d.type(-_E4M3_MAX), d.type(_E4M3_MAX)).astype(d)
    codes = q.astype(ml_dtypes.float8_e4m3fn)
    return QArray(data=codes, scale=np.ascontiguousarray(s), qtype=fp8_e4m3, shape=(n, k), block=block).validate(name)
