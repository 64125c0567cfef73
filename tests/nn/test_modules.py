"""QuantLinear / QuantEmbed / Weights: quantized weights stay quantized and compute the spec."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.core import QArray, dequantize
from jquant.core.activation import fake_quantize as np_fake_quantize
from jquant.core.activation import fp8_act, int8_act
from jquant.nn import QParam, QuantEmbed, QuantLinear, Weights
from tests.ops.qmatmul_suite import QCase, make_qarray

W_CASE = QCase("uint4", (1, 64), 5, 48, 192, zero="int", perm=True)


def _x(m=5, k=192, seed=1):
    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


def test_quant_linear_matches_dense_of_dequantized():
    w = make_qarray(W_CASE)
    b = np.linspace(-1, 1, 48).astype(np.float32)
    layer = QuantLinear(192, 48, weight=jax.device_put(w), bias=jnp.asarray(b))
    assert layer.quantized
    x = _x()
    ref = x.astype(np.float64) @ dequantize(w).astype(np.float64).T + b
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the weight lives in a QParam as a QArray of packed uint8 codes: 4 bits per weight
    qparams = nnx.state(layer, QParam)
    leaves = jax.tree.leaves(qparams, is_leaf=lambda v: isinstance(v, QArray))
    assert len(leaves) == 1 and isinstance(leaves[0], QArray) and leaves[0].data.dtype == jnp.uint8
    assert leaves[0].data.shape == (48, 96)


def test_quant_linear_dense_init_like_nnx_linear():
    layer = QuantLinear(16, 8, use_bias=True, rngs=nnx.Rngs(0))
    assert not layer.quantized and layer.bias[...].shape == (8,)
    x = _x(3, 16)
    w = np.asarray(layer.weight.get_value())
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), x @ w.T, rtol=1e-5, atol=1e-5)
    y = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x))  # works under nnx.jit
    assert y.shape == (3, 8)


def test_quant_linear_shape_errors():
    w = jax.device_put(make_qarray(W_CASE))
    with pytest.raises(jquant.ConfigError, match=r"weight shape \(48, 192\) != \(out, in\) = \(192, 48\)"):
        QuantLinear(48, 192, weight=w)
    with pytest.raises(jquant.ConfigError, match="bias shape"):
        QuantLinear(192, 48, weight=w, bias=jnp.zeros(47))
    with pytest.raises(jquant.ConfigError, match="needs either"):
        QuantLinear(192, 48)


@pytest.mark.parametrize(
    "act",
    [int8_act(dynamic=True), fp8_act(dynamic=False, granularity="tensor", scale=np.array([0.02], np.float32))],
    ids=["int8-dynamic", "fp8-static"],
)
def test_quant_linear_input_quant(act):
    w = make_qarray(W_CASE)
    layer = QuantLinear(192, 48, weight=jax.device_put(w), input_quant=jax.device_put(act))
    x = _x()
    ref = np_fake_quantize(x, act).astype(np.float64) @ dequantize(w).astype(np.float64).T
    got = np.asarray(layer(jnp.asarray(x)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    plain = x.astype(np.float64) @ dequantize(w).astype(np.float64).T
    assert np.abs(got - plain).max() > 1e-3  # the activations really were quantized


def test_quant_embed_lookup_and_attend():
    case = QCase("int8", (1, 32), 1, 100, 64)  # GGUF Q8_0-like table
    w = make_qarray(case)
    emb = QuantEmbed(100, 64, weight=jax.device_put(w))
    ids = np.array([[3, 99, 0], [3, 3, 50]], np.int32)
    table = dequantize(w)
    np.testing.assert_array_equal(np.asarray(emb(jnp.asarray(ids))), table[ids])
    h = _x(2, 64)
    np.testing.assert_allclose(np.asarray(emb.attend(jnp.asarray(h))), h @ table.T, rtol=1e-5, atol=1e-4)


def test_quant_embed_gathers_rows_not_table():
    """A lookup's compiled program never materializes the dequantized [vocab, K] table."""
    case = QCase("uint4", (1, 32), 1, 4096, 64, zero="float")
    emb = QuantEmbed(4096, 64, weight=jax.device_put(make_qarray(case)))
    graphdef, state = nnx.split(emb)
    f = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
    hlo = f.lower(state, jnp.zeros((1, 3), jnp.int32)).as_text()
    assert "f32[4096,64]" not in hlo and "4096x64xf32" not in hlo


def test_weights_missing_and_wrong_shape_are_named():
    w = Weights({"a.weight": np.zeros((4, 8), np.float32)}, jnp.float32, source="ckpt-dir")
    with pytest.raises(jquant.FormatError, match=r"file ckpt-dir, tensor 'b.weight': tensor missing"):
        w.linear("b", 8, 4)
    with pytest.raises(jquant.FormatError, match=r"tensor 'a.weight': shape \(4, 8\), expected \(8, 4\)"):
        w.linear("a", 4, 8)
    lin = w.linear("a", 8, 4)
    assert w.used == {"a.weight"} and w.unused() == [] and lin.bias is None
