"""Weight-only quantized matmul (W4A16, W8A16, fp8 / codebook weights) in Triton, on the canonical layout.

Computes ``y[m, n] = sum_k x[m, k] * W'[n, k]`` with ``W'`` the canonical ``QArray`` dequantized in
``data`` column order (activations are permuted by ``perm`` before the kernel; act-order GPTQ):

    code[n, k]  = (data[n, k // P] >> (BITS * (k % P))) & (2**BITS - 1)     # P = 8 // BITS codes per byte
    v           = code - BIAS | int8 code | fp8 code | LUT[code]            # VALUE (constexpr)
    s           = scale[n // SCALE_BN, k // SCALE_BK]                        # float32 (scale2 folded in)
    W'[n, k]    = v * s | (v - zero[..]) * s | v * s - zero[..]             # ZERO (constexpr)

Layouts read (the canonical ones, `jquant.core.qarray`): ``data`` uint8 [N, K / P] packed along K,
lowest bits first (4-bit: element 2i is the low nibble of byte i), or int8 / fp8 [N, K];
``scale`` float32 [ceil(N / SCALE_BN), ceil(K / SCALE_BK)]; ``zero`` uint8 codes or float32 of the
scale's shape. The only derived tensors are lossless dtype widenings of scale / float zero to
float32 (e8m0 / fp8 / bf16 / fp16 scales are exact in float32) with ``scale2`` multiplied in, which
is the spec's own first step.

The dequantized tile is multiplied in the activation dtype (fp16 / bf16, float32 accumulation) as
Marlin / vLLM do, or in float32 (``DOT_F32``: float32 activations, and the CPU interpreter, whose
bf16 ``tl.dot`` is broken). `dequantize_weight` writes the whole weight once with the same tile
code (`dequant_kernel`), for the vendor GEMM that routing picks from ``PREFILL_DEQUANT_M`` rows on
(``torch_triton_dequant_dot``; vLLM's AWQ layer does the same for large batches). Device-agnostic:
no CUDA-specific calls; the device is the tensors'.
"""

from __future__ import annotations

import enum

import torch
import triton
import triton.language as tl

from jquant.core.qtypes import QType
from torch_bridge.triton.configs import INTERPRET_CONFIG, TileConfig, dequant_config, wxa16_config

__all__ = ["ValueKind", "ZeroKind", "value_kind", "wxa16_matmul", "wxa16_kernel", "dequant_kernel", "dequantize_weight"]


class ValueKind(enum.IntEnum):
    """How a code becomes a value (the kernel's ``VALUE`` constexpr)."""

    INT = 0  # unsigned code minus a bias
    SIGNED = 1  # int8 storage
    FP8_E4M3 = 2  # float8_e4m3fn storage (read as uint8 bits, bitcast in the kernel)
    LUT = 3  # codebook table lookup
    FP8_E5M2 = 4  # float8_e5m2 storage


class ZeroKind(enum.IntEnum):
    NONE = 0
    INT = 1  # (v - z) * s, z unsigned codes
    FLOAT = 2  # v * s - z


def value_kind(q: QType) -> ValueKind:
    if q.codebook is not None:
        return ValueKind.LUT
    if q.storage == "float8_e4m3fn":
        return ValueKind.FP8_E4M3
    if q.storage == "float8_e5m2":
        return ValueKind.FP8_E5M2
    return ValueKind.SIGNED if q.signed else ValueKind.INT


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
    SCALE_ROW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """float32 ``W'[offs_n, k0:k0 + BLOCK_K]``: one [BLOCK_N, BLOCK_K] tile of the canonical weight."""
    P: tl.constexpr = 8 // BITS
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    # The tile is [BLOCK_N, BLOCK_K]: K is contiguous in memory, as `data` is stored.
    wmask = mask_n[:, None] & mask_k[None, :]
    if BITS == 8:
        code = tl.load(data_ptr + offs_n[:, None] * stride_dn + offs_k[None, :] * stride_dk, mask=wmask, other=0)
    elif BITS == 4:
        # Whole bytes [BLOCK_N, BLOCK_K / 2] (vectorized loads), then nibbles interleaved back in
        # place: join(lo, hi)[n, i, j] is code 2i + j, so a row-major reshape is K order.
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        bmask = mask_n[:, None] & (offs_b[None, :] < K // 2)
        raw = tl.load(data_ptr + offs_n[:, None] * stride_dn + offs_b[None, :] * stride_dk, mask=bmask, other=0)
        code = tl.join(raw & 0xF, raw >> 4).reshape(BLOCK_N, BLOCK_K)
    else:  # 1- / 2-bit containers: byte k // P of the row, shifted to code k % P
        raw = tl.load(data_ptr + offs_n[:, None] * stride_dn + (offs_k[None, :] // P) * stride_dk, mask=wmask, other=0)
        code = (raw.to(tl.int32) >> ((offs_k[None, :] % P) * BITS)) & ((1 << BITS) - 1)
    if VALUE == 0:
        v = (code.to(tl.int32) - BIAS).to(tl.float32)
    elif VALUE == 3:
        v = tl.load(lut_ptr + code.to(tl.int32))
    elif VALUE == 2:
        v = code.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    elif VALUE == 4:
        v = code.to(tl.float8e5, bitcast=True).to(tl.float32)
    else:
        v = code.to(tl.float32)
    if SCALE_ROW:
        sp = srow[:, None] + (k0 // SCALE_BK) * stride_sk  # [BLOCK_N, 1]
        smask = mask_n[:, None]
    else:
        sp = srow[:, None] + (offs_k[None, :] // SCALE_BK) * stride_sk  # [BLOCK_N, BLOCK_K]
        smask = wmask
    s = tl.load(scale_ptr + sp, mask=smask, other=0.0)
    if ZERO == 1:
        z = tl.load(zero_ptr + sp, mask=smask, other=0).to(tl.float32)
        w = (v - z) * s
    elif ZERO == 2:
        z = tl.load(zero_ptr + sp, mask=smask, other=0.0)
        w = v * s - z
    else:
        w = v * s
    return w


@triton.jit
def wxa16_kernel(
    x_ptr,  # [M, K] activations (fp16 / bf16 / fp32), already permuted by perm
    data_ptr,  # [N, K // P] uint8 packed codes, or [N, K] int8 / fp8 bits as uint8
    scale_ptr,  # [ceil(N / SCALE_BN), ceil(K / SCALE_BK)] float32
    zero_ptr,  # same shape as scale: uint8 codes or float32 offsets (unused if ZERO == 0)
    lut_ptr,  # [2**BITS] float32 code values (unused unless VALUE == 3)
    y_ptr,  # [M, N] output (x dtype), or float32 zero-initialized when SPLIT_K > 1
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_dn,
    stride_dk,
    stride_sn,
    stride_sk,
    stride_ym,
    stride_yn,
    BITS: tl.constexpr,
    VALUE: tl.constexpr,
    BIAS: tl.constexpr,
    ZERO: tl.constexpr,
    SCALE_BN: tl.constexpr,
    SCALE_BK: tl.constexpr,
    SCALE_ROW: tl.constexpr,  # one scale row per K tile (BLOCK_K divides SCALE_BK, or SCALE_BK >= K)
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    srow = (offs_n // SCALE_BN) * stride_sn  # [BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & (offs_k[None, :] < K),
            other=0.0,
        )
        w = _dequant_tile(
            data_ptr, scale_ptr, zero_ptr, lut_ptr, offs_n, mask_n, srow, k0, K, stride_dn, stride_dk, stride_sk,
            BITS, VALUE, BIAS, ZERO, SCALE_BK, SCALE_ROW, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w.to(x_ptr.dtype.element_ty)), acc)
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    ymask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=ymask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=ymask)


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
    SCALE_ROW: tl.constexpr,
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
        BITS, VALUE, BIAS, ZERO, SCALE_BK, SCALE_ROW, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    tl.store(
        out_ptr + offs_n[:, None] * stride_on + offs_k[None, :] * stride_ok,
        w.to(out_ptr.dtype.element_ty),
        mask=mask_n[:, None] & (offs_k[None, :] < K),
    )


def is_interpreter() -> bool:
    """Whether the kernels were built for the Triton CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return not isinstance(wxa16_kernel, triton.runtime.JITFunction)


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
        SCALE_ROW=bool(bk >= k or bk % block_k == 0),
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
        lut: float32 [2**bits] code values for codebook qtypes, else None.
        qtype, shape, block: the weight's static description.
        config: tiles; default `wxa16_config` (or the small interpreter tiles).

    Returns:
        [M, N] in ``x.dtype``.
    """
    m, k = x.shape
    n = shape[0]
    if k != shape[1]:
        raise ValueError(f"x has K={k}, weight has K={shape[1]}")
    if config is None:
        config = INTERPRET_CONFIG if is_interpreter() else wxa16_config(m, n, k, block[1], x.element_size())
    split = config.split_k > 1  # partial sums added atomically into a zeroed float32 buffer
    y = (torch.zeros if split else torch.empty)((m, n), device=x.device, dtype=torch.float32 if split else x.dtype)
    ptrs = _weight_ptrs(data, scale, zero, lut)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), config.split_k)
    wxa16_kernel[grid](
        x, *ptrs, y, m, n, k,
        x.stride(0), x.stride(1), ptrs[0].stride(0), ptrs[0].stride(1), scale.stride(0), scale.stride(1),
        y.stride(0), y.stride(1),
        num_warps=config.num_warps, num_stages=config.num_stages,
        **kernel_constexprs(qtype, block, k, _zero_kind(zero), x.dtype, config),
    )  # fmt: skip
    return y.to(x.dtype)
