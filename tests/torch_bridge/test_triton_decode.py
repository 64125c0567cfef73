"""The weight-only Triton kernel's decode schedule: split-K configs (pure) and every code type under it.

* `split_k_for` / `wxa16_config` / `scale_groups` are pure functions of the problem: their
  invariants (2-4 waves of programs on the SMs, no empty split, decode K tiles of 128 code bytes,
  groups narrower than the tile broadcast instead of shrinking it) are checked directly.
* Every code type the converters produce (`bench.torch_qmatmul.KINDS`: GGUF types converted from
  random valid blocks by the real converter, the others random codes as the shared qmatmul suite
  makes them) runs through `wxa16_kernel` with explicit split-K tiles on the CPU interpreter (a
  subprocess: ``TRITON_INTERPRET=1`` must be set before the kernels are decorated), against the
  numpy spec in float64, within `cases.tolerance`'s sqrt(K) bound. The cases cover every value kind
  (int, int8, fp8 e4m3 / e5m2, codebook, e2m1), zero kind (none / int / float), scale mode (one
  column per tile, groups broadcast over the tile, per element), K tails and an empty last split.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from bench.shapes import SHAPES
from bench.torch_qmatmul import KINDS, Kind, make_weight
from jquant.core import dequantize
from torch_bridge.triton.configs import (
    DECODE_WAVES,
    MIN_K_TILES_PER_SPLIT,
    PREFILL_DEQUANT_M,
    TileConfig,
    interpret_wxa16_config,
    split_k_for,
    wxa16_config,
)

ROOT = Path(__file__).resolve().parents[2]
F32, F16, BF16 = "float32", "float16", "bfloat16"


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    """One interpreter problem: a code type, weight [n, k], m rows of x_dtype, tiles (None: the launcher's)."""

    name: str
    kind: Kind
    n: int
    k: int
    m: int
    x_dtype: str
    config: TileConfig | None
    seed: int = 0


def _cfg(bk: int, split: int, bn: int = 32, swap: bool = False) -> TileConfig:
    return TileConfig(block_m=16, block_n=bn, block_k=bk, split_k=split, num_warps=4, num_stages=1, swap_ab=swap)


G96 = Kind("uint4b8_g96", synth=(("qtype", "uint4b8"), ("block", (1, 96))))  # per-element scales
NVFP4_S2 = Kind(
    "nvfp4_scale2",
    synth=(("qtype", "fp4_e2m1"), ("block", (1, 16)), ("scale_dtype", "float8_e4m3fn"), ("scale2", True)),
)
E5M2 = Kind("fp8_e5m2", synth=(("qtype", "fp8_e5m2"), ("block", "channel"), ("scale_dtype", "float32")))

DECODE_CASES = [
    DecodeCase("uint4b8_g128_bk256", KINDS["uint4b8_g128"], 40, 512, 1, BF16, _cfg(256, 2)),  # 2 groups / tile
    DecodeCase("uint4_zero_g128_empty_split", KINDS["uint4_zero_g128"], 33, 512, 5, F16, _cfg(128, 3)),  # 2+2+0
    DecodeCase("q4_0_g32", KINDS["q4_0"], 40, 512, 16, BF16, _cfg(128, 2)),
    DecodeCase("q4_1_float_zero_ktail", KINDS["q4_1"], 24, 320, 3, F16, _cfg(128, 2)),  # K = 2.5 tiles
    DecodeCase("q4_k", KINDS["q4_k"], 40, 512, 1, BF16, _cfg(256, 2)),  # 8 groups / tile, f32 mins
    DecodeCase("q5_k_bytes", KINDS["q5_k"], 24, 256, 7, BF16, _cfg(128, 2)),
    DecodeCase("q6_k_g16", KINDS["q6_k"], 33, 512, 2, BF16, _cfg(128, 3)),
    DecodeCase("q8_0_int8_ktail", KINDS["q8_0"], 40, 320, 9, F16, _cfg(64, 2)),
    DecodeCase("nf4_lut", KINDS["nf4"], 40, 320, 5, BF16, _cfg(128, 2)),
    DecodeCase("bnb_fp4_lut_f32", KINDS["bnb_fp4"], 24, 256, 1, F32, _cfg(64, 2)),
    DecodeCase("iq4_nl_lut", KINDS["iq4_nl"], 40, 256, 3, BF16, _cfg(128, 2)),
    DecodeCase("mxfp4_e2m1_e8m0", KINDS["mxfp4"], 40, 256, 1, BF16, _cfg(128, 2)),
    DecodeCase("nvfp4_e2m1_g16", KINDS["nvfp4"], 33, 256, 16, BF16, _cfg(128, 2)),
    DecodeCase("nvfp4_scale2", NVFP4_S2, 24, 320, 1, BF16, _cfg(64, 2)),
    DecodeCase("fp8_w8a16_channel", KINDS["fp8_w8a16"], 24, 320, 4, BF16, _cfg(64, 2)),
    DecodeCase("fp8_e5m2_channel", E5M2, 20, 256, 2, F32, _cfg(64, 2)),
    DecodeCase("gptq_2bit_bk256", KINDS["gptq_2bit"], 20, 512, 3, F32, _cfg(256, 2)),
    DecodeCase("uint4b8_g96_per_element", G96, 24, 384, 2, BF16, _cfg(64, 2)),
    DecodeCase("q4_k_launcher_default", KINDS["q4_k"], 72, 512, 1, BF16, None),  # interpret_wxa16_config: split 4
    # swap_ab: y.T = W' @ x.T (the dequantized tile as the MMA's A operand)
    DecodeCase("swap_uint4_zero_g128", KINDS["uint4_zero_g128"], 40, 512, 16, BF16, _cfg(256, 2, swap=True)),
    DecodeCase("swap_nf4_ktail", KINDS["nf4"], 33, 320, 5, F16, _cfg(128, 2, swap=True)),
    DecodeCase("swap_q8_0", KINDS["q8_0"], 40, 256, 3, BF16, _cfg(64, 2, swap=True)),
    DecodeCase("swap_gptq_2bit_f32", KINDS["gptq_2bit"], 20, 512, 7, F32, _cfg(256, 2, swap=True)),
]
# `dequantize_weight` (the prefill path's dequant_kernel) with groups broadcast over 128-wide tiles.
DEQUANT_CASES = [
    DecodeCase("deq_q6_k_g16", KINDS["q6_k"], 33, 512, 1, F32, _cfg(128, 1, bn=64)),
    DecodeCase("deq_q4_1_ktail", KINDS["q4_1"], 24, 320, 1, F32, _cfg(128, 1, bn=64)),
    DecodeCase("deq_nvfp4", KINDS["nvfp4"], 40, 256, 1, F32, _cfg(128, 1, bn=64)),
]
CASES_BY_NAME = {c.name: c for c in DECODE_CASES + DEQUANT_CASES}


def weight(c: DecodeCase):
    return make_weight(c.kind, c.n, c.k, seed=c.seed)


def activations(c: DecodeCase) -> np.ndarray:
    """x [m, k] float32 holding values exact in ``c.x_dtype``."""
    x = np.random.default_rng(c.seed + 1).standard_normal((c.m, c.k)).astype(np.float32)
    dt = getattr(ml_dtypes, c.x_dtype, None) or np.dtype(c.x_dtype)
    return x.astype(dt).astype(np.float32)


# ---- pure config functions -----------------------------------------------------------------------


@pytest.mark.parametrize("num_sms", [132, 114, 78, 304])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("m", [1, 16])
def test_decode_split_fills_waves(m, shape, num_sms):
    cfg = wxa16_config(m, shape.n, shape.k, 128, 2, num_sms, 4)
    assert (cfg.block_m, cfg.block_n, cfg.block_k) == (16, 64, 256)  # 128 code bytes per K step
    tiles = -(-shape.n // cfg.block_n)
    k_tiles = -(-shape.k // cfg.block_k)
    per = -(-k_tiles // cfg.split_k)
    assert (cfg.split_k - 1) * per < k_tiles, "an empty split"
    programs = tiles * cfg.split_k
    lo, hi = DECODE_WAVES
    if cfg.split_k == 1:
        assert tiles >= lo * num_sms or k_tiles < 2 * MIN_K_TILES_PER_SPLIT, (tiles, k_tiles)
    else:
        assert per >= MIN_K_TILES_PER_SPLIT
        assert programs <= hi * num_sms, (programs, num_sms)
        assert programs >= lo * num_sms or per <= 2 * MIN_K_TILES_PER_SPLIT, (programs, per)


def test_split_k_for_values():
    assert split_k_for(64, 56, 132) == 5  # 8b_down M = 1 on H100: 320 programs, 12 K tiles each (last 8)
    assert split_k_for(96, 16, 132) == 3  # 8b_qkv
    assert split_k_for(896, 32, 132) == 1  # 70b_gate_up: the N tiles alone are 6.8 waves
    assert split_k_for(64, 7, 132) == 1  # too few K tiles to split
    assert split_k_for(1, 1000, 132) == 250  # capped by 4 waves (528 programs), then evened: 4 K tiles each


def test_decode_block_k_by_container_and_group():
    assert wxa16_config(1, 4096, 14336, 128, container_bits=8).block_k == 128
    assert wxa16_config(1, 4096, 14336, 128, container_bits=2).block_k == 512
    assert wxa16_config(1, 4096, 14336, 32, container_bits=4).block_k == 256  # g32: 8 groups broadcast
    assert wxa16_config(1, 4096, 14336, 16, container_bits=8).block_k == 128  # Q6_K g16
    assert wxa16_config(1, 4096, 14336, 96, container_bits=4).block_k == 32  # non-pow2 group: a divisor
    assert wxa16_config(1, 4096, 14336, 128, x_itemsize=4).block_k == 128  # f32 activations: half
    cfg = wxa16_config(PREFILL_DEQUANT_M, 4096, 14336, 128)
    assert cfg.split_k == 1 and cfg.block_m > 16


def test_scale_groups():
    from torch_bridge.triton.wxa16 import scale_groups

    assert scale_groups(128, 4096, 128) == 1
    assert scale_groups(128, 4096, 64) == 1  # tile inside one group
    assert scale_groups(4096, 4096, 256) == 1  # per channel
    assert scale_groups(32, 4096, 256) == 8
    assert scale_groups(16, 4096, 128) == 8
    assert scale_groups(96, 384, 64) == 0  # neither divides: per element
    assert scale_groups(80, 80, 32) == 1  # K = one block


def test_interpreter_config_splits_decode():
    assert interpret_wxa16_config(1, 72, 512).split_k == 4
    assert interpret_wxa16_config(17, 72, 512).split_k == 1
    assert interpret_wxa16_config(1, 72, 128).split_k == 1  # 4 K tiles: not worth a split


# ---- the kernels on the interpreter --------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    out = tmp_path_factory.mktemp("decode") / "out.npz"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torch_bridge.run_interpreted", "--decode", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return dict(np.load(out))


def _tolerance(c: DecodeCase, x: np.ndarray, ref: np.ndarray, wd: np.ndarray) -> np.ndarray:
    eps = {F32: 2.0**-21, F16: 2.0**-10, BF16: 2.0**-7}[c.x_dtype]
    rms = math.sqrt(float(np.mean(x.astype(np.float64) ** 2)) * float(np.mean(wd**2)))
    return eps * (2 * np.abs(ref) + 4 * math.sqrt(c.k) * rms) + 1e-6


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: c.name)
def test_split_k_kernel_matches_spec(interpreted, case):
    x = activations(case)
    wd = dequantize(weight(case)).astype(np.float64)
    ref = x.astype(np.float64) @ wd.T
    got = interpreted[case.name].astype(np.float64)
    assert got.shape == (case.m, case.n)
    err = np.abs(got - ref)
    tol = _tolerance(case, x, ref, wd)
    assert np.isfinite(got).all()
    assert (err <= tol).all(), f"{case.name}: max err {err.max():.3g}, worst ratio {(err / tol).max():.3g}"
    assert np.abs(ref).max() > 0
    assert int(interpreted[f"{case.name}.split_k"]) > 1, "the case did not run split-K"


@pytest.mark.parametrize("case", DEQUANT_CASES, ids=lambda c: c.name)
def test_dequant_kernel_grouped_scales(interpreted, case):
    w = weight(case)
    assert w.perm is None
    spec = dequantize(w).astype(np.float32)
    np.testing.assert_allclose(interpreted[case.name], spec, rtol=2e-7, atol=1e-30)
