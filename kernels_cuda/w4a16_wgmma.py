"""The Hopper W4A16 GEMM kernel (`csrc/w4a16_wgmma.cu`, wgmma, sm_90a) as a JAX op and a `qmatmul` backend.

For prefill-sized M on compute capability 9.0 (H100, H200). Same operands as `w4a16_gemm` (the
canonical 4-bit `QArray` as stored, x gathered once into fragment order): the wgmma A fragment of
each warp is the mma.m16n8k16 A fragment, so the same per-thread dequantization feeds
``wgmma.m64nNk16`` with the weight in registers and the x tile in 128B-swizzled shared memory.

Every 4-bit code kind of the decode kernel (`kernels_cuda.w4a16`): integer codes with uint8 zeros
or a bias, float zeros (GGUF Q4_1 / Q4_K), 16-entry codebooks (NF4, bnb FP4, IQ4, MXFP4 / NVFP4 with
e8m0 / e4m3 scales and ``scale2``); groups of 16 for NVFP4 only (csrc/wgmma_kinds.cu).
"""

from __future__ import annotations

import dataclasses
import math

from jquant.core.qarray import QArray
from jquant.ops.backend import why_not_operands
from jquant.ops.device import NUM_SMS_DEFAULT
from jquant.ops.device import num_sms as device_num_sms
from kernels_cuda.backend import CudaBackend
from kernels_cuda.w4a16 import CAPS as DECODE_CAPS
from kernels_cuda.w4a16 import code_kind, why_not_kinds
from kernels_cuda.w4a16_gemm import call_gemm_kernel, launch_cost_us, split_candidates

__all__ = [
    "WgmmaConfig",
    "W4A16WgmmaBackend",
    "wgmma_config",
    "wgmma_cost_us",
    "w4a16_wgmma",
    "why_not",
    "MIN_M",
]

BLOCK_N = 128  # weight rows per block: two warpgroups x 64 (csrc: kBN)
# Activation rows per block (the wgmma's N) -> depth of the shared-memory ring compiled for it (the
# deepest that fits 227 KB; csrc `launch_cfg`).
STAGES = {64: 6, 128: 5, 256: 3}
# Microseconds per block per 128-column step on a full SM (one block per SM), by bm, calibrated on
# H200 for the TMA variant (`bench.qmatmul --wgmma-sweep`, bench/results/nvidia_h200/cuda_wgmma.md;
# it picks the measured best launch on all 6 swept shapes, within 20% of every launch): 1.2-1.5x the
# wgmma time of 128 x bm x 128
# MACs at the dense bf16 peak.
STEP_US = {64: 0.6, 128: 0.89, 256: 1.43}
# The kernel variants (csrc attribute `variant` = the index).
VARIANTS = ("cp_async", "tma")
# Smallest M the dispatcher sends here (ahead of the mma.sync GEMM kernel, which keeps 17..128 on
# GPUs other than sm_90). Measured crossover with the mma.sync GEMM between M = 32 (it wins by 12%)
# and 48 (loses by 20%); from M = 128 up the kernel also beats XLA's dequantize -> cuBLAS dot on
# every shape measured, up to M = 4096 (bench/results/nvidia_h200/qmatmul.md).
MIN_M = 40

# What the kernel reads: the decode kernel's operands, except 16-column groups of integer codes
# (Q3_K) and of codebooks with other than e4m3 scales (csrc/wgmma_kinds.cu builds NVFP4's alone).
CAPS = dataclasses.replace(DECODE_CAPS, m_min=MIN_M, m_max=None, cc_min=(9, 0), cc_max=(9, 0))


def _why_not_more(call) -> str:
    why = why_not_kinds(call)
    if not why and call.group == 16 and call.group < call.k and call.scale_dtype != "float8_e4m3fn":
        why = "group size 16: the wgmma kernel reads it for NVFP4 (e4m3 scales) only"
    return why


def why_not(x, w) -> str:
    """Empty string when the kernel computes ``x @ dequantize(w).T`` for these operands (any M), else why not."""
    return why_not_operands(CAPS, x, w, more=_why_not_more)


@dataclasses.dataclass(frozen=True)
class WgmmaConfig:
    """Launch parameters of the wgmma kernel.

    Attributes:
        bm: activation rows per block (the wgmma's N: 64, 128 or 256); the block covers 128 weight
            rows and the grid is ceil(N / 128) x ceil(M / bm) x splits.
        k_split: K columns per split (a multiple of 128).
        variant: how the producer warpgroup brings x into the ring: "tma" (two 128B-swizzled TMA
            boxes per step, issued by one thread) or "cp_async" (16-byte copies by all 128 threads;
            measured 10-20% slower, kept as a TMA-free reference); see csrc/w4a16_wgmma.cu.
    """

    bm: int
    k_split: int
    variant: str = "tma"

    def __post_init__(self):
        if self.bm not in STAGES:
            raise ValueError(f"no wgmma kernel for bm={self.bm}; built: {sorted(STAGES)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; built: {VARIANTS}")

    @property
    def stages(self) -> int:
        return STAGES[self.bm]

    def splits(self, k: int) -> int:
        return -(-k // self.k_split)


def wgmma_cost_us(m: int, n: int, k: int, cfg: WgmmaConfig, *, num_sms: int = NUM_SMS_DEFAULT) -> float:
    """`launch_cost_us` of the wgmma kernel with ``cfg``."""
    return launch_cost_us(
        m, n, k, bm=cfg.bm, block_n=BLOCK_N, k_split=cfg.k_split, step_us=STEP_US[cfg.bm], num_sms=num_sms
    )


def wgmma_config(m: int, n: int, k: int, *, num_sms: int = NUM_SMS_DEFAULT) -> WgmmaConfig:
    """The block shape and K split of least modelled time (`wgmma_cost_us`; ties go to fewer splits,
    then to the larger block)."""
    cfgs = [WgmmaConfig(bm=bm, k_split=ks) for bm in sorted(STAGES, reverse=True) for ks in split_candidates(k)]
    return min(cfgs, key=lambda c: (wgmma_cost_us(m, n, k, c, num_sms=num_sms), c.splits(k)))


def w4a16_wgmma(x, w: QArray, cfg: WgmmaConfig | None = None, *, num_sms: int | None = None, poison: bool = False):
    """``x @ dequantize(w).T`` with Hopper wgmma for [..., K] bf16/f16 activations (any M; dispatched for M >= 40).

    Args:
        x: [..., K] bf16 or f16.
        w: 4-bit `QArray` of any code kind (`why_not` says what it reads).
        cfg: launch parameters; default `wgmma_config` (the TMA variant for kinds other than
            integer codes: the only one built for them).
        poison: the kernel writes into a NaN-filled buffer (tests: unwritten outputs stay NaN).

    Returns:
        [..., N] in x's dtype (f32 accumulation; one rounding of each dequantized weight to x's dtype).
        Runs on compute capability 9.0 only; elsewhere the call fails with the reason.
    """
    why = why_not(x, w)
    if why:
        raise ValueError(f"w4a16_wgmma: {why}")
    m, k = math.prod(x.shape[:-1]), x.shape[-1]
    cfg = cfg or wgmma_config(m, w.shape[0], k, num_sms=num_sms or device_num_sms())
    if cfg.variant != "tma" and code_kind(w) != 0:
        raise ValueError(f"w4a16_wgmma: variant {cfg.variant!r} is built for integer codes only (use 'tma')")
    return call_gemm_kernel(
        "jquant_w4a16_wgmma",
        x,
        w,
        cfg.k_split,
        poison=poison,
        bm=cfg.bm,
        stages=cfg.stages,
        variant=VARIANTS.index(cfg.variant),
        code_attrs=True,
    )


class W4A16WgmmaBackend(CudaBackend):
    """`qmatmul` backend ``cuda_w4a16_wgmma``: 4-bit weights of every kind, M >= `MIN_M`, bf16/f16, sm_90."""

    name = "cuda_w4a16_wgmma"
    caps = CAPS

    why_not_more = staticmethod(_why_not_more)

    def __call__(self, x, w, act=None):
        return w4a16_wgmma(x, w)
