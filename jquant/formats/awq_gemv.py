"""AutoAWQ's GEMV and GEMV_FAST layouts (``quant_method: "awq"``, ``version: "gemv" | "gemv_fast"``).

Both hold the same 4-bit asymmetric group quantization as AWQ GEMM (``w = (q - z) * s``), stored
for AutoAWQ's decode kernels instead of its GEMM kernel. Read from AutoAWQ 0.2.9
(``awq/modules/linear/gemv.py WQLinear_GEMV``, ``awq/modules/linear/gemv_fast.py WQLinear_GEMVFast``);
vLLM never read either layout. Both pad the group axis to ``calculate_zeros_width(K, G) * 8``
entries (``ceil(K/G / 8)`` words, rounded up to a multiple of 2 for G = 64 and of 4 for G = 32;
AutoAWQ refuses any other G below 128); the padding is written as zeros and checked to be zero
here, so that dropping it loses nothing.

GEMV (``WQLinear_GEMV``), HF orientation, packed along K in plain order::

    qweight  int32 [N, K/8]            nibble i (bits 4i..4i+3) of word c = code of input channel 8c + i
    qzeros   int32 [N, W]              nibble i of word c = zero point of group 8c + i
    scales   f16   [N, 8W]             scales of groups 0..K/G-1, then zeros (padding)
    bias     f16   [N]                 optional

so ``qweight``'s little-endian bytes are already the canonical uint4 ``data``.

GEMV_FAST (``WQLinear_GEMVFast``, from TinyChat / llm-awq)::

    qweight  int16 [N/4, K]            `pack_intweight(codes, interleave=4, kstride=64)`, below
    scales   f16   [8W, N]             transposed, padded rows of zeros
    qzeros   f16   [8W, N]             ``-(scale * zero)`` rounded to f16 (a float offset)
    bias     f16   [N]                 optional

The kernel computes ``w = q * s + qzeros``; the canonical form keeps exactly that: qtype
``uint4``, a float zero ``= -qzeros`` (negation is exact), ``w = q*s - zero``. The integer zero
point is not recoverable bit-for-bit from the rounded product, so it is not reconstructed.

``pack_intweight`` (per row n of the codes [N, K], per 32 input channels, then 4-row tiles):
1. within 32 channels, ``reshape(4, 4, 2).transpose(1, 0, 2)`` (order 0,1,8,9,16,17,24,25,2,3,...);
2. within each 8, ``reshape(4, 2).transpose(1, 0)`` (order 0,2,4,6,1,3,5,7);
3. rows in tiles of 4 and channels in strides of 64: ``[N/4, 4, K/64, 64] -> [N/4, K/64, 4, 64]``,
   then *reshaped* (not transposed) to ``[N/4, K/64, 64, 4]`` and the last axis packed into one
   int16, element j at bits 4j. `_unpack_gemv_fast` inverts the three steps.
"""

from __future__ import annotations

import numpy as np

from jquant.core.errors import UnsupportedFormatError
from jquant.core.packing import int32_words_to_bytes, pack_codes, unpack_codes
from jquant.core.qarray import QArray, block_for
from jquant.core.qtypes import int_type
from jquant.formats._int_packed import _bias, _int32, _resolved_group, _scales, _unexpected, int_qarray
from jquant.formats.base import TensorGroup

__all__ = ["zeros_width", "unpack_gemv_fast_qweight", "convert_gemv_group", "convert_gemv_fast_group"]

_TENSORS = ("qweight", "qzeros", "scales", "bias")
_INTERLEAVE = 4  # WQLinear_GEMVFast.interleave
_KSTRIDE = 64  # pack_intweight(..., kstride=64)


def zeros_width(k: int, group_size: int) -> int | None:
    """AutoAWQ's ``calculate_zeros_width(K, G)``: int32 words per row of GEMV zero points.

    Returns None for a G AutoAWQ refuses (not >= 128, 64 or 32; it raises NotImplementedError).
    """
    mult = 1 if group_size >= 128 else {64: 2, 32: 4}.get(group_size)
    if mult is None:
        return None
    base = -(-(k // group_size) // 8)
    return -(-base // mult) * mult


def _width(group: TensorGroup, k: int, gs: int, group_size: int) -> int:
    w = zeros_width(k, gs)
    if w is None:
        raise group.error(
            "qzeros",
            f"group_size {group_size}: AutoAWQ's GEMV layouts only define group sizes >= 128, 64 and 32",
            UnsupportedFormatError,
        )
    return w


def _check_padding(group: TensorGroup, suffix: str, pad: np.ndarray, axis_name: str) -> None:
    bad = np.argwhere(pad.astype(np.float32) != 0) if pad.dtype.kind == "f" else np.argwhere(pad != 0)
    if bad.size:
        raise group.error(
            suffix,
            f"padding {axis_name} beyond the last group is not zero (first at {bad[0].tolist()} of the padding); "
            "AutoAWQ writes zeros there, so this is not a GEMV-layout tensor",
        )


def convert_gemv_group(group: TensorGroup, *, group_size: int) -> dict[str, QArray | np.ndarray]:
    """One AutoAWQ GEMV module (``qweight``, ``qzeros``, ``scales``, [``bias``]) -> canonical uint4.

    Args:
        group: the module's tensors (layout in the module docstring).
        group_size: G from the config, -1 for one group spanning K.

    Returns:
        ``{prefix.weight: QArray}`` (uint4 codes packed [N, K/2], f16 scales [N, K/G], uint8 zeros
        [N, K/G], or qtype ``uint4b8`` and no zeros when every zero point is 8) and the bias.

    Raises:
        FormatError: naming the tensor, for missing partners, wrong dtypes / shapes, non-finite
            scales, or non-zero padding.
        UnsupportedFormatError: a group size AutoAWQ's GEMV layout does not define.
    """
    _unexpected(group, _TENSORS, "AWQ GEMV")
    group.require("qweight", "qzeros", "scales")
    qweight = _int32(group, "qweight")
    n, c = qweight.shape
    k = c * 8
    gs = _resolved_group(group_size, k)
    if k % gs:
        raise group.error(
            "qweight",
            f"group_size {group_size} does not divide in_features K={k} (GEMV qweight is int32 [N, K/8]; "
            f"GEMM's is [K, N/8])",
        )
    ngroups = k // gs
    width = _width(group, k, gs, group_size)
    scales = _scales(
        group, (n, width * 8), " (GEMV: qweight int32 [N, K/8], scales [N, 8 * calculate_zeros_width(K, G)])"
    )
    qzeros = _int32(group, "qzeros")
    if qzeros.shape != (n, width):
        raise group.error("qzeros", f"shape {list(qzeros.shape)} but expected {[n, width]} for K={k}, N={n}, G={gs}")
    _check_padding(group, "scales", scales[:, ngroups:], "columns")
    zeros = unpack_codes(int32_words_to_bytes(qzeros, axis=1), 4)  # [N, 8W], plain nibble order
    _check_padding(group, "qzeros", zeros[:, ngroups:], "nibbles")
    codes = unpack_codes(int32_words_to_bytes(qweight, axis=1), 4)  # [N, K]
    q = int_qarray(codes.T, scales[:, :ngroups].T, zeros[:, :ngroups].T, bits=4, group_size=gs, perm=None)
    out: dict[str, QArray | np.ndarray] = {group.full_name("weight"): q}
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out


def unpack_gemv_fast_qweight(qweight: np.ndarray) -> np.ndarray:
    """GEMV_FAST ``qweight`` int16 [N/4, K] -> uint8 codes [N, K] (inverse of ``pack_intweight``)."""
    r, k = qweight.shape
    n, i, ks = r * _INTERLEAVE, _INTERLEAVE, _KSTRIDE
    u = qweight.view(np.uint16).astype(np.uint16)
    p = np.stack([(u >> (4 * j)) & 0xF for j in range(i)], axis=-1).astype(np.uint8)  # [N/4, K, 4]
    # step 3 undone: [N/4, K/64, 64, 4] -> (reshape) [N/4, K/64, 4, 64] -> [N/4, 4, K/64, 64] -> [N, K]
    p = p.reshape(r, k // ks, i, ks).transpose(0, 2, 1, 3).reshape(n, k)
    # step 2 undone: [.., 4, 2, 4] -> [.., 4, 4, 2]
    p = p.reshape(n, k // 32, 4, 2, 4).transpose(0, 1, 2, 4, 3)
    # step 1 undone: [.., 4(b), 4(a), 2] -> [.., 4(a), 4(b), 2]
    p = p.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(p.reshape(n, k))


def convert_gemv_fast_group(group: TensorGroup, *, group_size: int) -> dict[str, QArray | np.ndarray]:
    """One AutoAWQ GEMV_FAST module (int16 ``qweight``, f16 ``scales`` / ``qzeros``, [``bias``]) -> canonical.

    Args:
        group: the module's tensors (layout in the module docstring).
        group_size: G from the config, -1 for one group spanning K.

    Returns:
        ``{prefix.weight: QArray}`` with qtype ``uint4`` (codes packed [N, K/2]), f16 scales
        [N, K/G] and f16 float zeros ``-qzeros`` [N, K/G] (``w = q*s - zero``), and the bias.

    Raises:
        FormatError: naming the tensor, for missing partners, wrong dtypes / shapes, non-finite
            scales or offsets, or non-zero padding.
        UnsupportedFormatError: a group size AutoAWQ's GEMV layout does not define.
    """
    _unexpected(group, _TENSORS, "AWQ GEMV_FAST")
    group.require("qweight", "qzeros", "scales")
    qw = group.expect("qweight", dtypes=(np.int16, np.uint16))
    if qw.ndim != 2:
        raise group.error("qweight", f"shape {list(qw.shape)} but GEMV_FAST qweight is 2-D int16 [N/4, K]")
    r, k = qw.shape
    n = r * _INTERLEAVE
    if k % _KSTRIDE:
        raise group.error("qweight", f"K={k} (qweight cols) is not a multiple of {_KSTRIDE}, GEMV_FAST's k-stride")
    gs = _resolved_group(group_size, k)
    if k % gs:
        raise group.error("qweight", f"group_size {group_size} does not divide in_features K={k} (qweight cols)")
    ngroups = k // gs
    rows = _width(group, k, gs, group_size) * 8
    hint = " (GEMV_FAST: scales [8 * calculate_zeros_width(K, G), N], N = 4 * qweight rows)"
    scales = _scales(group, (rows, n), hint)
    qz = group.expect("qzeros", shape=(rows, n), dtypes=(np.float16, np.float32, "bfloat16"))
    bad = np.argwhere(~np.isfinite(qz.astype(np.float32)))
    if bad.size:
        raise group.error("qzeros", f"non-finite offset at {bad[0].tolist()} ({len(bad)} such values)")
    _check_padding(group, "scales", scales[ngroups:], "rows")
    _check_padding(group, "qzeros", qz[ngroups:], "rows")
    qtype = int_type(4)
    q = QArray(
        data=pack_codes(unpack_gemv_fast_qweight(qw), qtype.container_bits),
        scale=np.ascontiguousarray(scales[:ngroups].T),
        zero=np.ascontiguousarray(-qz[:ngroups].T),
        qtype=qtype,
        shape=(n, k),
        block=block_for(n, k, group_size=gs),
    )
    out: dict[str, QArray | np.ndarray] = {group.full_name("weight"): q}
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out
