"""Tile configurations of the Triton kernels and the heuristics that pick them.

Configs are data (frozen dataclasses), chosen by a pure function of the problem shape; an explicit
``config=`` argument to a launcher always wins. No autotuner state, no global caches.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "TileConfig",
    "wxa16_config",
    "interpret_wxa16_config",
    "split_k_for",
    "w8a8_config",
    "dequant_config",
    "INTERPRET_CONFIG",
    "PREFILL_DEQUANT_M",
    "DEFAULT_SMS",
]

# From this many rows on, routing sends weight-only layers to ``torch_triton_dequant_dot``: W
# dequantized once (one pass over the codes, a transient [N, K] tensor in the activation dtype),
# then the vendor GEMM, as vLLM's AWQ layer does for >= 256 tokens. Measured on H200 (bench/results/nvidia_h200): the fused
# kernel reaches 0.46-0.69x of bf16 cuBLAS at M = 64 but 0.26-0.38x at M = 128 and ~0.4x above;
# dequant + GEMM costs one cuBLAS call plus ~N*K*(2 + bits/8) bytes of traffic (~35 us for 8192^2).
# By that cost model the crossover is between 64 and 128 rows (at M = 64 on 8192^2: fused ~60-90 us,
# dequant + GEMM ~75 us); the number stays 128 until a GPU run of `bench/gpu/torch_triton.sh` decides
# (bench.torch_qmatmul at M = 128: the ``triton`` column, routed to dequant + GEMM, next to ``fused``;
# its tile sweep times the fused kernel at M = 64 / 127).
PREFILL_DEQUANT_M = 128

# SM count assumed off-GPU (AOT / interpreter configs, tests): H100 SXM.
DEFAULT_SMS = 132
# Decode split-K aims the (N tiles x K splits) programs at this many waves of one program per SM:
# at least 2 (a memory-bound GEMV needs several CTAs per SM in flight), at most 4 (each split adds a
# float32 [M, N] partial to write and reduce).
DECODE_WAVES = (2, 4)
# Each split keeps at least this many K tiles, so the software pipeline (num_stages) has a steady state.
MIN_K_TILES_PER_SPLIT = 4
# Code bytes per row per K step of the decode tiles: Pallas' decode (`jquant.pallas.wxa16`) reads 128
# per step (16-row M tile, 64-row N tiles); BLOCK_K = 8 * DECODE_STEP_BYTES / container_bits.
DECODE_STEP_BYTES = 128


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """One launch configuration.

    Attributes:
        block_m, block_n, block_k: tile sizes (powers of two; block_m >= 16 for ``tl.dot``).
        split_k: number of programs sharing one output tile along K (each writes a float32
            partial; `wxa16.splitk_reduce_kernel` sums them in order); 1 disables it.
        num_warps, num_stages: Triton launch options.
        swap_ab: the weight-only kernel accumulates ``y.T = W' @ x.T`` (the dequantized tile, in
            registers, is the MMA's A operand; the activations the B operand): the token count
            becomes the MMA's N, which may be 8..256 on Hopper's wgmma where M is 64.
    """

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap_ab: bool = False

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


def split_k_for(tiles: int, k_tiles: int, num_sms: int = DEFAULT_SMS) -> int:
    """K splits for ``tiles`` output tiles of ``k_tiles`` K steps each on a card of ``num_sms`` SMs.

    The fewest splits giving ``DECODE_WAVES[0]`` waves (``tiles * split >= 2 * num_sms``), no more
    than ``DECODE_WAVES[1]`` waves' worth, each split at least ``MIN_K_TILES_PER_SPLIT`` K steps;
    then evened out so every split gets the same number of K steps but possibly the last. 1 when
    the tiles alone fill the waves.
    """
    lo, hi = DECODE_WAVES
    if tiles >= lo * num_sms or k_tiles < 2 * MIN_K_TILES_PER_SPLIT:
        return 1
    split = -(-lo * num_sms // tiles)
    split = min(split, max(1, hi * num_sms // tiles), k_tiles // MIN_K_TILES_PER_SPLIT)
    split = max(1, split)
    per = -(-k_tiles // split)
    return -(-k_tiles // per)  # the splits `wxa16_kernel` actually launches work for


def wxa16_config(
    m: int,
    n: int,
    k: int,
    scale_block_k: int,
    x_itemsize: int = 2,
    num_sms: int = DEFAULT_SMS,
    container_bits: int = 4,
) -> TileConfig:
    """Weight-only kernel tiles for an [m, k] x [n, k]^T problem.

    Small m is memory-bound: a 16-row M tile, 64-row N tiles, ``DECODE_STEP_BYTES`` code bytes per
    row per K step, and split-K (`split_k_for`) until the programs fill 2-4 waves of the SMs. Large
    m is compute-bound: 128x128 tiles. The K tile no longer has to divide the scale block: groups
    narrower than it are broadcast from [BLOCK_N, BLOCK_K / group] scale tiles
    (`wxa16.scale_groups`); only widths that are not powers of two shrink it to a divisor. float32
    activations (``x_itemsize`` 4) get half the K tile and two stages, which keeps every config
    within 64 KiB of shared memory (AMD's LDS per block; checked by the AOT test).
    """
    if m <= 16:
        bk = max(64, min(512, 8 * DECODE_STEP_BYTES // container_bits))
        bm, bn, warps, stages = 16, 64, 4, 3
    elif m <= 64:  # 64 code bytes per row per step (8-bit codes: 64 columns, within AMD's 64 KiB LDS)
        bm, bn, bk, warps, stages = _pow2_at_most(m, 64), 64, 128 if container_bits <= 4 else 64, 4, 4
    elif m <= 256:
        bm, bn, bk, warps, stages = 64, 128, 64, 4, 4
    else:
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    if x_itemsize >= 4:
        bk, stages = max(16, bk // 2), 2
    pow2_group = scale_block_k & (scale_block_k - 1) == 0
    while bk > 16 and scale_block_k < k and scale_block_k % bk and not (pow2_group and bk % scale_block_k == 0):
        bk //= 2
    bk = min(bk, _pow2_at_most(k, 1 << 30)) if k >= 16 else 16
    tiles = -(-m // bm) * -(-n // bn)
    split = split_k_for(tiles, -(-k // bk), num_sms) if m < PREFILL_DEQUANT_M else 1
    return TileConfig(bm, bn, bk, split, warps, stages)


def interpret_wxa16_config(m: int, n: int, k: int) -> TileConfig:
    """`INTERPRET_CONFIG` for the weight-only kernel, split along K for decode rows as on a GPU
    (`split_k_for` with `DEFAULT_SMS`), so interpreter runs go through the split-K path too."""
    c = INTERPRET_CONFIG
    if m > 16:
        return c
    tiles = -(-m // c.block_m) * -(-n // c.block_n)
    return dataclasses.replace(c, split_k=split_k_for(tiles, -(-k // c.block_k)))


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
    pow2_group = scale_block_k & (scale_block_k - 1) == 0
    while bk > 16 and scale_block_k < k and scale_block_k % bk and not (pow2_group and bk % scale_block_k == 0):
        bk //= 2
    return TileConfig(block_m=16, block_n=64, block_k=bk, split_k=1, num_warps=4, num_stages=1)
