"""The opt-in int8-activation decode path (AVX-512 VNNI): it computes ``x^ @ dequantize(w).T`` for x
quantized per 32-column block (llama.cpp's Q8_0 activations), exactly that function up to f32 rounding;
it is off by default, and calls it does not cover keep the spec's f32 path bit for bit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import dequantize
from kernels_cpu import cpu_qmatmul, get_act_quant, set_act_quant
from tests.ops.qmatmul_suite import TOL, QCase, make_qarray

_op = jax.jit(cpu_qmatmul)

KINDS = [
    dict(qtype="uint4", block=(1, 32), zero="float", scale_dtype="float16"),  # GGUF Q4_1
    dict(qtype="uint4b8", block=(1, 32), scale_dtype="float16"),  # GGUF Q4_0
    dict(qtype="uint4", block=(1, 128), zero="int"),  # AWQ / GPTQ asym, groups of 4 blocks
    dict(qtype="int8", block=(1, 32), scale_dtype="float16"),  # GGUF Q8_0
    dict(qtype="uint8b128", block="channel", scale_dtype="float32"),  # 8-bit per channel
]


@pytest.fixture
def int8_acts(cpu_lib):
    """Turns the int8 mode on for one test (skips without AVX-512 VNNI) and off again."""
    if set_act_quant("int8") != "int8":
        pytest.skip("this CPU has no AVX-512 VNNI")
    yield
    set_act_quant("none")


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """x^ = dx * round(x / dx) per 32-column block, dx = max|x| / 127, in the kernel's f32 arithmetic."""
    b = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    d = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint((b * inv).astype(np.float32))
    assert np.abs(q).max() <= 127
    return (d.astype(np.float64) * q).reshape(x.shape)


def _weight(kind: dict, n: int, k: int, seed: int):
    block = (1, k) if kind["block"] == "channel" else kind["block"]
    case = QCase(**{**kind, "block": block}, m=1, n=n, k=k, seed=seed)
    return make_qarray(case)


def test_off_by_default(cpu_lib):
    assert get_act_quant() == "none"


@pytest.mark.parametrize("kind", KINDS, ids=lambda d: f"{d['qtype']}-{d['block']}")
@pytest.mark.parametrize("m", (1, 2))
@pytest.mark.parametrize("k", (96, 576))  # 3 blocks: a pair and a lone last block; 18 blocks
def test_int8_activations_compute_the_quantized_function(int8_acts, kind, m, k):
    n = 37
    w = _weight(kind, n, k, seed=k + m)
    x = np.random.default_rng(k * m).standard_normal((m, k)).astype(np.float32)
    wd = dequantize(w).astype(np.float64)
    y = np.asarray(_op(jnp.asarray(x), jax.device_put(w)), np.float64)
    xh = quantize_blocks(x)
    ref_q, ref_f = xh @ wd.T, x.astype(np.float64) @ wd.T
    rms = math.sqrt(np.mean(x.astype(np.float64) ** 2) * np.mean(wd**2))
    tol = TOL["float32"] * math.sqrt(k) * rms
    err_q = float(np.abs(y - ref_q).max())
    assert err_q <= tol, f"vs the quantized-activation oracle: {err_q:.3e} > {tol:.3e}"
    # and it really is the other function: farther from the f32 spec than f32 rounding explains
    assert float(np.abs(y - ref_f).max()) > 10 * err_q


def test_uncovered_calls_keep_the_f32_path(int8_acts):
    """M = 7 (not decode) and a codebook weight run the spec's f32 kernels, bit-identical to the mode off."""
    w = _weight(dict(qtype="uint4", block=(1, 32), zero="float"), 24, 128, seed=1)
    wnf4 = make_qarray(QCase(qtype="nf4", block=(1, 64), m=1, n=24, k=128))
    x7 = jnp.asarray(np.random.default_rng(2).standard_normal((7, 128)).astype(np.float32))
    x1 = x7[:1]
    on = [np.asarray(_op(x7, jax.device_put(w))), np.asarray(_op(x1, jax.device_put(wnf4)))]
    set_act_quant("none")
    off = [np.asarray(_op(x7, jax.device_put(w))), np.asarray(_op(x1, jax.device_put(wnf4)))]
    for a, b in zip(on, off):
        np.testing.assert_array_equal(a, b)


def test_bad_mode_is_refused(cpu_lib):
    with pytest.raises(ValueError, match="'none' or 'int8'"):
        set_act_quant("fp8")
