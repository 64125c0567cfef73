"""The decode paths of `grouped_qmatmul` (``xla_routed_*``): same result as the dequantize-all paths,
and only the routed experts are gathered and dequantized (checked on the jaxpr's shapes).

Weights are the random expert stacks of tests/ops/test_grouped.py (GPTQ act-order, asymmetric int
and float zeros, block FP8, double-quantized NF4, per-channel int8, GGUF Q4_K), so every `QArray`
field (codes, scales, zeros, perm, scale2) goes through the expert gather.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import dequantize
from jquant.core.experts import stack_experts, unstack_experts
from jquant.ops import grouped_qmatmul
from jquant.ops.grouped import explain_grouped, gather_experts, grouped_implementation
from tests.ops.qmatmul_suite import QCase, make_qarray
from tests.ops.test_grouped import CASES

E = 8
# (group_sizes, M): one token's top-2 copies; empty experts in between; rows past the total (zeros);
# all rows on one expert; M = E - 1 (the largest M the routed path is picked for).
ROUTINGS = [
    ([0, 0, 1, 0, 0, 1, 0, 0], 2),
    ([1, 0, 0, 0, 0, 0, 0, 1], 3),
    ([0, 0, 0, 4, 0, 0, 0, 0], 4),
    ([1, 1, 0, 2, 0, 1, 1, 1], 7),
]


def _stack(case: QCase):
    return stack_experts([make_qarray(dataclasses.replace(case, seed=e)) for e in range(E)])


def _q4_k_stack():
    """GGUF Q4_K experts (super-blocks with 6-bit scales and mins): random valid blocks, to_qarray."""
    from jquant.formats.gguf.types import ggml_type, to_qarray
    from tests.fixtures.gguf_files import random_blocks

    rng = np.random.default_rng(5)
    return stack_experts([to_qarray(ggml_type("Q4_K"), random_blocks("Q4_K", 24, 256, rng)) for _ in range(E)])


STACKS = [(str(c), lambda c=c: _stack(c)) for c in CASES] + [("gguf-q4_k-N24K256", _q4_k_stack)]


@pytest.mark.parametrize("name,make", STACKS, ids=[s[0] for s in STACKS])
def test_routed_path_equals_reference_f32(name, make):
    w = jax.device_put(make())
    n, k = w.shape
    dense = [np.asarray(dequantize(e), np.float64) for e in unstack_experts(make())]
    f = jax.jit(grouped_qmatmul, static_argnames="implementation")
    for groups, m in ROUTINGS:
        x = jnp.asarray(np.random.default_rng(m).standard_normal((m, k)), jnp.float32)
        gs = jnp.asarray(groups, jnp.int32)
        assert grouped_implementation(x, w, platform="cpu") == "xla_routed_reference"
        got = np.asarray(f(x, w, gs))  # picked by M < E
        ref = np.asarray(f(x, w, gs, implementation="xla_reference"))
        assert got.shape == (m, n) and got.dtype == np.float32
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.sqrt(k) * scale, err_msg=f"{groups}")
        # and against the float64 per-row oracle: row r times the expert its group says
        ids = np.repeat(np.arange(E), groups)
        want = np.zeros((m, n))
        for r, e in enumerate(ids):
            want[r] = np.asarray(x[r], np.float64) @ dense[e].T
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.sqrt(k) * scale, err_msg=f"{groups}")
        assert not got[sum(groups) :].any()


def _subjaxprs(params):
    """Jaxprs nested in an equation's params (pjit / custom_jvp / scan bodies), duck-typed so the walk
    does not depend on ``jax.core`` helpers that moved between jax versions."""
    for v in params.values():
        for item in v if isinstance(v, list | tuple) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _float_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every floating-point value an equation produces, nested jaxprs (jit, vmap bodies) included."""
    out = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            if jnp.issubdtype(v.aval.dtype, jnp.floating):
                out.append(tuple(v.aval.shape))
        for sub in _subjaxprs(eqn.params):
            out += _float_shapes(sub)
    return out


def _gathers(jaxpr) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(operand shape, result shape) of every gather, nested jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "gather":
            out.append((tuple(eqn.invars[0].aval.shape), tuple(eqn.outvars[0].aval.shape)))
        for sub in _subjaxprs(eqn.params):
            out += _gathers(sub)
    return out


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=str)  # act-order int4; double-quantized NF4
def test_decode_reads_only_the_routed_experts(case):
    w = jax.device_put(_stack(case))
    n, k = w.shape
    m = 2
    x = jnp.zeros((m, k), jnp.float32)
    gs = jnp.asarray(ROUTINGS[0][0], jnp.int32)
    routed = jax.make_jaxpr(lambda x, w, g: grouped_qmatmul(x, w, g))(x, w, gs).jaxpr
    full = jax.make_jaxpr(lambda x, w, g: grouped_qmatmul(x, w, g, implementation="xla_reference"))(x, w, gs).jaxpr
    # The dequantize-all path materializes all E experts in float; the routed one only M of them.
    assert (E, n, k) in _float_shapes(full)
    shapes = _float_shapes(routed)
    assert (m, n, k) in shapes
    assert not any(s and s[0] == E and int(np.prod(s)) >= n * k for s in shapes), shapes
    # Every expert-stacked array is gathered along E, staying in its stored (quantized) dtype and shape.
    gathers = _gathers(routed)
    for field, a in w.arrays().items():
        assert (tuple(a.shape), (m, *a.shape[1:])) in gathers, (field, a.shape, gathers)


def test_gather_experts_keeps_codes_and_metadata():
    s = _stack(CASES[1])  # uint4 with int zeros, bf16 scales
    ids = jnp.asarray([5, 0, 5], jnp.int32)
    g = gather_experts(jax.device_put(s), ids)
    assert (g.qtype, g.shape, g.block) == (s.qtype, s.shape, s.block)
    for f, a in s.arrays().items():
        got = np.asarray(getattr(g, f))
        assert got.dtype == a.dtype and got.shape == (3, *a.shape[1:])
        np.testing.assert_array_equal(got, a[[5, 0, 5]])


def test_choice_bf16_path_and_explain(monkeypatch):
    w = jax.device_put(_stack(CASES[0]))
    k = w.shape[1]
    xb = jnp.asarray(np.random.default_rng(3).standard_normal((2, k)), jnp.bfloat16)
    gs = jnp.asarray(ROUTINGS[0][0], jnp.int32)
    # On a GPU the grouped kernel takes bf16 4-bit experts (tests/pallas/test_grouped_*.py); the XLA
    # choice below is what runs without it.
    assert grouped_implementation(xb, w, platform="gpu") == "pallas_triton_grouped"
    assert "pallas_triton_grouped" in explain_grouped(xb, w, platform="gpu")
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", "pallas_triton_grouped")
    assert grouped_implementation(xb, w, platform="gpu") == "xla_routed_dequant"
    assert grouped_implementation(xb, w, platform="cpu") == "xla_routed_reference"
    x8 = jnp.zeros((E, k), jnp.bfloat16)
    assert grouped_implementation(x8, w, platform="gpu") == "xla_dequant_ragged_dot"
    assert grouped_implementation(x8.astype(jnp.float32), w, platform="cpu") == "xla_reference"
    # The GPU decode path (weights rounded to bf16, f32 accumulation), forced here on CPU, vs its prefill twin.
    got = grouped_qmatmul(xb, w, gs, implementation="xla_routed_dequant")
    ref = grouped_qmatmul(xb, w, gs, implementation="xla_dequant_ragged_dot")
    assert got.dtype == jnp.bfloat16
    g32, r32 = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_allclose(g32, r32, rtol=0, atol=1e-2 * np.abs(r32).max())
    text = explain_grouped(xb, w, platform="gpu")
    assert "xla_routed_dequant" in text and "M=2 rows < E=8 experts" in text and "bfloat16" in text
    assert "pallas_triton_grouped: disabled by JQUANT_DISABLED_KERNELS" in text
    assert "xla_reference" in explain_grouped(x8.astype(jnp.float32), w, platform="cpu")


def test_dense_experts_routed():
    rng = np.random.default_rng(4)
    dense = jnp.asarray(rng.standard_normal((E, 24, 64)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((3, 64)), jnp.float32)
    gs = jnp.asarray(ROUTINGS[1][0], jnp.int32)
    got = grouped_qmatmul(x, dense, gs)
    want = np.stack([np.asarray(x[0]) @ np.asarray(dense[0]).T, np.asarray(x[1]) @ np.asarray(dense[7]).T])
    np.testing.assert_allclose(np.asarray(got[:2]), want, rtol=1e-5, atol=1e-5)
    assert not np.asarray(got[2]).any()
    assert "dense float32[8, 24, 64]" in explain_grouped(x, dense, platform="cpu")
