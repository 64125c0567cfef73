"""Integer weights (int8 per channel / group, int4 per group, symmetric or asymmetric), round to nearest,
as compressed-tensors (llm-compressor's ``W8A8`` / ``W8A16`` / ``W4A16`` / ``W4A16_ASYM`` presets
without GPTQ) makes them.

Algorithm (compressed-tensors 0.20 ``calculate_qparams`` + ``forward_helpers._quantize``; every
step in the weight's own dtype ``D``; b-bit signed range [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1]):

* symmetric: ``s = amax / D((qmax - qmin) / 2)`` (127.5 for int8, 7.5 for int4: ``bit_range / 2``,
  *not* vLLM's ``amax / 127``), ``s == 0 -> finfo(D).eps``; ``q = round(clamp(x / s, qmin, qmax))``.
* asymmetric: ``lo = min(x, 0)``, ``hi = max(x, 0)``, ``s = (hi - lo) / D(qmax - qmin)``;
  ``z = round(clamp(qmin - lo / s, qmin, qmax))`` (computed before the eps substitution of
  ``s == 0``; such an all-zero group gets ``z = 0`` here, where compressed-tensors casts a NaN);
  ``q = round(clamp(x / s + z, qmin, qmax))``.
* rounding is half-to-even (``torch.round`` == ``np.rint``), the division rounds to ``D``.

Canonical result: 8-bit symmetric codes as ``int8`` (value = code); 4-bit symmetric as
``uint4b8`` (code = q + 8); 4-bit asymmetric as ``uint4`` codes ``q + 8`` with the zero point
``z + 8`` (uint8), so ``w = (code - zero) * s``. Scales in ``D``.
"""

from __future__ import annotations

import numpy as np

from jquant.core.errors import FormatError
from jquant.core.packing import pack_codes
from jquant.core.qarray import QArray
from jquant.core.qtypes import int8, uint4, uint4b8
from jquant.quantize._common import block_minmax, check_weight, compute_dtype, eps, expand, scale_block
from jquant.quantize.scheme import WeightRecipe

__all__ = ["quantize_int"]


def quantize_int(name: str, w: np.ndarray, recipe: WeightRecipe) -> QArray:
    """Quantizes a float weight to 8- or 4-bit integer codes (see the module docstring).

    Args:
        name: the tensor's name, for errors.
        w: float32 / float16 / bfloat16 [N, K]; K even for 4-bit codes.
        recipe: a ``kind="int"`` recipe.

    Returns:
        a validated `QArray`: int8 [N, K], or 4-bit codes packed two per byte [N, K / 2]
        (element 2i in the low nibble), scales [N, ceil(K / G)] (or [N, 1]) in the arithmetic dtype.

    Raises:
        FormatError: naming ``name``: not a 2-D float weight, or an odd K for 4-bit codes.
    """
    n, k = check_weight(name, w)
    b = recipe.bits
    if b == 4 and k % 2:
        raise FormatError(f"K={k} is odd: 4-bit codes are packed two per byte along K", tensor=name)
    d = compute_dtype(w, recipe)
    x = np.asarray(w).astype(d, copy=False)
    block = scale_block(recipe, n, k)
    qmin, qmax = -(1 << (b - 1)), (1 << (b - 1)) - 1
    lo, hi = block_minmax(x, block)
    zero_d = d.type(0)
    lo, hi = np.minimum(lo, zero_d), np.maximum(hi, zero_d)
    if recipe.symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        s = (amax / d.type((qmax - qmin) / 2)).astype(d)
        z = None
    else:
        s = ((hi - lo) / d.type(qmax - qmin)).astype(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            zf = (d.type(qmin) - lo / s).astype(d)
        zf = np.where(s == 0, zero_d, zf)
        z = np.rint(np.clip(zf, d.type(qmin), d.type(qmax))).astype(d)
    s = np.where(s == 0, eps(d), s).astype(d)
    y = (x / expand(s, block, (n, k))).astype(d)
    if z is not None:
        y = (y + expand(z, block, (n, k))).astype(d)
    q = np.rint(np.clip(y, d.type(qmin), d.type(qmax))).astype(np.int16)
    s = np.ascontiguousarray(s)
    if b == 8:
        return QArray(data=q.astype(np.int8), scale=s, qtype=int8, shape=(n, k), block=block).validate(name)
    codes = pack_codes((q - qmin).astype(np.uint8), 4)
    if z is None:
        return QArray(data=codes, scale=s, qtype=uint4b8, shape=(n, k), block=block).validate(name)
    zero = (z.astype(np.int16) - qmin).astype(np.uint8)
    return QArray(data=codes, scale=s, zero=zero, qtype=uint4, shape=(n, k), block=block).validate(name)
