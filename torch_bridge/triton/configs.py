"""Tile configurations of the Triton kernels and the heuristics that pick them.

Configs are data (frozen dataclasses), chosen by a pure function of the problem shape; an explicit
``config=`` argument to a launcher always wins. No autotuner state, no global caches.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TileConfig", "wxa16_config", "w8a8_config", "dequant_config", "INTERPRET_CONFIG", "PREFILL_DEQUANT_M"]

# From this many rows on, routing sends weight-only layers to ``torch_triton_dequant_dot``: W
# dequantized once (one pass over the codes, a transient [N, K] tensor in the activation dtype),
# then the vendor GEMM, as vLLM's AWQ layer does for >= 256 tokens. Measured on H200 (bench/results/nvidia_h200): the fused
# kernel reaches 0.46-0.69x of bf16 cuBLAS at M = 64 but 0.26-0.38x at M = 128 and ~0.4x above;
# dequant + GEMM costs one cuBLAS call plus ~N*K*(2 + bits/8) bytes of traffic (~35 us for 8192^2).
PREFILL_DEQUANT_M = 128


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """One launch configuration.

    Attributes:
        block_m, block_n, block_k: tile sizes (powers of two; block_m >= 16 for ``tl.dot``).
        split_k: number of programs sharing one output tile along K (partial sums are added
            atomically into a float32 buffer); 1 disables it.
        num_warps, num_stages: Triton launch options.
    """

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self):
        for f in ("block_m", "block_n", "block_k"):
            v = getattr(self, f)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{f}={v} must be a power of two >= 16")
        if self.split_k < 1:
            raise ValueError(f"split_k={self.split_k} must be >= 1")


# Small tiles for the CPU interpreter, whose cost grows with the number of programs and tile size.
INTERPRET_CONFIG = TileConfig(block_m=16, block_n=32, block_k=32, split_k=1, num_warps=4, num_stages=1)


def _pow2_at_most(v: int, cap: int) -> int:
    p = 16
    while p * 2 <= min(v, cap):
        p *= 2
    return p


def wxa16_config(m: int, n: int, k: int, scale_block_k: int, x_itemsize: int = 2, num_sms: int = 132) -> TileConfig:
    """Weight-only kernel tiles for an [m, k] x [n, k]^T problem.

    Small m is memory-bound: narrow m tiles, wide k tiles, and split-K until there are about two
    programs per SM. Large m is compute-bound: 128x128 tiles. ``block_k`` divides the scale block
    along K when it can, so one scale row serves a whole tile (loaded once per K step). float32
    activations (``x_itemsize`` 4) get half the K tile and two stages, which keeps every config
    within 64 KiB of shared memory (AMD's LDS per block; checked by the AOT test).
    """
    if m <= 16:
        bm, bn, bk, warps, stages = 16, 64, 128, 4, 4
    elif m <= 64:
        bm, bn, bk, warps, stages = _pow2_at_most(m, 64), 64, 128, 4, 4
    elif m <= 256:
        bm, bn, bk, warps, stages = 64, 128, 64, 4, 4
    else:
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    if x_itemsize >= 4:
        bk, stages = max(16, bk // 2), 2
    while bk > 16 and scale_block_k < k and scale_block_k % bk:
        bk //= 2
    bk = min(bk, _pow2_at_most(k, 1 << 30)) if k >= 16 else 16
    tiles = -(-m // bm) * -(-n // bn)
    split = 1
    while tiles * split * 2 <= 2 * num_sms and k // (bk * split * 2) >= 4:
        split *= 2
    return TileConfig(bm, bn, bk, split, warps, stages)


def w8a8_config(m: int, n: int, k: int, scale_block_k: int) -> TileConfig:
    """W8A8 tiles: 8-bit dots want block_k >= 32; K-blocked scales want block_k | scale_block_k."""
    if m <= 16:
        bm, bn, bk, warps, stages = 16, 64, 128, 4, 4
    elif m <= 128:
        bm, bn, bk, warps, stages = 64, 128, 128, 4, 4
    else:
        bm, bn, bk, warps, stages = 128, 128, 128, 8, 3
    while bk > 32 and scale_block_k < k and scale_block_k % bk:
        bk //= 2
    return TileConfig(bm, bn, bk, 1, warps, stages)


def dequant_config(k: int, scale_block_k: int) -> TileConfig:
    """Tiles of the one-pass dequantization kernel (no K loop: block_m / split_k / stages unused)."""
    bk = 128
    while bk > 16 and scale_block_k < k and scale_block_k % bk:
        bk //= 2
    return TileConfig(block_m=16, block_n=64, block_k=bk, split_k=1, num_warps=4, num_stages=1)
