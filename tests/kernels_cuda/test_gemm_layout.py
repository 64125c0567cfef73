"""The GEMM kernel's index math on the CPU: the fragment order of the activations against an
emulation of mma.m16n8k16 from the PTX fragment tables, and the launch heuristic. The numerics
run on the device (test_w4a16_gemm_gpu.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.shapes import SHAPES
from kernels_cuda.w4a16_gemm import (
    MAX_M,
    STEP_K,
    TILES,
    GemmConfig,
    fragment_order,
    gemm_config,
    gemm_cost_us,
)


def _emulated_step(codes_row_bytes: np.ndarray, xf: np.ndarray, natural: bool = False) -> np.ndarray:
    """One 128-column step of one m16 tile as the kernel computes it, from the PTX fragment tables.

    Args:
        codes_row_bytes: uint8 [16, 64], the tile's 16 weight rows' code bytes of the step (canonical).
        xf: [8, 128] activations of one n8 tile in fragment order.

    Returns:
        [16, 8] = sum over the 8 k16 slices of A_slice @ B_slice, where thread (r, q) puts the codes it
        dequantizes (w4a16_gemm.cu: word i = sl / 2 of its 16 bytes, nibbles at shift 8h, 8h + 16 -> a0,
        8h + 4, 8h + 20 -> a2, h = sl % 2) at A[r, 2q], A[r, 2q+1], A[r, 2q+8], A[r, 2q+9] (rows r + 8
        for a1, a3), and B[kk, n] = xf[n, 16 sl + kk] is what ldmatrix gives (b0: kk = 2q, 2q+1; b1: +8).
    """
    out = np.zeros((16, 8))
    for sl in range(8):
        i, h = sl // 2, sl % 2
        a = np.zeros((16, 16))
        for r in range(8):
            for q in range(4):
                for row in (r, r + 8):
                    word = int.from_bytes(codes_row_bytes[row, 16 * q + 4 * i : 16 * q + 4 * i + 4].tobytes(), "little")

                    def nib(shift, word=word):
                        return (word >> shift) & 0xF

                    if natural:  # codes.cuh codebook_pairs: a0 = codes (4h, 4h + 1), a2 = (4h + 2, 4h + 3)
                        a[row, 2 * q], a[row, 2 * q + 1] = nib(16 * h), nib(16 * h + 4)
                        a[row, 2 * q + 8], a[row, 2 * q + 9] = nib(16 * h + 8), nib(16 * h + 12)
                        continue
                    a[row, 2 * q], a[row, 2 * q + 1] = nib(8 * h), nib(8 * h + 16)  # a0 / a1
                    a[row, 2 * q + 8], a[row, 2 * q + 9] = nib(8 * h + 4), nib(8 * h + 20)  # a2 / a3
        b = xf[:, 16 * sl : 16 * sl + 16].T  # [16 kk, 8 n]
        out += a @ b
    return out


@pytest.mark.parametrize("natural", [False, True], ids=["magic-pairs", "codebook-pairs"])
def test_fragment_order_matches_the_mma_fragments(natural):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (16, STEP_K))
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # canonical: low nibble first
    x = rng.standard_normal((8, STEP_K))
    got = _emulated_step(packed, x[:, fragment_order(STEP_K, natural)], natural)
    np.testing.assert_allclose(got, codes @ x.T, rtol=1e-12, atol=1e-9)
    # a wrong order is caught: identity order, or the other kind's, gives a different product
    assert not np.allclose(_emulated_step(packed, x, natural), codes @ x.T)
    assert not np.allclose(_emulated_step(packed, x[:, fragment_order(STEP_K, not natural)], natural), codes @ x.T)


@pytest.mark.parametrize("natural", [False, True])
def test_fragment_order_is_a_permutation_within_each_block(natural):
    k = 4 * STEP_K
    order = fragment_order(k, natural)
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(k))
    assert all(set(order[b : b + STEP_K]) == set(range(b, b + STEP_K)) for b in range(0, k, STEP_K))


@pytest.mark.parametrize("m", [17, 32, 33, 64, 65, 100, MAX_M, 256, 1024])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_gemm_config_is_valid_and_near_the_best_split(shape, m):
    cfg = gemm_config(m, shape.n, shape.k, num_sms=132)
    assert (cfg.bm, cfg.wm) in TILES and cfg.bm >= min(m, 128)
    assert cfg.k_split % STEP_K == 0 and (cfg.splits(shape.k) - 1) * cfg.k_split < shape.k  # no empty split
    steps = shape.k // STEP_K
    every = [dataclasses.replace(cfg, k_split=-(-steps // s) * STEP_K) for s in range(1, min(steps, 16) + 1)]
    best = min(gemm_cost_us(m, shape.n, shape.k, c) for c in every)
    assert gemm_cost_us(m, shape.n, shape.k, cfg) <= best * 1.0001
    # the model's compute term balances the SMs: the busiest SM does at most ~1.5x the mean work
    blocks = -(-shape.n // cfg.block_n) * -(-m // cfg.bm) * cfg.splits(shape.k)
    assert -(-blocks // 132) <= max(1.5 * blocks / 132, 1)


def test_gemm_config_rejects_unbuilt_tiles():
    with pytest.raises(ValueError, match="no kernel for bm=32, wm=2"):
        GemmConfig(bm=32, wm=2, k_split=128)


@pytest.mark.parametrize("m", [32, 64, 128, 256, 1024])
def test_bench_sweep_configs_are_buildable_and_include_the_heuristic(m):
    from bench.qmatmul import gemm_sweep_configs

    k = n = 8192
    cfgs = gemm_sweep_configs(m, n, k)
    assert cfgs and all((c.bm, c.wm) in TILES and c.k_split % STEP_K == 0 for c in cfgs)
    pick = gemm_config(m, n, k)
    assert any(c.bm == pick.bm and c.wm == pick.wm and c.splits(k) == pick.splits(k) for c in cfgs), pick
