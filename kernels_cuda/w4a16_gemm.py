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
from jquant.ops.backend import why_not_operands
from jquant.ops.device import NUM_SMS_DEFAULT
from jquant.ops.device import num_sms as device_num_sms
from kernels_cuda.backend import CudaBackend, call_kernel
from kernels_cuda.w4a16 import MAX_M as DECODE_MAX_M
from kernels_cuda.w4a16 import OPERAND_CAPS, apply_scale2, code_kind, kind_operands

__all__ = [
    "GemmConfig",
    "W4A16GemmBackend",
    "fragment_order",
    "gemm_config",
    "call_gemm_kernel",
    "gemm_cost_us",
    "launch_cost_us",
    "split_candidates",
    "w4a16_gemm",
    "why_not",
    "MAX_M",
]

STEP_K = 128  # K columns per pipeline stage (csrc: kBK)
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


def launch_cost_us(
    m: int, n: int, k: int, *, bm: int, block_n: int, k_split: int, step_us: float, num_sms: int
) -> float:
    """Modelled time of one launch of a split-K GEMM kernel: the busiest SM's block-steps, plus the
    split-K partial traffic.

    An SM gets ``ceil(blocks / num_sms)`` blocks of ``k_split / 128`` steps each (run concurrently
    up to the tile's blocks per SM, which ``step_us`` — microseconds per block per 128-column step
    on a full SM — already folds in); every split beyond one writes and reads back an f32 [M, N]
    slab at `PARTIALS_BYTES_PER_US`.
    """
    steps = -(-k_split // STEP_K)
    splits = -(-k // k_split)
    blocks = -(-n // block_n) * -(-m // bm) * splits
    compute = -(-blocks // num_sms) * steps * step_us
    partials = 2 * splits * m * n * 4 / PARTIALS_BYTES_PER_US if splits > 1 else 0.0
    return compute + partials


def split_candidates(k: int) -> list[int]:
    """K columns per split for 1..16 splits (multiples of 128, no empty split), largest first."""
    steps = k // STEP_K
    return [per * STEP_K for per in sorted({-(-steps // s) for s in range(1, min(steps, 16) + 1)}, reverse=True)]


def gemm_cost_us(m: int, n: int, k: int, cfg: GemmConfig, *, num_sms: int = NUM_SMS_DEFAULT) -> float:
    """`launch_cost_us` of the mma.sync GEMM kernel with ``cfg``."""
    return launch_cost_us(
        m, n, k, bm=cfg.bm, block_n=cfg.block_n, k_split=cfg.k_split, step_us=STEP_US[cfg.bm, cfg.wm], num_sms=num_sms
    )


def gemm_config(m: int, n: int, k: int, *, num_sms: int = NUM_SMS_DEFAULT) -> GemmConfig:
    """The block shape for M (`TILE_FOR_M`) and the K split of least modelled time (`gemm_cost_us`;
    ties go to fewer splits)."""
    bm, wm = next(t for bound, t in TILE_FOR_M if bound is None or m <= bound)
    cfgs = [GemmConfig(bm=bm, wm=wm, k_split=ks) for ks in split_candidates(k)]
    return min(cfgs, key=lambda c: (gemm_cost_us(m, n, k, c, num_sms=num_sms), c.splits(k)))


@functools.cache
def _fragment_block(natural: bool = False) -> np.ndarray:
    # Logical column L = 16 s + 8 hi + 2 q + e of a 128-column block (k16 slice s = 2 i + h; thread
    # quad q of the mma; e, hi its element pair) holds the code that thread q dequantizes there:
    # column 32 q + 8 i + 2 h + 4 e + hi for the magic-number pairs (w4a16_gemm.cu / w4a16_decode.cu
    # header comments), 32 q + 8 i + 4 h + 2 hi + e for the codebook lookup's natural pairs
    # (csrc/codes.cuh `codebook_pairs`).
    L = np.arange(STEP_K)
    s, l16 = L // 16, L % 16
    i, h = s // 2, s % 2
    q, e, hi = (l16 % 8) // 2, l16 % 2, l16 // 8
    if natural:
        return 32 * q + 8 * i + 4 * h + 2 * hi + e
    return 32 * q + 8 * i + 2 * h + 4 * e + hi


def fragment_order(k: int, natural: bool = False) -> np.ndarray:
    """int32 [K]: the kernel reads ``x[:, fragment_order(K)]`` (a permutation within each 128 block).

    Args:
        natural: the order of the codebook kind (natural code pairs), else the magic-number one.
    """
    blk = _fragment_block(natural)
    return (np.arange(k // STEP_K)[:, None] * STEP_K + blk[None, :]).reshape(-1).astype(np.int32)


def why_not(x, w) -> str:
    """Empty string when the kernel computes ``x @ dequantize(w).T`` for these operands (any M), else why not."""
    return why_not_operands(OPERAND_CAPS, x, w)


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
    why = why_not(x, w)
    if why:
        raise ValueError(f"w4a16_gemm: {why}")
    m, k = math.prod(x.shape[:-1]), x.shape[-1]
    cfg = cfg or gemm_config(m, w.shape[0], k, num_sms=num_sms or device_num_sms())
    return call_gemm_kernel(
        "jquant_w4a16_gemm", x, w, cfg.k_split, poison=poison, bm=cfg.bm, wm=cfg.wm, stages=cfg.stages
    )


def call_gemm_kernel(
    target: str, x, w: QArray, k_split: int, *, poison: bool = False, code_attrs: bool = False, **tile_attrs
):
    """Runs a GEMM-style kernel of the library (operands as in `w4a16_gemm`) on ``x @ dequantize(w).T``.

    Gathers x into fragment order (fused with act-order), passes codes, scales and zeros as stored,
    and sums the f32 partial slabs when K is split (one split: the kernel writes x's dtype, unless
    NVFP4's ``scale2`` is then applied to f32 sums).

    Args:
        code_attrs: the kernel reads every 4-bit code kind (the wgmma kernel): pass the kind, scale
            type and codebook attributes (`kernels_cuda.w4a16.code_kind`), fp8 scales as bytes.
    """
    from kernels_cuda.build import register

    register()
    lead, k = x.shape[:-1], x.shape[-1]
    n = w.shape[0]
    m = math.prod(lead)
    scale, kind_attrs = kind_operands(w, x.dtype) if code_attrs else (w.scale, {})
    order = fragment_order(k, natural=code_kind(w) == 2)
    if w.perm is not None:  # one gather for both permutations: x_frag[:, j] = x[:, perm[order[j]]]
        order = jnp.asarray(w.perm)[order]
    xf = jnp.take(x.reshape(m, k), order, axis=-1)
    splits = -(-k // k_split)
    zero = w.zero if w.zero is not None else jnp.zeros((1,), jnp.uint8)
    f32_out = splits > 1 or w.scale2 is not None
    y = call_kernel(
        target,
        jax.ShapeDtypeStruct((splits, m, n), jnp.float32 if f32_out else x.dtype),
        (xf, w.data, scale, zero),
        poison=poison,
        group=np.int64(min(w.block[1], k)),
        k_split=np.int64(k_split),
        bias=np.int64(int(w.qtype.bias)),
        has_zero=np.int64(w.zero is not None),
        **{name: np.int64(v) for name, v in tile_attrs.items()},
        **kind_attrs,
    )
    y = apply_scale2(y[0] if splits == 1 else y.sum(axis=0), w)
    return y.astype(x.dtype).reshape(*lead, n)


class W4A16GemmBackend(CudaBackend):
    """`qmatmul` backend ``cuda_w4a16_gemm``: 4-bit integer weights, 16 < M <= `MAX_M`, bf16/f16."""

    name = "cuda_w4a16_gemm"
    caps = dataclasses.replace(OPERAND_CAPS, m_min=DECODE_MAX_M + 1, m_max=MAX_M)

    def __call__(self, x, w, act=None):
        return w4a16_gemm(x, w)
