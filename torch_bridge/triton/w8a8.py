"""W8A8 matmuls in Triton: fp8 e4m3 x fp8 e4m3 and int8 x int8, scales fused, on the canonical layout.

    y[m, n] = sum_kb  a_scale[m, kb_a] * w_scale[n // W_BN, kb_w] * sum_{k in kb} a[m, k] * w[n, k]

``a`` are the activations quantized per token (or per (token, 128-column group) for fp8 against
128x128 weight blocks, DeepSeek-V3 style) by `torch_bridge.act_quant`; ``w`` the canonical 8-bit
codes [N, K] (float8_e4m3fn, or int8) with their float32 block scales
[ceil(N / W_BN), ceil(K / W_BK)] (``scale2`` folded in). Two scale placements:

* scales constant along K (per-token activations, per-tensor / per-channel weights): the 8-bit
  dot accumulates over all of K (int32 for int8, float32 for fp8) and the two scales multiply the
  tile once in the epilogue, as ``torch._scaled_mm`` / cuBLASLt do;
* K-blocked scales: each ``BLOCK_K`` step's partial dot is scaled before accumulation
  (``BLOCK_K`` divides both K blocks).

Device-agnostic (no CUDA-specific calls); fp8 dots need hardware with fp8 MMA (sm_89+, gfx942) or
the interpreter.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from torch_bridge.triton.configs import INTERPRET_CONFIG, TileConfig, w8a8_config
from torch_bridge.triton.wxa16 import is_interpreter

__all__ = ["w8a8_kernel", "w8a8_matmul", "w8a8_constexprs", "k_block"]


@triton.jit
def w8a8_kernel(
    a_ptr,  # [M, K] int8, or float8_e4m3fn bits as uint8: quantized activations
    as_ptr,  # [M, ceil(K / A_BK)] float32 activation scales
    w_ptr,  # [N, K] int8, or float8_e4m3fn bits as uint8: weight codes
    ws_ptr,  # [ceil(N / W_BN), ceil(K / W_BK)] float32 weight scales
    y_ptr,  # [M, N] output
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_asm,
    stride_wn,
    stride_wk,
    stride_wsn,
    stride_wsk,
    stride_ym,
    stride_yn,
    A_BK: tl.constexpr,
    W_BN: tl.constexpr,
    W_BK: tl.constexpr,
    K_BLOCKED: tl.constexpr,  # scales change along K: apply them per BLOCK_K step
    IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    ws_row = (offs_n // W_BN) * stride_wsn
    if IS_INT8 and not K_BLOCKED:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0,
        )
        w = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0,
        )
        if not IS_INT8:  # fp8 travels as uint8 bits so that masked loads can fill with integer 0 (= +0.0)
            a = a.to(tl.float8e4nv, bitcast=True)
            w = w.to(tl.float8e4nv, bitcast=True)
        if K_BLOCKED:
            if IS_INT8:
                part = tl.dot(a, w, out_dtype=tl.int32).to(tl.float32)
            else:
                part = tl.dot(a, w, out_dtype=tl.float32)
            sa = tl.load(as_ptr + offs_m * stride_asm + k0 // A_BK, mask=mask_m, other=0.0)
            sw = tl.load(ws_ptr + ws_row + (k0 // W_BK) * stride_wsk, mask=mask_n, other=0.0)
            acc += part * sa[:, None] * sw[None, :]
        elif IS_INT8:
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, w, acc, out_dtype=tl.float32)
    if K_BLOCKED:
        out = acc
    else:
        sa = tl.load(as_ptr + offs_m * stride_asm, mask=mask_m, other=0.0)
        sw = tl.load(ws_ptr + ws_row, mask=mask_n, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
        out.to(y_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_n[None, :],
    )


def k_block(a_bk: int, w_bk: int, k: int) -> int:
    """The K granularity both scales are constant over: K, or the gcd of the blocked ones (0: per token)."""
    blocks = [b for b in (a_bk, w_bk) if 0 < b < k]
    return math.gcd(*blocks) if blocks else k


def w8a8_constexprs(a_bk: int, w_block: tuple[int, int], k: int, is_int8: bool, config: TileConfig) -> dict:
    k_blocked = a_bk < k or w_block[1] < k
    if k_blocked and (k_block(a_bk, w_block[1], k) % config.block_k):
        raise ValueError(f"block_k={config.block_k} must divide the K blocks of the scales ({a_bk}, {w_block[1]})")
    return dict(
        A_BK=int(a_bk),
        W_BN=int(w_block[0]),
        W_BK=int(w_block[1]),
        K_BLOCKED=bool(k_blocked),
        IS_INT8=bool(is_int8),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
    )


def w8a8_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    a_bk: int,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    w_block: tuple[int, int],
    out_dtype: torch.dtype,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """``(a * a_scale) @ (w * w_scale).T`` with 8-bit dots.

    Args:
        a: [M, K] int8 or float8_e4m3fn quantized activations.
        a_scale: float32 [M, ceil(K / a_bk)].
        a_bk: activation columns per scale (K for per-token).
        w: [N, K] codes of the same dtype as ``a``.
        w_scale: float32 [ceil(N / bn), ceil(K / bk)] with ``w_block = (bn, bk)``.
        out_dtype: result dtype.
        config: tiles (default `w8a8_config`, or the interpreter's).

    Returns:
        [M, N] in ``out_dtype``.
    """
    m, k = a.shape
    n = w.shape[0]
    if config is None:
        config = INTERPRET_CONFIG if is_interpreter() else w8a8_config(m, n, k, k_block(a_bk, w_block[1], k))
    y = torch.empty((m, n), device=a.device, dtype=out_dtype)
    is_int8 = a.dtype == torch.int8
    if not is_int8:
        a, w = a.view(torch.uint8), w.view(torch.uint8)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n))
    w8a8_kernel[grid](
        a, a_scale, w, w_scale, y, m, n, k,
        a.stride(0), a.stride(1), a_scale.stride(0), w.stride(0), w.stride(1), w_scale.stride(0), w_scale.stride(1),
        y.stride(0), y.stride(1),
        num_warps=config.num_warps, num_stages=config.num_stages,
        **w8a8_constexprs(a_bk, w_block, k, is_int8, config),
    )  # fmt: skip
    return y
