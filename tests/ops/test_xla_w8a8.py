"""`quantize_act` == `fake_quantize` bit-exactly, and the XLA-native W8A8 matmul == the spec.

The spec is ``reference_qmatmul(fake_quantize(x, act), w)``; tolerance scaled with sqrt(K)
(`tests.pallas.helpers.assert_close`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.activation import ActQuant, fp4_act
from jquant.core.qtypes import int8
from jquant.ops.act_quant import fake_quantize, native_act_reason, quantize_act
from jquant.ops.xla_w8a8 import why_not_xla_w8a8, xla_w8a8_matmul
from tests.ops.w8a8_cases import ACTS, WEIGHTS, WEIGHTS_BY_NAME, check_against_spec, make_w8, make_x, reconstruct
from tests.ops.w8a8_cases import to_device as dev

DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}


@pytest.mark.parametrize("name", sorted(ACTS))
def test_quantize_act_bit_exact_with_fake_quantize(name):
    act = ACTS[name]
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal((3, 5, 256)) * rng.uniform(0.1, 3, (3, 5, 1))).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero unit: scale 1, codes 0
    x[1, 1, :9] *= 3e3  # huge values (clipped against static scales / amax_ub)
    x[2, 2] *= 1e-5  # tiny values (subnormal fp8 codes, f16 subnormal inputs)
    x[2, 3, 128:] = 0.0  # a zero group next to a non-zero one
    xs = [jnp.asarray(x, dt) for dt in DTYPES.values()]

    @jax.jit  # bf16, f16 and f32 inputs in one compilation
    def both(xs, act):
        return [(quantize_act(x, act), fake_quantize(x, act)) for x in xs]

    units = act.group_size and 256 // act.group_size or 1
    for xj, ((codes, scales), ref) in zip(xs, both(xs, jax.device_put(act))):
        assert codes.shape == x.shape and scales.shape == (3, 5, units) and scales.dtype == jnp.float32
        assert codes.dtype == (jnp.int8 if act.qtype.name == "int8" else jnp.float8_e4m3fn)
        got = reconstruct(codes, scales).astype(xj.dtype)
        np.testing.assert_array_equal(
            np.asarray(got.astype(jnp.float32)), np.asarray(ref.astype(jnp.float32)), err_msg=str(xj.dtype)
        )
        assert np.asarray(jnp.abs(codes.astype(jnp.float32))).max() > 100  # the codes use their range


def test_native_act_reason():
    assert all(native_act_reason(a) == "" for a in ACTS.values())
    asym = ActQuant(int8, True, "token", symmetric=False).validate()
    nvfp4 = fp4_act(group_size=16, scale_dtype="float8_e4m3fn", global_scale=np.array([300.0], np.float32))
    assert "asymmetric" in native_act_reason(asym)
    assert "fp4_e2m1" in native_act_reason(nvfp4)
    with pytest.raises(ValueError, match="asymmetric"):
        quantize_act(jnp.zeros((2, 32)), asym)


@pytest.mark.parametrize("case", WEIGHTS, ids=lambda c: c.name)
def test_xla_w8a8_matches_spec(case):
    rng = np.random.default_rng(len(case.name))
    n, k = 203, 384  # odd N; K = 3 scale blocks
    w = make_w8(rng, n, k, case)
    act = ACTS[case.act]
    xs = [make_x(rng, (m, k)) for m in (1, 129)]
    assert all(why_not_xla_w8a8(x, w, act) == "" for x in xs)
    ys = jax.jit(lambda xs, w: [xla_w8a8_matmul(x, w, act) for x in xs])(xs, dev(w))  # one compilation
    for x, y in zip(xs, ys):
        assert y.shape == (x.shape[0], n) and y.dtype == x.dtype
        check_against_spec(y, x, w, act, what=f"{case.name} m={x.shape[0]}")


@pytest.mark.parametrize("dt", ["f16", "f32"])
def test_xla_w8a8_3d_input_dtypes_and_k_edge(dt):
    """[B, T, K] input; K = 320 is not a multiple of the 128-column weight blocks (padded K block)."""
    rng = np.random.default_rng(5)
    case = WEIGHTS_BY_NAME["fp8-block128-e8m0-token"]
    w = make_w8(rng, 130, 320, case)
    x = make_x(rng, (2, 3, 320), DTYPES[dt])
    y = jax.jit(xla_w8a8_matmul)(x, dev(w), ACTS[case.act])
    assert y.shape == (2, 3, 130) and y.dtype == x.dtype
    check_against_spec(y, x, w, ACTS[case.act], what=dt)


def test_xla_w8a8_chunked_blocks_equal_batched():
    """A small partial budget runs the K blocks in a loop of chunks: same result (f32 sums, reordered)."""
    rng = np.random.default_rng(6)
    case = WEIGHTS_BY_NAME["fp8-block128"]
    w = make_w8(rng, 64, 768, case)
    x = make_x(rng, (9, 768))
    act = ACTS[case.act]
    full = jax.jit(xla_w8a8_matmul)(x, dev(w), act)
    chunked = jax.jit(lambda x, w: xla_w8a8_matmul(x, w, act, max_partial_bytes=2 * 9 * 64 * 4))(x, dev(w))
    check_against_spec(chunked, x, w, act, what="chunked")
    np.testing.assert_allclose(np.asarray(chunked, np.float32), np.asarray(full, np.float32), rtol=2e-2, atol=1e-2)


def test_why_not_xla_w8a8_declines():
    rng = np.random.default_rng(7)
    w8 = make_w8(rng, 32, 256, WEIGHTS_BY_NAME["int8-channel"])
    wf = make_w8(rng, 32, 256, WEIGHTS_BY_NAME["fp8-channel-bf16"])
    wp = make_w8(rng, 32, 256, WEIGHTS_BY_NAME["int8-channel-perm"])
    x = jnp.zeros((4, 256), jnp.bfloat16)
    assert "no mixed" in why_not_xla_w8a8(x, w8, ACTS["fp8-token"])
    assert "no mixed" in why_not_xla_w8a8(x, wf, ACTS["int8-token"])
    assert "K=" in why_not_xla_w8a8(jnp.zeros((4, 128)), wf, ACTS["fp8-token"])
    grouped = ActQuant(int8, True, "group", 64).validate()
    assert "perm" in why_not_xla_w8a8(x, wp, grouped)
    with pytest.raises(ValueError, match="no mixed"):
        xla_w8a8_matmul(x, w8, ACTS["fp8-token"])
