"""NF4 weights as bitsandbytes makes them (``quantize_4bit(quant_type="nf4")``, no double quantization).

Algorithm (bitsandbytes 0.50 ``backends/default/ops.py``, the kernel its CPU backend runs), in float32:

1. the weight is flattened row-major and cut into blocks of ``blocksize`` (64) values;
   ``absmax = max |x|`` per block (float32);
2. ``v = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)`` (a multiplication by the reciprocal);
3. ``code = bucketize(v, midpoints)``: the midpoints ``(t[i] + t[i+1]) / 2`` of the sorted NF4
   table in float32, a value on a midpoint going to the lower code (``torch.bucketize``,
   ``right=False`` == ``np.searchsorted(side="left")``).

bitsandbytes' blocks run over the flattened tensor; they are the canonical per-row groups
(block (1, 64)) only when 64 divides K, which is therefore required. bitsandbytes packs the first
code of a pair in the *high* nibble; the canonical layout puts it in the low nibble (`pack_codes`).

Canonical result: ``QArray(nf4)`` codes [N, K / 2], float32 absmax scales [N, K / 64].
"""

from __future__ import annotations

import numpy as np

from jquant.core.errors import FormatError
from jquant.core.packing import pack_codes
from jquant.core.qarray import QArray
from jquant.core.qtypes import NF4_VALUES, nf4
from jquant.quantize._common import check_weight
from jquant.quantize.scheme import WeightRecipe

__all__ = ["quantize_nf4"]

_TABLE = np.asarray(NF4_VALUES, dtype=np.float32)
_MIDPOINTS = ((_TABLE[:-1] + _TABLE[1:]) / np.float32(2)).astype(np.float32)


def quantize_nf4(name: str, w: np.ndarray, recipe: WeightRecipe) -> QArray:
    """Quantizes a float weight to NF4 with float32 absmax per ``recipe.group_size`` weights of a row.

    Args:
        name: the tensor's name, for errors.
        w: float32 / float16 / bfloat16 [N, K], K a multiple of the block size.
        recipe: a ``kind="nf4"`` recipe (``group_size`` = bitsandbytes' ``blocksize``).

    Returns:
        a validated `QArray` (nf4 codes packed two per byte [N, K / 2], float32 scales [N, K / G]).

    Raises:
        FormatError: naming ``name``, when G does not divide K (bitsandbytes' blocks would then
            straddle rows, which per-row groups cannot express).
    """
    n, k = check_weight(name, w)
    g = int(recipe.group_size)
    if k % g:
        raise FormatError(
            f"K={k} is not a multiple of the NF4 block size {g}: bitsandbytes' blocks would straddle rows",
            tensor=name,
        )
    x = np.asarray(w).astype(np.float32).reshape(n, k // g, g)
    absmax = np.abs(x).max(axis=-1, keepdims=True)
    inv = (np.float32(1) / np.maximum(absmax, np.float32(1e-38))).astype(np.float32)
    v = np.clip((x * inv).astype(np.float32), np.float32(-1), np.float32(1))
    codes = np.searchsorted(_MIDPOINTS, v.reshape(-1), side="left").astype(np.uint8).reshape(n, k)
    scale = np.ascontiguousarray(absmax[..., 0])
    return QArray(data=pack_codes(codes, 4), scale=scale, qtype=nf4, shape=(n, k), block=(1, g)).validate(name)
