"""BitBLAS-repacked GPTQ checkpoints (GPTQModel ``checkpoint_format: "bitblas"`` / ``is_bitblas_format``).

GPTQModel's BitBLAS QuantLinear (``gptqmodel/nn_modules/qlinear/bitblas.py``, ``BitblasLinear``,
commit ``00fa60ac``; before it ``qlinear_bitblas.py BitBLASQuantLinear``, commit ``03261094``)
repacks a GPTQ module with BitBLAS's ``Matmul.weight_transform`` (microsoft/BitBLAS
``bitblas/ops/general_matmul/__init__.py``, commit ``017b0a7d``) and saves what it holds:

* ``qweight`` int8 [N, K*b/8]: the codes in HF orientation (row n = output channel), packed along
  K by ``general_compress`` (``bitblas/quantization/utils.py``; the TIR ``QuantCompress`` op is the
  same loop): byte j holds codes ``j*8/b ... j*8/b + 8/b - 1`` at bit ``b*i``, lowest first, so
  the bytes read as little-endian int32 words are GPTQ's bitstream along K. 8-bit codes are not
  compressed (one code per byte).
* with ``fast_decoding`` each int32 word is then permuted by ``interleave_weight`` (``LOP3Permutate``,
  ``target_dtype="float16"``): code ``o`` of the word moves to bit ``(o % 2) * 16 + (o // 2) * b``
  (even codes fill the low half-word, odd codes the high one, for the LOP3 fp16 decode); for
  2 bits bytes 1 and 2 of the word are then swapped. BitBLAS decides it in
  ``MatmulConfig.__initialize_fast_decoding``: on for 1/2/4-bit integer weights with float16
  activations, off for bfloat16 activations and for 8-bit weights. GPTQModel does not pass the
  flag, and its activation dtype is the dtype it stores ``scales`` in, so the ``scales`` dtype on
  disk tells: float16 -> interleaved, bfloat16 -> plain ``general_compress``.
* no layout propagation: GPTQModel passes ``M`` as a list of sizes (``opt_features``), which
  ``MatmulConfig.__initialize_propagate`` turns into ``propagate_b = NonTransform``, so the
  hardware-dependent ``LadderPermutate`` (tensor-core fragment) layout never reaches the file.
* ``scales`` [N, K/G] float16 / bfloat16 (GPTQ's [K/G, N] transposed).
* zero points ``qzeros`` (``BitblasLinear``, asymmetric only; symmetric modules store an empty
  tensor and BitBLAS's ``int{b}`` weights mean ``q - 2**(b-1)``) or ``zeros``
  (``BitBLASQuantLinear``, always): uint codes [K/G, N] packed along N by ``general_compress``
  (int8 [K/G, N*b/8]) in ``zeros_mode="quantized"``: ``w = (q - z) * s``, z read as stored (no
  GPTQ v1 ``+1``: GPTQModel repacks from its v2 in-memory zero points).

BitBLAS has no act-order (GPTQModel ``SUPPORTS_DESC_ACT = [False]``): no ``g_idx``. 1-bit
weights are refused: BitBLAS's numpy ``interleave_weight`` and its TIR ``LOP3Permutate`` disagree
for 1-bit float16 (the numpy one drops its final byte shuffle), so which one wrote a file is
unknowable.
"""

from __future__ import annotations

import numpy as np

from jquant.core.errors import UnsupportedFormatError
from jquant.core.packing import unpack_bitstream
from jquant.core.qarray import QArray
from jquant.formats._int_packed import IntScheme, _bias, _unexpected, int_qarray
from jquant.formats.base import TensorGroup

__all__ = ["BITBLAS_BITS", "convert_bitblas_group", "deinterleave_weight", "unpack_bitblas"]

BITBLAS_BITS = (2, 4, 8)
_TENSORS = ("qweight", "qzeros", "zeros", "scales", "bias", "g_idx")
_SCALE_DTYPES = ("float16", "bfloat16")


def deinterleave_weight(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of BitBLAS ``interleave_weight(target_dtype="float16")`` on int32 words (any shape).

    Args:
        words: int32 / uint32 words as ``interleave_weight`` left them.
        bits: 2 or 4 (the widths BitBLAS fast-decodes and jquant reads).

    Returns:
        uint32 words of the same shape in ``general_compress`` order (code o at bit ``b*o``).
    """
    w = np.asarray(words).view(np.uint32)
    if bits == 2:  # undo the swap of bytes 1 and 2 (an involution)
        w = (w & np.uint32(0xFF0000FF)) | ((w & np.uint32(0x0000FF00)) << 8) | ((w & np.uint32(0x00FF0000)) >> 8)
    mask = np.uint32((1 << bits) - 1)
    out = np.zeros_like(w)
    for o in range(32 // bits):  # offset o = i * elems_per_group + j in BitBLAS's loop
        shift = (o % 2) * 16 + (o // 2) * bits
        out |= ((w >> np.uint32(shift)) & mask) << np.uint32(bits * o)
    return out


def unpack_bitblas(packed: np.ndarray, bits: int, count: int, *, fast_decoding: bool) -> np.ndarray:
    """BitBLAS int8 bytes [R, count*b/8] (``general_compress`` along the last axis) -> uint8 codes [R, count].

    Args:
        packed: int8 / uint8 [R, count*bits/8].
        bits: 2, 4 or 8.
        count: codes per row.
        fast_decoding: undo ``interleave_weight`` first (weights only; zero points never are).
    """
    by = np.ascontiguousarray(np.asarray(packed).view(np.uint8))
    if bits == 8:
        return by[:, :count].copy()
    words = by.view("<u4")
    if fast_decoding:
        words = deinterleave_weight(words, bits)
    return unpack_bitstream(words.view(np.int32), bits, count, axis=1)


def _int8(group: TensorGroup, suffix: str, want: tuple[int, int], what: str) -> np.ndarray:
    group.require(suffix)
    dt = group.dtype(suffix)
    if dt not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise group.error(suffix, f"dtype {dt.name} but BitBLAS stores {what} as int8 bytes")
    if group.shape(suffix) != want:
        raise group.error(suffix, f"shape {list(group.shape(suffix))} but expected {list(want)} ({what})")
    return np.asarray(group[suffix])


def convert_bitblas_group(group: TensorGroup, scheme: IntScheme) -> dict[str, QArray | np.ndarray]:
    """One BitBLAS-repacked GPTQ module (layout in the module docstring) -> canonical QArray.

    Args:
        group: ``qweight`` int8 [N, K*b/8], ``scales`` [N, K/G] float16 / bfloat16, ``qzeros`` or
            ``zeros`` int8 [K/G, N*b/8] (absent or empty when symmetric), [``bias``], [``g_idx``
            = k // G only].
        scheme: bits (2, 4, 8) and group size from the config (``dynamic`` resolved).

    Returns:
        ``{prefix.weight: QArray}`` exactly as the GPTQ module it was repacked from converts
        (``uint{b}b{2**(b-1)}`` when every zero point is the midpoint, else ``uint{b}`` + zeros),
        and the bias.

    Raises:
        FormatError: naming the tensor: unsupported bits, wrong dtypes / shapes, non-finite
            scales, both ``qzeros`` and ``zeros``, a non-trivial ``g_idx``.
    """
    _unexpected(group, _TENSORS, "BitBLAS")
    b = scheme.bits
    if b not in BITBLAS_BITS:
        raise group.error(
            "qweight", f"{b}-bit BitBLAS weights are not supported (reads {BITBLAS_BITS}; module docstring)",
            UnsupportedFormatError,
        )  # fmt: skip
    group.require("qweight", "scales")
    sdt = group.dtype("scales")
    if sdt.name not in _SCALE_DTYPES:
        raise group.error(
            "scales", f"dtype {sdt.name}: BitBLAS scales are float16 or bfloat16 (their dtype sets fast decoding)"
        )
    if group.dtype("qweight") not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise group.error("qweight", f"dtype {group.dtype('qweight').name} but BitBLAS stores codes as int8 bytes")
    if len(group.shape("qweight")) != 2 or len(group.shape("scales")) != 2:
        raise group.error("qweight", f"shape {list(group.shape('qweight'))}: BitBLAS qweight is int8 [N, K*{b}/8]")
    n, kb = group.shape("qweight")
    k = kb * 8 // b
    if (k * b) % 32:
        raise group.error("qweight", f"K={k} is not a multiple of {32 // b}: BitBLAS packs whole int32 words along K")
    gs = k if scheme.group_size == -1 else scheme.group_size
    if k % gs:
        raise group.error("qweight", f"group_size {scheme.group_size} does not divide in_features K={k}")
    ngroups = k // gs
    if group.shape("scales") != (n, ngroups):
        raise group.error(
            "scales", f"shape {list(group.shape('scales'))} but expected {[n, ngroups]} (BitBLAS: [N, K/G])"
        )
    scales = np.asarray(group["scales"])
    bad = np.argwhere(~np.isfinite(scales.astype(np.float32)))
    if bad.size:
        raise group.error(
            "scales", f"non-finite scale {scales[tuple(bad[0])]} at {bad[0].tolist()} ({len(bad)} such values)"
        )
    qweight = _int8(group, "qweight", (n, kb), f"{b}-bit codes packed along K")
    # BitBLAS MatmulConfig.__initialize_fast_decoding: float16 activations (= the scales' dtype in
    # GPTQModel) and sub-byte integer weights; bfloat16 and 8-bit weights are never interleaved.
    fast = sdt.name == "float16" and b < 8
    codes = unpack_bitblas(qweight, b, k, fast_decoding=fast)  # [N, K]
    present = [s for s in ("qzeros", "zeros") if s in group and int(np.prod(group.shape(s))) > 0]
    if len(present) > 1:
        raise group.error("zeros", "both qzeros and zeros are stored; a BitBLAS module holds one of them")
    if present:
        if (n * b) % 32:
            raise group.error(present[0], f"N={n} is not a multiple of {32 // b}: zero points fill whole int32 words")
        z = _int8(group, present[0], (ngroups, n * b // 8), f"{b}-bit zero points packed along N")
        zeros = unpack_bitblas(z, b, n, fast_decoding=False)  # [K/G, N]
    else:  # symmetric: BitBLAS int{b} weights are biased codes, w = s * (q - 2**(b-1))
        zeros = np.full((ngroups, n), 1 << (b - 1), np.uint8)
    if "g_idx" in group:
        g = np.asarray(group["g_idx"])
        if g.shape != (k,) or not np.array_equal(g, np.arange(k) // gs):
            raise group.error("g_idx", "act-order g_idx, but BitBLAS kernels have no act-order (groups are k // G)")
    q = int_qarray(
        np.ascontiguousarray(codes.T), np.ascontiguousarray(scales.T), zeros, bits=b, group_size=gs, perm=None
    )
    out: dict[str, QArray | np.ndarray] = {group.full_name("weight"): q}
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out
