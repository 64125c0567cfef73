"""The W4A16 GEMM kernel (`csrc/w4a16_gemm.cu`) as a JAX op and a `qmatmul` backend.

For the M the decode kernel does not take (batched decode, chunked prefill; the dispatcher sends
17 <= M <= `MAX_M` here, the op itself takes any M). Reads the canonical 4-bit `QArray` as stored (codes uint8 [N, K/2], low nibble first;
scales [N, K/G]; optional uint8 zero points). The activations are gathered once into *fragment
order* (`fragment_order`, fused with the act-order permutation when there is one), so the kernel's
B operand is a plain ldmatrix while each thread dequantizes the 16 contiguous code bytes it loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from kernels_cuda.backend import CudaBackend, call_kernel
from kernels_cuda.w4a16 import MAX_M as DECODE_MAX_M
from kernels_cuda.w4a16 import NUM_SMS_DEFAULT, device_num_sms, why_not_operands

__all__ = [
    "GemmConfig",
    "W4A16GemmBackend",
    "fragment_order",
    "gemm_config",
    "gemm_cost_us",
    "w4a16_gemm",
    "why_not",
    "MAX_M",
]

STEP_K = 128  # K columns per pipeline stage (csrc: kBK)
BLOCK_MS = (32, 64, 128)
# The block shapes compiled, (bm, wm) -> blocks one SM holds: 8 warps, wm of them along M, so a
# block covers 256 / wm weight rows. Tiles with 32 activation rows per warp are built for two
# blocks per SM (128 registers; a 4-stage ring of 96 KB at most); the others take up to 255
# registers, one block per SM (tests/kernels_cuda/test_build.py checks both).
TILES = {(32, 1): 2, (64, 1): 1, (64, 2): 2, (128, 1): 1, (128, 2): 1}
# Largest M the dispatcher sends here; above it XLA's dequantize -> cuBLAS dot (`xla_dequant_dot`)
# is faster (crossover measured on H200: bench/results/nvidia_h200/qmatmul_gemm.md).
MAX_M = 128


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of the GEMM kernel.

    Attributes:
        bm: activation rows per block (32, 64 or 128).
        k_split: K columns per split (a multiple of 128).
        stages: depth of the cp.async shared-memory ring (3 or 4 stages of 128 columns).
        wm: warps along M (1 or 2; `TILES` lists the pairs built); the block covers 256 / wm
            weight rows and the grid is ceil(N / block_n) x ceil(M / bm) x splits.
    """

    bm: int
    k_split: int
    stages: int = 4
    wm: int = 1

    def __post_init__(self):
        if (self.bm, self.wm) not in TILES:
            raise ValueError(f"no kernel for bm={self.bm}, wm={self.wm}; built: {sorted(TILES)}")

    @property
    def block_n(self) -> int:
        return 256 // self.wm

    def splits(self, k: int) -> int:
        return -(-k // self.k_split)


# Block shape by M (first row whose bound covers M), from the sweeps of `bench.qmatmul --gemm-sweep`
# on H200 (bench/results/nvidia_h200/qmatmul_gemm.md).
TILE_FOR_M = ((32, (32, 1)), (64, (64, 1)), (None, (128, 1)))
# Cost model of a launch, calibrated on H200 (same sweeps): microseconds per block per 128-column
# step when the SM is full, and the bandwidth at which the f32 partial slabs of a split launch are
# written and read back by the reduction.
STEP_US = {(32, 1): 1.4, (64, 1): 2.05, (64, 2): 1.4, (128, 1): 3.2, (128, 2): 1.95}
PARTIALS_BYTES_PER_US = 3.0e6


def gemm_cost_us(m: int, n: int, k: int, cfg: GemmConfig, *, num_sms: int = NUM_SMS_DEFAULT) -> float:
    """Modelled time of one launch: the busiest SM's block-steps, plus the split-K partial traffic.

    An SM gets ``ceil(blocks / num_sms)`` blocks of ``k_split / 128`` steps each (run concurrently
    up to the tile's blocks per SM, which `STEP_US` already folds in); every split beyond one
    writes and reads back an f32 [M, N] slab.
    """
    steps = -(-cfg.k_split // STEP_K)
    splits = cfg.splits(k)
    blocks = -(-n // cfg.block_n) * -(-m // cfg.bm) * splits
    compute = -(-blocks // num_sms) * steps * STEP_US[cfg.bm, cfg.wm]
    partials = 2 * splits * m * n * 4 / PARTIALS_BYTES_PER_US if splits > 1 else 0.0
    return compute + partials


def gemm_config(m: int, n: int, k: int, *, num_sms: int = NUM_SMS_DEFAULT) -> GemmConfig:
    """The block shape for M (`TILE_FOR_M`) and the K split of least modelled time (`gemm_cost_us`;
    ties go to fewer splits)."""
    bm, wm = next(t for bound, t in TILE_FOR_M if bound is None or m <= bound)
    steps = k // STEP_K
    cands = {-(-steps // s) for s in range(1, min(steps, 16) + 1)}  # steps per split, no empty split
    cfgs = [GemmConfig(bm=bm, wm=wm, k_split=per * STEP_K) for per in sorted(cands, reverse=True)]
    return min(cfgs, key=lambda c: (gemm_cost_us(m, n, k, c, num_sms=num_sms), c.splits(k)))


@functools.cache
def _fragment_block() -> np.ndarray:
    # Logical column L = 16 s + 8 hi + 2 q + e of a 128-column block (k16 slice s = 2 i + h; thread
    # quad q of the mma; e, hi its element pair) holds the code that thread q dequantizes there:
    # column 32 q + 8 i + 2 h + 4 e + hi (w4a16_gemm.cu / w4a16_decode.cu header comments).
    L = np.arange(STEP_K)
    s, l16 = L // 16, L % 16
    i, h = s // 2, s % 2
    q, e, hi = (l16 % 8) // 2, l16 % 2, l16 // 8
    return 32 * q + 8 * i + 2 * h + 4 * e + hi


def fragment_order(k: int) -> np.ndarray:
    """int32 [K]: the kernel reads ``x[:, fragment_order(K)]`` (a permutation within each 128 block)."""
    blk = _fragment_block()
    return (np.arange(k // STEP_K)[:, None] * STEP_K + blk[None, :]).reshape(-1).astype(np.int32)


def why_not(x, w) -> str:
    """Empty string when the kernel computes ``x @ dequantize(w).T`` for these operands, else why not."""
    why = why_not_operands(x, w)
    if why:
        return why
    m = math.prod(x.shape[:-1])
    if m < 1:
        return "empty activations"
    return ""


def w4a16_gemm(x, w: QArray, cfg: GemmConfig | None = None, *, num_sms: int | None = None, poison: bool = False):
    """``x @ dequantize(w).T`` on the GPU for [..., K] bf16/f16 activations (any M; dispatched for 17..128).

    Args:
        x: [..., K] bf16 or f16.
        w: 4-bit integer `QArray` with group (multiple of 32) or per-channel scales (`why_not` says).
        cfg: launch parameters; default `gemm_config`.
        poison: the kernel writes into a NaN-filled buffer (tests: unwritten outputs stay NaN).

    Returns:
        [..., N] in x's dtype (f32 accumulation; one rounding of each dequantized weight to x's dtype).
    """
    from kernels_cuda.build import register

    why = why_not(x, w)
    if why:
        raise ValueError(f"w4a16_gemm: {why}")
    register()
    lead, k = x.shape[:-1], x.shape[-1]
    n = w.shape[0]
    m = math.prod(lead)
    cfg = cfg or gemm_config(m, n, k, num_sms=num_sms or device_num_sms())
    order = fragment_order(k)
    if w.perm is not None:  # one gather for both permutations: x_frag[:, j] = x[:, perm[order[j]]]
        order = jnp.asarray(w.perm)[order]
    xf = jnp.take(x.reshape(m, k), order, axis=-1)
    group = min(w.block[1], k)
    splits = cfg.splits(k)
    zero = w.zero if w.zero is not None else jnp.zeros((1,), jnp.uint8)
    out_dtype = jnp.float32 if splits > 1 else x.dtype
    y = call_kernel(
        "jquant_w4a16_gemm",
        jax.ShapeDtypeStruct((splits, m, n), out_dtype),
        (xf, w.data, w.scale, zero),
        poison=poison,
        group=np.int64(group),
        k_split=np.int64(cfg.k_split),
        bias=np.int64(int(w.qtype.bias)),
        has_zero=np.int64(w.zero is not None),
        bm=np.int64(cfg.bm),
        wm=np.int64(cfg.wm),
        stages=np.int64(cfg.stages),
    )
    y = y[0] if splits == 1 else y.sum(axis=0).astype(x.dtype)
    return y.reshape(*lead, n)


class W4A16GemmBackend(CudaBackend):
    """`qmatmul` backend ``cuda_w4a16_gemm``: 4-bit integer weights, 16 < M <= `MAX_M`, bf16/f16."""

    name = "cuda_w4a16_gemm"

    def why_not(self, x, w) -> str:
        why = why_not(x, w)
        m = math.prod(x.shape[:-1])
        if not why and not DECODE_MAX_M < m <= MAX_M:
            why = f"M={m} outside {DECODE_MAX_M + 1}..{MAX_M} (GEMM kernel's range)"
        return why

    def __call__(self, x, w, **kw):
        return w4a16_gemm(x, w)
