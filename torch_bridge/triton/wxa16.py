"""Weight-only quantized matmul (W4A16, W8A16, fp8 / codebook weights) in Triton, on the canonical layout.

Computes ``y[m, n] = sum_k x[m, k] * W'[n, k]`` with ``W'`` the canonical ``QArray`` dequantized in
``data`` column order (activations are permuted by ``perm`` before the kernel; act-order GPTQ):

    code[n, k]  = (data[n, k // P] >> (BITS * (k % P))) & (2**BITS - 1)     # P = 8 // BITS codes per byte
    v           = code - BIAS | int8 code | fp8 code | e2m1 code | LUT[code] # VALUE (constexpr)
    s           = scale[n // SCALE_BN, k // SCALE_BK]                        # float32 (scale2 folded in)
    W'[n, k]    = v * s | (v - zero[..]) * s | v * s - zero[..]             # ZERO (constexpr)

Layouts read (the canonical ones, `jquant.core.qarray`): ``data`` uint8 [N, K / P] packed along K,
lowest bits first (4-bit: element 2i is the low nibble of byte i), or int8 / fp8 [N, K];
``scale`` float32 [ceil(N / SCALE_BN), ceil(K / SCALE_BK)]; ``zero`` uint8 codes or float32 of the
scale's shape. The only derived tensors are lossless dtype widenings of scale / float zero to
float32 (e8m0 / fp8 / bf16 / fp16 scales are exact in float32) with ``scale2`` multiplied in, which
is the spec's own first step.

A tile's scales are read as one column per tile row (``SCALE_GROUPS`` 1: the K tile lies in one
scale block), as ``G`` columns broadcast over ``SCALE_BK``-wide slices of the tile (``SCALE_GROUPS``
``G = BLOCK_K / SCALE_BK`` > 1: GGUF's 16 / 32-column groups, MXFP4 / NVFP4, g64 under 256-wide
tiles), or per element (0: block widths that are not powers of two); the first two keep the K tile
wide whatever the group.

Below ``PREFILL_DEQUANT_M`` rows K is split over a third grid axis (`configs.split_k_for`: enough
programs for 2-4 waves on the card's SMs; decode tiles read 128 code bytes per row per K step):
each program writes its float32 partial [M, N] tile to its own slice of a [SPLIT_K, M, N] buffer
and `splitk_reduce_kernel` sums the slices in order and casts, so results are bit-reproducible run
to run (no float atomics).

Per-element work is kept off the slow units, checked in the sm_90 PTX (tests/torch_bridge/run_aot.py):
sub-byte codes are dotted as P = 8 / BITS bit planes against the activation columns of stride P
(no interleaving of the tile back into K order; one vectorized load per code byte); integer codes
and zero points become floats through the 2^23 bit trick instead of int -> float conversions;
codebooks are gathered from the L1-resident table in 2-byte loads (a 4-byte gather per element
is made a shared-memory pipeline stage as large as the tile); e2m1 codes are decoded by bit
arithmetic. ``EVEN_K`` (no K tail) keeps the code loads' masks per row so they stay vectorized.
``TileConfig.swap_ab`` computes ``y.T = W' @ x.T`` instead (the dequantized tile as the MMA's A
operand, which lets Hopper's wgmma run with M = 16 tokens as its N).

The dequantized tile is multiplied in the activation dtype (fp16 / bf16, float32 accumulation) as
Marlin / vLLM do, or in float32 (``DOT_F32``: float32 activations, and the CPU interpreter, whose
bf16 ``tl.dot`` is broken). `dequantize_weight` writes the whole weight once with the same tile
code (`dequant_kernel`), for the vendor GEMM that routing picks from ``PREFILL_DEQUANT_M`` rows on
(``torch_triton_dequant_dot``; vLLM's AWQ layer does the same for large batches). Device-agnostic:
no CUDA-specific calls; the device is the tensors'.
"""

from __future__ import annotations

import enum
import functools

import torch
import triton
import triton.language as tl

from jquant.core.qtypes import E2M1_VALUES, QType
from torch_bridge.dequant import codebook
from torch_bridge.triton.configs import DEFAULT_SMS, TileConfig, dequant_config, interpret_wxa16_config, wxa16_config

__all__ = [
    "ValueKind",
    "ZeroKind",
    "value_kind",
    "wxa16_matmul",
    "wxa16_kernel",
    "splitk_reduce_kernel",
    "dequant_kernel",
    "dequantize_weight",
    "scale_groups",
]


class ValueKind(enum.IntEnum):
    """How a code becomes a value (the kernel's ``VALUE`` constexpr)."""

    INT = 0  # unsigned code minus a bias
    SIGNED = 1  # int8 storage
    FP8_E4M3 = 2  # float8_e4m3fn storage (read as uint8 bits, bitcast in the kernel)
    LUT = 3  # codebook table lookup
    FP8_E5M2 = 4  # float8_e5m2 storage
    E2M1 = 5  # fp4 e2m1 codes (MXFP4 / NVFP4), decoded arithmetically instead of a table gather


class ZeroKind(enum.IntEnum):
    NONE = 0
    INT = 1  # (v - z) * s, z unsigned codes
    FLOAT = 2  # v * s - z


def value_kind(q: QType) -> ValueKind:
    if q.codebook is not None:
        return ValueKind.E2M1 if tuple(q.codebook) == E2M1_VALUES else ValueKind.LUT
    if q.storage == "float8_e4m3fn":
        return ValueKind.FP8_E4M3
    if q.storage == "float8_e5m2":
        return ValueKind.FP8_E5M2
    return ValueKind.SIGNED if q.signed else ValueKind.INT


@triton.jit
def _values(code, lut, VALUE: tl.constexpr, BIAS: tl.constexpr):
    """Exact float32 values of a tile of codes (uint8 / int8 / int32); ``lut``: the `lut_table` pointer."""
    if VALUE == 0:
        # code - BIAS without an int -> float conversion (I2F issues at a fraction of the FP32
        # rate): the f32 with bits 0x4B000000 | c is 2^23 + c exactly, for any c < 2^23.
        v = (code.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + BIAS)
    elif VALUE == 1:  # int8: the same with the code shifted to 0..255
        v = ((code.to(tl.int32) + 128) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    elif VALUE == 3:
        # A gather from the L1-resident table (`lut_table`) in loads of 2 bytes: a 4-byte gather per
        # element is made a cp.async stage as large as the tile (140 KB of shared memory at 64x256 on
        # sm_90: one CTA per SM), and a register-table tl.gather lowers to ~8 shuffles per element.
        # Tables exact in float16 (IQ4_NL) take one load, others (NF4, bnb FP4) the two halves of
        # each float32 entry's bits.
        c = code.to(tl.int32)
        if lut.dtype.element_ty == tl.float16:
            v = tl.load(lut + c).to(tl.float32)
        else:
            t16 = lut.to(tl.pointer_type(tl.int16))
            lo = tl.load(t16 + 2 * c).to(tl.int32) & 0xFFFF
            hi = tl.load(t16 + 2 * c + 1).to(tl.int32)
            v = ((hi << 16) | lo).to(tl.float32, bitcast=True)
    elif VALUE == 2:
        v = code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    elif VALUE == 4:
        v = code.to(tl.float8e5, bitcast=True).to(tl.float32)
    else:
        # e2m1 s e e m: f16 bits (s << 15) | (e e m << 9) are the value times 2^-14 (exact; code 8 is
        # -0.0 as in the canonical table), as `jquant.pallas.wxa16_triton._e2m1_values`.
        c = code.to(tl.int32)
        bits = ((c & 8) << 12) | ((c & 7) << 9)
        v = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 16384.0
    return v


@triton.jit
def _scales(
    scale_ptr,
    zero_ptr,
    mask_n,
    srow,
    k0,
    offs_k,  # [1, W] K index of each tile column (read only when SCALE_GROUPS == 0)
    K,
    stride_sk,
    ZERO: tl.constexpr,
    SCALE_BK: tl.constexpr,
    SCALE_GROUPS: tl.constexpr,
):
    """``(s, z)`` float32 of a tile starting at column ``k0``: [BLOCK_N, 1] (one column per tile),
    [BLOCK_N, G, 1] (G groups, broadcast over each group's slice) or [BLOCK_N, W] (per element);
    ``z`` is ``s`` (unused) when ``ZERO == 0``."""
    G: tl.constexpr = SCALE_GROUPS if SCALE_GROUPS > 1 else 1
    if SCALE_GROUPS == 1:
        sp = srow[:, None] + (k0 // SCALE_BK) * stride_sk  # [BLOCK_N, 1]
        smask = mask_n[:, None]
    elif SCALE_GROUPS > 1:
        cols = k0 // SCALE_BK + tl.arange(0, G)  # [G] scale columns of the tile
        sp = srow[:, None] + cols[None, :] * stride_sk  # [BLOCK_N, G]
        smask = mask_n[:, None] & (cols[None, :] * SCALE_BK < K)
    else:
        sp = srow[:, None] + (offs_k // SCALE_BK) * stride_sk  # [BLOCK_N, W]
        smask = mask_n[:, None] & (offs_k < K)
    s = tl.load(scale_ptr + sp, mask=smask, other=0.0)
    z = s
    if ZERO == 1:
        zc = tl.load(zero_ptr + sp, mask=smask, other=0).to(tl.int32)
        z = (zc | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # as `_values`: no I2F
    elif ZERO == 2:
        z = tl.load(zero_ptr + sp, mask=smask, other=0.0)
    if SCALE_GROUPS > 1:
        s = s[:, :, None]
        z = z[:, :, None]
    return s, z


@triton.jit
def _apply(v, s, z, ZERO: tl.constexpr, SCALE_GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, W: tl.constexpr):
    """``W'`` [BLOCK_N, W] from values [BLOCK_N, W] and `_scales`' ``(s, z)``."""
    G: tl.constexpr = SCALE_GROUPS if SCALE_GROUPS > 1 else 1
    if SCALE_GROUPS > 1:
        v = v.reshape(BLOCK_N, G, W // G)
    if ZERO == 1:
        w = (v - z) * s
    elif ZERO == 2:
        w = v * s - z
    else:
        w = v * s
    if SCALE_GROUPS > 1:
        w = w.reshape(BLOCK_N, W)
    return w


@triton.jit
def _dequant_tile(
    data_ptr,
    scale_ptr,
    zero_ptr,
    lut_ptr,
    offs_n,  # [BLOCK_N] output rows
    mask_n,
    srow,  # [BLOCK_N] offsets of the rows' scale entries: (n // SCALE_BN) * stride_sn
    k0,  # first column of the tile
    K,
    stride_dn,
    stride_dk,
    stride_sk,
    BITS: tl.constexpr,
    VALUE: tl.constexpr,
    BIAS: tl.constexpr,
    ZERO: tl.constexpr,
    SCALE_BK: tl.constexpr,
    SCALE_GROUPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """float32 ``W'[offs_n, k0:k0 + BLOCK_K]``: one [BLOCK_N, BLOCK_K] tile of the canonical weight.

    ``SCALE_GROUPS``: 1, one scale column per tile (BLOCK_K divides SCALE_BK, or SCALE_BK >= K);
    G > 1, G = BLOCK_K / SCALE_BK columns, each broadcast over its SCALE_BK-wide slice; 0, per element.
    """
    P: tl.constexpr = 8 // BITS
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    # The tile is [BLOCK_N, BLOCK_K]: K is contiguous in memory, as `data` is stored.
    wmask = mask_n[:, None] if EVEN_K else mask_n[:, None] & mask_k[None, :]
    if BITS == 8:
        code = tl.load(data_ptr + offs_n[:, None] * stride_dn + offs_k[None, :] * stride_dk, mask=wmask, other=0)
    elif BITS == 4:
        # Whole bytes [BLOCK_N, BLOCK_K / 2] (vectorized loads), then nibbles interleaved back in
        # place: join(lo, hi)[n, i, j] is code 2i + j, so a row-major reshape is K order.
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        bmask = mask_n[:, None] if EVEN_K else mask_n[:, None] & (offs_b[None, :] * 2 < K)
        raw = tl.load(data_ptr + offs_n[:, None] * stride_dn + offs_b[None, :] * stride_dk, mask=bmask, other=0)
        code = tl.join(raw & 0xF, raw >> 4).reshape(BLOCK_N, BLOCK_K)
    else:  # 1- / 2-bit containers: byte k // P of the row, shifted to code k % P
        raw = tl.load(data_ptr + offs_n[:, None] * stride_dn + (offs_k[None, :] // P) * stride_dk, mask=wmask, other=0)
        code = (raw.to(tl.int32) >> ((offs_k[None, :] % P) * BITS)) & ((1 << BITS) - 1)
    v = _values(code, lut_ptr, VALUE, BIAS)
    s, z = _scales(scale_ptr, zero_ptr, mask_n, srow, k0, offs_k[None, :], K, stride_sk, ZERO, SCALE_BK, SCALE_GROUPS)
    return _apply(v, s, z, ZERO, SCALE_GROUPS, BLOCK_N, BLOCK_K)


@triton.jit
def _dot(x, w, acc, DOT_F32: tl.constexpr, dtype: tl.constexpr, SWAP_AB: tl.constexpr):
    """``acc + x @ w.T`` [BLOCK_M, BLOCK_N], or with ``SWAP_AB`` ``acc + w @ x.T`` [BLOCK_N, BLOCK_M]
    (float32 accumulation; the weight rounded to the activation dtype unless DOT_F32)."""
    if SWAP_AB and DOT_F32:
        out = tl.dot(w, tl.trans(x.to(tl.float32)), acc, input_precision="ieee")
    elif SWAP_AB:
        out = tl.dot(w.to(dtype), tl.trans(x), acc)
    elif DOT_F32:
        out = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
    else:
        out = tl.dot(x, tl.trans(w.to(dtype)), acc)
    return out


@triton.jit
def wxa16_kernel(
    x_ptr,  # [M, K] activations (fp16 / bf16 / fp32), already permuted by perm
    data_ptr,  # [N, K // P] uint8 packed codes, or [N, K] int8 / fp8 bits as uint8
    scale_ptr,  # [ceil(N / SCALE_BN), ceil(K / SCALE_BK)] float32
    zero_ptr,  # same shape as scale: uint8 codes or float32 offsets (unused if ZERO == 0)
    lut_ptr,  # [2**BITS] float32 / float16 code values (`lut_table`; unused unless VALUE == 3)
    y_ptr,  # [M, N] output (x dtype), or float32 [SPLIT_K, M, N] partials when SPLIT_K > 1
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_dn,
    stride_dk,
    stride_sn,
    stride_sk,
    stride_ys,  # between split-K partials (unused when SPLIT_K == 1)
    stride_ym,
    stride_yn,
    BITS: tl.constexpr,
    VALUE: tl.constexpr,
    BIAS: tl.constexpr,
    ZERO: tl.constexpr,
    SCALE_BN: tl.constexpr,
    SCALE_BK: tl.constexpr,
    SCALE_GROUPS: tl.constexpr,  # scale columns per K tile (`scale_groups`; 0: per element)
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SWAP_AB: tl.constexpr,  # accumulate y.T = W' @ x.T: the dequantized tile is the MMA's A operand
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    srow = (offs_n // SCALE_BN) * stride_sn  # [BLOCK_N]
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    # Sub-byte codes as P = 8 / BITS bit planes: plane p of byte j is column k0 + P*j + p, dotted with
    # the activation columns of stride P, so codes are never interleaved back into K order (no join /
    # reshape of the tile, one whole-byte load per code byte). A scale group of SCALE_BK columns is
    # SCALE_BK / P columns of each plane, so the grouped broadcast keeps its shape at width BLOCK_K / P.
    # tl.dot needs K >= 16 per plane.
    P: tl.constexpr = 8 // BITS
    H: tl.constexpr = BLOCK_K // P
    PLANES: tl.constexpr = BITS < 8 and H >= 16
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Split s takes the contiguous run of K tiles [s * per, min((s + 1) * per, k_tiles)).
    k_tiles = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(k_tiles, SPLIT_K)
    t_end = tl.minimum(pid_k * per + per, k_tiles)
    for t in range(pid_k * per, t_end):
        k0 = t * BLOCK_K
        if PLANES:
            offs_b = t * H + tl.arange(0, H)  # (k0 // P written so the compiler sees the alignment)
            # Without a K tail the mask is per row: a mask on offs_b * P hides the bytes' contiguity
            # from the compiler, which then loads them one at a time.
            bmask = mask_n[:, None] if EVEN_K else mask_n[:, None] & (offs_b[None, :] * P < K)
            raw = tl.load(data_ptr + offs_n[:, None] * stride_dn + offs_b[None, :] * stride_dk, mask=bmask, other=0)
            raw = raw.to(tl.int32)
            offs_c = offs_b * P  # [H] the column of each byte's plane 0
            s, z = _scales(scale_ptr, zero_ptr, mask_n, srow, k0, offs_c[None, :], K, stride_sk, ZERO, SCALE_BK,
                           SCALE_GROUPS)  # fmt: skip
            if P == 2:  # the activation tile loaded whole (vectorized), split into even / odd columns
                offs_k = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(
                    x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & (offs_k[None, :] < K),
                    other=0.0,
                )
                xe, xo = tl.split(x.reshape(BLOCK_M, H, 2))
                lo = _apply(_values(raw & 0xF, lut_ptr, VALUE, BIAS), s, z, ZERO, SCALE_GROUPS, BLOCK_N, H)
                if SCALE_GROUPS == 0:  # per element: the odd columns have their own scale entries
                    s, z = _scales(scale_ptr, zero_ptr, mask_n, srow, k0, offs_c[None, :] + 1, K, stride_sk, ZERO,
                                   SCALE_BK, 0)  # fmt: skip
                hi = _apply(_values(raw >> 4, lut_ptr, VALUE, BIAS), s, z, ZERO, SCALE_GROUPS, BLOCK_N, H)
                acc = _dot(xe, lo, acc, DOT_F32, dtype, SWAP_AB)
                acc = _dot(xo, hi, acc, DOT_F32, dtype, SWAP_AB)
            else:  # 2- / 1-bit: P strided activation loads
                for p in tl.static_range(P):
                    if SCALE_GROUPS == 0:
                        s, z = _scales(scale_ptr, zero_ptr, mask_n, srow, k0, offs_c[None, :] + p, K, stride_sk,
                                       ZERO, SCALE_BK, 0)  # fmt: skip
                    v = _values((raw >> (p * BITS)) & ((1 << BITS) - 1), lut_ptr, VALUE, BIAS)
                    w = _apply(v, s, z, ZERO, SCALE_GROUPS, BLOCK_N, H)
                    xp = tl.load(
                        x_ptr + offs_m[:, None] * stride_xm + (offs_c[None, :] + p) * stride_xk,
                        mask=mask_m[:, None] & (offs_c[None, :] + p < K),
                        other=0.0,
                    )
                    acc = _dot(xp, w, acc, DOT_F32, dtype, SWAP_AB)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=mask_m[:, None] & (offs_k[None, :] < K),
                other=0.0,
            )
            w = _dequant_tile(
                data_ptr, scale_ptr, zero_ptr, lut_ptr, offs_n, mask_n, srow, k0, K, stride_dn, stride_dk,
                stride_sk, BITS, VALUE, BIAS, ZERO, SCALE_BK, SCALE_GROUPS, BLOCK_N, BLOCK_K, EVEN_K,
            )  # fmt: skip
            acc = _dot(x, w, acc, DOT_F32, dtype, SWAP_AB)
    if SWAP_AB:
        y_ptrs = y_ptr + pid_k * stride_ys + offs_n[:, None] * stride_yn + offs_m[None, :] * stride_ym
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])
    else:
        y_ptrs = y_ptr + pid_k * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def splitk_reduce_kernel(
    p_ptr,  # [SPLIT_K, size] float32 partials, contiguous
    y_ptr,  # [size] output, contiguous
    size,
    SPLIT_K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``y = sum_s p[s]`` in split order (deterministic), cast to y's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    acc = tl.load(p_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(p_ptr + s * size + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


REDUCE_BLOCK = 1024


@triton.jit
def dequant_kernel(
    data_ptr,
    scale_ptr,
    zero_ptr,
    lut_ptr,
    out_ptr,  # [N, K] in the activation dtype
    N,
    K,
    stride_dn,
    stride_dk,
    stride_sn,
    stride_sk,
    stride_on,
    stride_ok,
    BITS: tl.constexpr,
    VALUE: tl.constexpr,
    BIAS: tl.constexpr,
    ZERO: tl.constexpr,
    SCALE_BN: tl.constexpr,
    SCALE_BK: tl.constexpr,
    SCALE_GROUPS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``out = W'`` (data column order): the prefill path's one pass over the codes."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    srow = (offs_n // SCALE_BN) * stride_sn
    w = _dequant_tile(
        data_ptr, scale_ptr, zero_ptr, lut_ptr, offs_n, mask_n, srow, k0, K, stride_dn, stride_dk, stride_sk,
        BITS, VALUE, BIAS, ZERO, SCALE_BK, SCALE_GROUPS, BLOCK_N, BLOCK_K, EVEN_K,
    )  # fmt: skip
    tl.store(
        out_ptr + offs_n[:, None] * stride_on + offs_k[None, :] * stride_ok,
        w.to(out_ptr.dtype.element_ty),
        mask=mask_n[:, None] if EVEN_K else mask_n[:, None] & (offs_k[None, :] < K),
    )


def lut_table(qtype: QType, device: torch.device | str = "cpu") -> torch.Tensor:
    """The kernels' codebook of ``qtype``: float16 [2**bits] when every value is exact in float16
    (one 2-byte gather per code), else the float32 table (gathered as two 2-byte halves)."""
    t = codebook(qtype, device)
    return t.half() if lut_is_f16(qtype) else t


def lut_is_f16(qtype: QType) -> bool:
    values = torch.tensor(qtype.codebook, dtype=torch.float32)
    return bool(torch.equal(values.half().float(), values))


def is_interpreter() -> bool:
    """Whether the kernels were built for the Triton CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return not isinstance(wxa16_kernel, triton.runtime.JITFunction)


def scale_groups(scale_bk: int, k: int, block_k: int) -> int:
    """`_dequant_tile`'s ``SCALE_GROUPS``: scale columns one K tile reads (1: one per row; G > 1:
    BLOCK_K / SCALE_BK groups broadcast over the tile; 0: per-element gather, for widths that
    neither divide nor are divided by ``block_k``)."""
    if scale_bk >= k or scale_bk % block_k == 0:
        return 1
    if block_k % scale_bk == 0 and scale_bk & (scale_bk - 1) == 0:
        return block_k // scale_bk
    return 0


def weight_constexprs(qtype: QType, block: tuple[int, int], k: int, zero_kind: ZeroKind, block_k: int) -> dict:
    """The constexprs of `_dequant_tile` for one weight and K tile."""
    bn, bk = block
    return dict(
        BITS=qtype.container_bits,
        VALUE=int(value_kind(qtype)),
        BIAS=int(qtype.bias),
        ZERO=int(zero_kind),
        SCALE_BN=int(bn),
        SCALE_BK=int(bk),
        SCALE_GROUPS=scale_groups(int(bk), k, block_k),
        EVEN_K=k % block_k == 0,  # no K tail: masks per row only (keeps the code loads vectorized)
    )


def kernel_constexprs(
    qtype: QType,
    block: tuple[int, int],
    k: int,
    zero_kind: ZeroKind,
    x_dtype: torch.dtype,
    config: TileConfig,
    dot_f32: bool | None = None,
) -> dict:
    """The constexpr arguments of `wxa16_kernel` for one weight / activation dtype / config."""
    return dict(
        **weight_constexprs(qtype, block, k, zero_kind, config.block_k),
        DOT_F32=bool(x_dtype == torch.float32 or is_interpreter()) if dot_f32 is None else dot_f32,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        SPLIT_K=config.split_k,
        SWAP_AB=config.swap_ab,
    )


def _zero_kind(zero: torch.Tensor | None) -> ZeroKind:
    if zero is None:
        return ZeroKind.NONE
    return ZeroKind.FLOAT if zero.dtype.is_floating_point else ZeroKind.INT


def _weight_ptrs(data, scale, zero, lut) -> tuple[torch.Tensor, ...]:
    """`_dequant_tile`'s weight pointers; the scale stands in for an absent zero / LUT (never read)."""
    if data.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        data = data.view(torch.uint8)  # masked loads need an integer `other`; bitcast back in the kernel
    return data, scale, scale if zero is None else zero, scale if lut is None else lut


def dequantize_weight(
    data: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    lut: torch.Tensor | None,
    qtype: QType,
    shape: tuple[int, int],
    block: tuple[int, int],
    dtype: torch.dtype,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """``W'`` [N, K] in ``dtype`` (data column order) in one pass: `dequant_kernel`. Arguments as `wxa16_matmul`."""
    n, k = shape
    if config is None:
        config = dequant_config(k, block[1])
    out = torch.empty((n, k), device=data.device, dtype=dtype)
    ptrs = _weight_ptrs(data, scale, zero, lut)
    grid = (triton.cdiv(n, config.block_n), triton.cdiv(k, config.block_k))
    dequant_kernel[grid](
        *ptrs, out, n, k,
        ptrs[0].stride(0), ptrs[0].stride(1), scale.stride(0), scale.stride(1), out.stride(0), out.stride(1),
        num_warps=config.num_warps, num_stages=config.num_stages, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        **weight_constexprs(qtype, block, k, _zero_kind(zero), config.block_k),
    )  # fmt: skip
    return out


def wxa16_matmul(
    x: torch.Tensor,
    data: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    lut: torch.Tensor | None,
    qtype: QType,
    shape: tuple[int, int],
    block: tuple[int, int],
    config: TileConfig | None = None,
) -> torch.Tensor:
    """``x @ W'.T`` for a canonical weight (scale already float32 with scale2 folded in).

    Args:
        x: [M, K] fp16 / bf16 / fp32, columns already in ``data`` order (``x[:, perm]``).
        data: canonical codes [N, K * c / 8] uint8, or [N, K] int8 / float8.
        scale: float32 [ceil(N / bn), ceil(K / bk)].
        zero: None, uint8 codes, or float32 offsets, of the scale's shape.
        lut: `lut_table` (float16 or float32 [2**bits] code values) for codebook qtypes, else None.
        qtype, shape, block: the weight's static description.
        config: tiles; default `wxa16_config` (or the interpreter's, `interpret_wxa16_config`).

    Returns:
        [M, N] in ``x.dtype``.
    """
    m, k = x.shape
    n = shape[0]
    if k != shape[1]:
        raise ValueError(f"x has K={k}, weight has K={shape[1]}")
    if config is None:
        if is_interpreter():
            config = interpret_wxa16_config(m, n, k)
        else:
            config = wxa16_config(m, n, k, block[1], x.element_size(), num_sms(x), qtype.container_bits)
    split = config.split_k
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    # split-K: float32 partials [split, M, N], summed in order by `splitk_reduce_kernel` (deterministic)
    part = torch.empty((split, m, n), device=x.device, dtype=torch.float32) if split > 1 else y[None]
    ptrs = _weight_ptrs(data, scale, zero, lut)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
    wxa16_kernel[grid](
        x, *ptrs, part, m, n, k,
        x.stride(0), x.stride(1), ptrs[0].stride(0), ptrs[0].stride(1), scale.stride(0), scale.stride(1),
        part.stride(0), part.stride(1), part.stride(2),
        num_warps=config.num_warps, num_stages=config.num_stages,
        **kernel_constexprs(qtype, block, k, _zero_kind(zero), x.dtype, config),
    )  # fmt: skip
    if split > 1:
        splitk_reduce_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)](
            part, y, m * n, SPLIT_K=split, BLOCK=REDUCE_BLOCK, num_warps=4
        )
    return y


def num_sms(x: torch.Tensor) -> int:
    """Streaming multiprocessors of ``x``'s CUDA device (`configs.DEFAULT_SMS` elsewhere: H100 SXM)."""
    if x.device.type == "cuda":
        return _cuda_sms(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return DEFAULT_SMS


@functools.cache
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
