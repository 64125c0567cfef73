"""Expert stacks (`jquant.core.experts`) and `grouped_qmatmul` against a float64 per-expert oracle."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import dequantize
from jquant.core.errors import FormatError
from jquant.core.experts import num_experts, stack_experts, unstack_experts, why_not_stack
from jquant.ops import grouped_qmatmul
from jquant.ops.grouped import dequantize_experts, grouped_implementation
from tests.ops.qmatmul_suite import QCase, make_qarray

E = 4
CASES = [
    QCase("uint4b8", (1, 32), 0, 40, 96, perm=True),  # act-order: each expert its own permutation
    QCase("uint4", (1, 32), 0, 24, 64, zero="int", scale_dtype="bfloat16"),
    QCase("uint4", (1, 32), 0, 24, 64, zero="float"),
    QCase("fp8_e4m3", (128, 128), 0, 130, 256, scale_dtype="float32"),
    QCase("nf4", (1, 64), 0, 17, 128, scale_dtype="float32", scale2=True),
    QCase("int8", "channel", 0, 33, 64),
]
# Rows per expert: an expert with no rows, and rows past sum(group_sizes) (ragged_dot gives zeros).
GROUPS = [3, 0, 5, 1]
M = 11


def _experts(case: QCase):
    return [make_qarray(dataclasses.replace(case, seed=e)) for e in range(E)]


def _oracle(x: np.ndarray, dense: list[np.ndarray], groups) -> np.ndarray:
    out = np.zeros((x.shape[0], dense[0].shape[0]), np.float64)
    start = 0
    for wd, g in zip(dense, groups):
        out[start : start + g] = x[start : start + g].astype(np.float64) @ wd.astype(np.float64).T
        start += g
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_stack_is_lossless_and_vmap_dequantize_is_bit_exact(case):
    ws = _experts(case)
    s = stack_experts(ws)
    assert num_experts(s) == E and s.shape == ws[0].shape and s.block == ws[0].block
    assert s.data.shape == (E, *ws[0].data.shape) and s.scale.shape == (E, *ws[0].scale.shape)
    for a, b in zip(unstack_experts(s), ws):
        b.validate()
        a.validate()
        assert a.arrays().keys() == b.arrays().keys()
        for f in b.arrays():
            np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)))
            assert getattr(a, f).dtype == getattr(b, f).dtype
    got = np.asarray(jax.jit(dequantize_experts)(jax.device_put(s)))
    np.testing.assert_array_equal(got, np.stack([dequantize(w) for w in ws]))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_grouped_reference_matches_float64_oracle(case):
    ws = _experts(case)
    x = np.random.default_rng(1).standard_normal((M, case.k)).astype(np.float32)
    gs = jnp.asarray(GROUPS, jnp.int32)
    got = np.asarray(jax.jit(grouped_qmatmul)(jnp.asarray(x), jax.device_put(stack_experts(ws)), gs))
    ref = _oracle(x, [dequantize(w) for w in ws], GROUPS)
    assert got.shape == (M, case.n) and got.dtype == np.float32
    tol = 1e-6 * np.sqrt(case.k) * np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    assert not got[sum(GROUPS) :].any()


def test_dense_experts_and_bf16_dequant_path(monkeypatch):
    rng = np.random.default_rng(2)
    dense = [rng.standard_normal((24, 64)).astype(np.float32) for _ in range(E)]
    x = rng.standard_normal((M, 64)).astype(np.float32)
    gs = jnp.asarray(GROUPS, jnp.int32)
    ref = _oracle(x, dense, GROUPS)
    stacked = stack_experts(dense)
    assert stacked.shape == (E, 24, 64)
    got = np.asarray(grouped_qmatmul(jnp.asarray(x), jnp.asarray(stacked), gs))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # The GPU path (weights rounded to the activation dtype, f32 accumulation), forced here on CPU.
    w = stack_experts(_experts(CASES[0]))
    xb = jnp.asarray(rng.standard_normal((M, w.shape[1])), jnp.bfloat16)
    yb = grouped_qmatmul(xb, jax.device_put(w), gs, implementation="xla_dequant_ragged_dot")
    assert yb.dtype == jnp.bfloat16
    refb = _oracle(np.asarray(xb, np.float32), [dequantize(e) for e in unstack_experts(w)], GROUPS)
    np.testing.assert_allclose(np.asarray(yb, np.float32), refb, rtol=0, atol=2e-2 * np.abs(refb).max())
    # On a GPU the grouped kernel (jquant.pallas, loaded by the dispatcher) takes bf16 4-bit experts;
    # without it, the XLA path above.
    assert grouped_implementation(xb, w, platform="gpu") == "pallas_triton_grouped"
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", "pallas_triton_grouped")
    assert grouped_implementation(xb, w, platform="gpu") == "xla_dequant_ragged_dot"
    assert grouped_implementation(xb, w, platform="cpu") == "xla_reference"
    assert grouped_implementation(jnp.asarray(x), w, platform="gpu") == "xla_reference"


def test_refusals():
    a, b = make_qarray(CASES[0]), make_qarray(CASES[1])
    assert "differ" in why_not_stack([a, b])
    assert "mix" in why_not_stack([a, np.zeros(a.shape, np.float32)])
    with pytest.raises(FormatError, match="experts do not stack"):
        stack_experts([a, a.replace(perm=None)], name="experts.*.w1.weight")
    w = jax.device_put(stack_experts([a, a]))
    with pytest.raises(ValueError, match="group_sizes"):
        grouped_qmatmul(jnp.zeros((3, a.k)), w, jnp.asarray([1, 1, 1], jnp.int32))
    with pytest.raises(ValueError, match="must be"):
        grouped_qmatmul(jnp.zeros((3, a.k + 1)), w, jnp.asarray([1, 1], jnp.int32))
    with pytest.raises(ValueError, match="unknown"):
        grouped_qmatmul(jnp.zeros((3, a.k)), w, jnp.asarray([1, 1], jnp.int32), implementation="pallas")
