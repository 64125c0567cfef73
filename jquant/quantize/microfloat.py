"""Small-float weights: OCP MXFP4 (fp4 e2m1 + e8m0 scales per 32) and fp6 e3m2 (DeepSpeedFP-style).

MXFP4 (compressed-tensors 0.20, llm-compressor's ``MXFP4`` preset; every step in the weight's own
dtype ``D`` unless said):

1. ``amax = max |x|`` per group of 32 (min-max observer, widened to include 0);
2. ``p = round_to_power_2(amax)``: add half an E2M1-mantissa ulp to ``amax``'s bits in ``D``
   (``1 << (mantissa(D) - 1 - 1)``) and keep sign and exponent (``mxfp_utils.round_to_power_2``);
3. exponent ``e = clamp(round(127 + floor(log2 p) - 2), 0, 255)`` (uint8; 2 = floor(log2 6), the
   E2M1 offset), so the scale is ``2^(e - 127)``, rounded to ``D`` (``maybe_convert_from_mx_exp``);
   a zero scale becomes ``eps(uint8) = 1`` (``_get_dtype_eps`` of the uint8 scale dtype);
4. ``q = cast_to_fp4(clamp(x / s, -6, 6))``: nearest E2M1 value, ties to the even mantissa, sign
   applied as ``magnitude * sign(v)``; packed as ``sign << 3 | magnitude index``
   (``pack_fp4_to_uint8``: the sign bit of -0.0 is kept, code 8).

Canonical result: ``QArray(fp4_e2m1)`` codes [N, K / 2], scales ``float8_e8m0fnu`` [N, K / 32]
holding ``e`` (the e8m0 value is exactly ``2^(e - 127)``).

fp6 e3m2 (DeepSpeedFP, the FP6-LLM format vLLM's ``deepspeedfp`` method ran; no CPU producer, so
this follows the format's definition): per group of G input channels ``s = amax / 28`` in float32
(28 = the largest e3m2 value: 3 exponent bits with bias 3, 2 mantissa bits, no inf / nan), ``s == 0
-> 1``; ``q = e3m2(x / s)`` rounded to nearest even (``ml_dtypes.float6_e3m2fn``). DeepSpeed's
CUDA quantizer may round differently in ties; no producer could be run to check it. Canonical
result: a 64-entry table `QType` ``fp6_e3m2`` (codes are the e3m2 bit patterns, one byte each),
float32 scales [N, ceil(K / G)].
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jquant.core.activation import _round_to_fp4
from jquant.core.errors import FormatError
from jquant.core.packing import pack_codes
from jquant.core.qarray import QArray
from jquant.core.qtypes import QType, fp4_e2m1
from jquant.quantize._common import block_minmax, check_weight, compute_dtype, expand, scale_block
from jquant.quantize.scheme import WeightRecipe

__all__ = ["quantize_mxfp4", "quantize_fp6", "fp6_e3m2", "FP6_E3M2_VALUES", "round_to_power_2"]

# The value of each 6-bit e3m2 code (sign bit 5), as ml_dtypes decodes the bit pattern.
FP6_E3M2_VALUES = tuple(
    float(v) for v in np.arange(64, dtype=np.uint8).view(ml_dtypes.float6_e3m2fn).astype(np.float32)
)
fp6_e3m2 = QType("fp6_e3m2", "float", 6, codebook=FP6_E3M2_VALUES)

_E2M1_MANTISSA = 1
_E2M1_EMAX = 2  # floor(log2(6)): compressed-tensors mxfp_utils._MX_ELEM_OFFSET[4]
_E3M2_MAX = 28.0
# (mantissa bits, exponent bits, unsigned int view) of the dtypes round_to_power_2 reads
_BITS = {
    np.dtype(np.float32): (23, 8, np.uint32),
    np.dtype(np.float16): (10, 5, np.uint16),
    np.dtype(ml_dtypes.bfloat16): (7, 8, np.uint16),
}


def round_to_power_2(x: np.ndarray) -> np.ndarray:
    """compressed-tensors ``mxfp_utils.round_to_power_2`` in ``x``'s own dtype (E2M1 element mantissa)."""
    mant, expo, view = _BITS[np.dtype(x.dtype)]
    bits = np.ascontiguousarray(x).view(view).astype(np.int64)
    add = 1 << (mant - _E2M1_MANTISSA - 1)
    mask = ((1 << (expo + 1)) - 1) << mant
    return ((bits + add) & mask).astype(view).view(x.dtype)


def _fp4_codes(v: np.ndarray) -> np.ndarray:
    """E2M1 values (from `_round_to_fp4`) -> 4-bit codes ``sign << 3 | magnitude index``."""
    mags = np.asarray([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)
    idx = np.searchsorted(mags, np.abs(v).astype(np.float32))
    return (idx + 8 * np.signbit(v)).astype(np.uint8)


def quantize_mxfp4(name: str, w: np.ndarray, recipe: WeightRecipe) -> QArray:
    """Quantizes a float weight to MXFP4 (see the module docstring).

    Args:
        name: the tensor's name, for errors.
        w: float32 / float16 / bfloat16 [N, K], K even.
        recipe: a ``kind="mxfp4"`` recipe (group 32).

    Returns:
        a validated `QArray` (fp4 codes [N, K / 2], float8_e8m0fnu scales [N, ceil(K / 32)]).
    """
    n, k = check_weight(name, w)
    if k % 2:
        raise FormatError(f"K={k} is odd: 4-bit codes are packed two per byte along K", tensor=name)
    d = compute_dtype(w, recipe)
    x = np.asarray(w).astype(d, copy=False)
    block = scale_block(recipe, n, k)
    lo, hi = block_minmax(x, block)
    amax = np.maximum(np.abs(np.minimum(lo, d.type(0))), np.abs(np.maximum(hi, d.type(0))))
    p = round_to_power_2(amax)
    with np.errstate(divide="ignore"):
        e = (d.type(127) + np.floor(np.log2(p)).astype(d) - d.type(_E2M1_EMAX)).astype(d)
    e = np.rint(np.clip(e.astype(np.float32), 0, 255)).astype(np.uint8)  # -inf (amax 0) clamps to 0
    s = np.exp2(e.astype(np.float32) - 127).astype(d)
    s = np.where(s == 0, d.type(1), s).astype(d)
    v = np.clip((x / expand(s, block, (n, k))).astype(d), d.type(-6), d.type(6))
    codes = _fp4_codes(_round_to_fp4(v))
    scale = np.ascontiguousarray(e).view(ml_dtypes.float8_e8m0fnu)
    return QArray(data=pack_codes(codes, 4), scale=scale, qtype=fp4_e2m1, shape=(n, k), block=block).validate(name)


def quantize_fp6(name: str, w: np.ndarray, recipe: WeightRecipe) -> QArray:
    """Quantizes a float weight to fp6 e3m2 codes with a float32 scale per group (see the module docstring).

    Args:
        name: the tensor's name, for errors.
        w: float32 / float16 / bfloat16 [N, K].
        recipe: a ``kind="fp6"`` recipe.

    Returns:
        a validated `QArray` (``fp6_e3m2`` codes, one per byte [N, K], float32 scales).
    """
    n, k = check_weight(name, w)
    x = np.asarray(w).astype(np.float32)
    block = scale_block(recipe, n, k)
    lo, hi = block_minmax(x, block)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    s = (amax / np.float32(_E3M2_MAX)).astype(np.float32)
    s = np.where(s == 0, np.float32(1), s).astype(np.float32)
    v = np.clip(x / expand(s, block, (n, k)), np.float32(-_E3M2_MAX), np.float32(_E3M2_MAX))
    codes = v.astype(ml_dtypes.float6_e3m2fn).view(np.uint8)
    return QArray(
        data=np.ascontiguousarray(codes), scale=np.ascontiguousarray(s), qtype=fp6_e3m2, shape=(n, k), block=block
    ).validate(name)
