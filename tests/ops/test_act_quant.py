"""jnp fake-quantization of activations == the numpy spec (`jquant.core.activation.fake_quantize`), bit-exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.activation import ActQuant, fake_quantize, fp4_act, fp8_act, int8_act
from jquant.core.qtypes import fp8_e4m3, int8
from jquant.ops.act_quant import fake_quantize as jnp_fake_quantize

RECIPES = {
    "int8-dyn-token": int8_act(dynamic=True),
    "int8-dyn-token-asym": int8_act(dynamic=True, symmetric=False),
    "int8-dyn-token-half-range": ActQuant(int8, True, "token", scale_rule="half_range").validate(),
    "fp8-dyn-group-half-range": ActQuant(fp8_e4m3, True, "group", 32, scale_rule="half_range").validate(),
    "int8-static": int8_act(dynamic=False, granularity="tensor", scale=np.array([0.02], np.float32)),
    "int8-static-asym": ActQuant(
        int8, False, "tensor", None, False, np.array([0.03], np.float32), np.array([5], np.int32)
    ).validate(),
    "fp8-dyn-token": fp8_act(dynamic=True),
    "fp8-dyn-group": fp8_act(dynamic=True, granularity="group", group_size=32),
    "fp8-static": fp8_act(dynamic=False, granularity="tensor", scale=np.array([0.01], np.float32)),
    "fp8-dyn-ub": fp8_act(dynamic=True, amax_ub=1.5),
    "nvfp4": fp4_act(group_size=16, scale_dtype="float8_e4m3fn", global_scale=np.array([300.0], np.float32)),
    "mxfp4": fp4_act(group_size=32, scale_dtype="float8_e8m0fnu"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_jnp_fake_quantize_bit_exact(name):
    act = RECIPES[name]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 3, 128)) * rng.uniform(0.1, 3, (5, 3, 1))).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero unit takes scale 1
    ref = fake_quantize(x, act)
    got = np.asarray(jax.jit(jnp_fake_quantize)(jnp.asarray(x), jax.device_put(act)))
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(ref, x)  # it did quantize


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # x / 2**-127 in a NaN group, as CT
@pytest.mark.parametrize("name", ["nvfp4", "mxfp4", "mxfp8"])
def test_jnp_fp4_mx_bit_exact_over_wide_range(name):
    """Groups from 1e-15 to 1e15 (MX exponents up to +-50; XLA's exp2 is inexact past +-12), all-zero
    and -0.0 groups (MX: 2**-127, which XLA flushes to 0): bit for bit, signs of zero included.
    (Wider ranges put x / s below 2**-126, where XLA flushes to zero: the sign of a zero can differ.)
    A NaN stays NaN; the rest of its group is not compared (XLA CPU's vectorized max may drop it from
    the group's amax)."""
    act = RECIPES.get(name) or ActQuant(fp8_e4m3, True, "group", 32, scale_dtype="float8_e8m0fnu").validate()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 96, 16)).astype(np.float32)
    x *= (np.float32(10.0) ** rng.integers(-15, 16, (4, 96, 1))).astype(np.float32)
    x[:, ::7] = 0.0
    x[:, 3::7] = -0.0
    x = x.reshape(4, 3, 512)
    ref = fake_quantize(x, act)
    qdq = jax.jit(jnp_fake_quantize)
    got = np.asarray(qdq(jnp.asarray(x), jax.device_put(act)))
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    x[1, 1, 5] = np.nan
    assert np.isnan(fake_quantize(x, act)[1, 1, 5]) and np.isnan(np.asarray(qdq(jnp.asarray(x), act))[1, 1, 5])


@pytest.mark.parametrize("name", ["fp8-dyn-token", "fp8-static", "nvfp4"])
def test_e4m3_rounding_survives_gpu_convert_folding(name):
    """XLA GPU's ``SimplifyFPConversions`` (default on, ``xla_allow_excess_precision``) folds the
    chain ``f32 -> f8 -> f32`` into nothing, which made the fp8 fake-quantization a no-op on the GPU
    (found on an H200: every fp8 W8A8 kernel looked wrong against that reference). The rounding
    must sit behind an optimization barrier in the program lowered for CUDA."""
    import re

    x = jax.ShapeDtypeStruct((4, 64), jnp.bfloat16)
    text = jax.jit(jnp_fake_quantize).trace(x, RECIPES[name]).lower(lowering_platforms=("cuda",)).as_text()
    assert re.search(r"optimization_barrier[^\n]*f8E4M3FN", text), "no barrier around the e4m3 rounding"
