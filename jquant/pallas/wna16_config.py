"""Tile configurations and the heuristic that picks one for the W4A16 / W8A16 Pallas-Triton kernel.

Two regimes (BENCH.md, "Count bytes and flops first"):

* decode, M <= 64: bandwidth-bound. The weight bytes (N*K/2 for 4-bit) dwarf x and y, so the goal
  is every weight byte read once with many bytes in flight: a small M tile (16, the smallest
  ``tl.dot`` M), a narrow N tile and split-K so that the grid has several programs per SM.
  Split-K partials are f32 [S, M, N] summed by one small XLA reduction.
* prefill, M > 64: compute-bound. Large (bm, bn) tiles for tensor-core reuse, no split.

The numbers below come from the sweep in ``bench/qmatmul.py`` (``--sweep``) on the lent Hopper
card; `bench/results/<card>/qmatmul.md` records which one won per shape.
"""

from __future__ import annotations

import dataclasses

from jquant.ops.device import NUM_SMS_DEFAULT
from jquant.pallas.launch import check_tiles, pow2_at_least

__all__ = ["WNA16Config", "decode_config", "prefill_config", "DECODE_MAX_M", "NUM_SMS_DEFAULT"]

# Largest M the decode backend accepts; above it the prefill tiles win (tensor-core reuse).
DECODE_MAX_M = 64


@dataclasses.dataclass(frozen=True)
class WNA16Config:
    """Static launch parameters of `jquant.pallas.wna16_triton.wna16_matmul`.

    Attributes:
        bm: rows of x per program (power of two, >= 16: the smallest ``tl.dot`` M).
        bn: output columns (weight rows) per program (power of two, >= 16).
        bk: K columns per loop step (power of two). A step is split into sub-blocks of
            ``min(group, bk)`` columns, one scale per sub-block.
        split_k: number of K chunks run by separate programs (f32 partials, summed after).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining depth of the K loop.
        scale_on_output: True: dot the integer-valued codes (exact in bf16/f16) and scale the f32
            product per group (most accurate; cheap when bm is small). False: scale the weights in
            f32 and round them to the activation dtype before the dot (fewer f32 ops at large bm);
            the whole K step is then loaded at once.
        swap_ab: accumulate ``out^T = W @ x^T``: the dequantized weight tile is the left (A)
            operand, which Hopper wgmma may take from registers (B must come from shared memory).
        gemv: bm == 1 only: no tensor cores; broadcast-multiply in f32 and row sums (M = 1).
        split_x: 4-bit only: x is de-interleaved outside the kernel into 2 x [M, K/2] (even / odd
            columns), so each nibble plane is dotted with its own half of x and the kernel needs
            no in-register interleave (tt.join + reshape, a layout shuffle per element).
    """

    bm: int = 16
    bn: int = 64
    bk: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    scale_on_output: bool = True
    swap_ab: bool = False
    gemv: bool = False
    split_x: bool = False

    def __post_init__(self):
        check_tiles("WNA16Config", bm=self.bm, bn=self.bn, bk=self.bk, split_k=self.split_k, gemv=self.gemv)


def decode_config(m: int, n: int, k: int, *, bits: int, num_sms: int = NUM_SMS_DEFAULT) -> WNA16Config:
    """Split-K tiles for M <= `DECODE_MAX_M`.

    From the H200 sweeps (bench/results/nvidia_h200/qmatmul.md): (bn=64, bk=256, split 4) with
    per-group scaling on the output and x de-interleaved was best or within 3% of best on 8192x8192
    and 4096x28672 at M = 1 and 16 (28.2 / 45.6 us); bn 32..128, bk 512, split 8, swap-AB and the
    f32 GEMV were all slower. Split-K keeps >= 4 K steps per program.
    """
    del n, num_sms  # the measured optimum did not depend on them within the BENCH shapes
    bm = pow2_at_least(m, 16)
    bk = 256
    split = max(1, min(4, k // (4 * bk)))
    return WNA16Config(
        bm=bm, bn=64, bk=bk, split_k=split, num_warps=4, num_stages=3, scale_on_output=True, split_x=bits == 4
    )


def prefill_config(m: int, n: int, k: int, *, bits: int, num_sms: int = NUM_SMS_DEFAULT) -> WNA16Config:
    """Tensor-core tiles for M > `DECODE_MAX_M` (H200 sweep on 8192x8192: M=128 best
    (64, 128, 128) 4 warps + split_x at 92 us; M=1024 best (256, 128, 64) swap-AB 8 warps at 307 us)."""
    del n, k, num_sms
    if m <= 256:
        return WNA16Config(bm=64, bn=128, bk=128, num_warps=4, num_stages=4, scale_on_output=False, split_x=bits == 4)
    return WNA16Config(bm=256, bn=128, bk=64, num_warps=8, num_stages=3, scale_on_output=False, swap_ab=True)
