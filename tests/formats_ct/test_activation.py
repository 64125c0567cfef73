"""`jquant.core.activation`: the ActQuant descriptor and its numpy fake-quantization spec.

Oracle: compressed-tensors 0.20's activation QDQ (``compute_dynamic_scales_and_zp`` +
``fake_quantize``, what its ``forward_quantize`` runs on a Linear's input) on float32 inputs,
bit for bit. int8 *dynamic* symmetric scales have two rules (`ActQuant.scale_rule`): ``"qmax"``
(default) is vLLM's ``scaled_int8_quant`` (``amax / 127``), checked against that formula;
``"half_range"`` (what the compressed-tensors loader sets) is compressed-tensors'
``calculate_qparams`` (``amax / 127.5``), checked against its QDQ bit for bit.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jquant.core.activation import (
    ActQuant,
    fake_quantize,
    fp4_act,
    fp8_act,
    int8_act,
    quantize_activations,
    scale_divisor,
)
from jquant.core.errors import FormatError
from jquant.core.qtypes import fp8_e4m3, int8
from tests.formats_ct.conftest import bits_equal


def _x(shape=(3, 5, 256), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 4, size=(*shape[:-1], 1)).astype(np.float32)
    x[0, 0, :] = 0  # an all-zero token
    return x


def _ct_qdq(x: np.ndarray, preset: str, *, scale=None, zero=None, global_scale=None):
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    args = preset_name_to_scheme(preset, ["Linear"]).input_activations
    xt = torch.from_numpy(x)
    g = None if global_scale is None else torch.from_numpy(global_scale)
    if args.dynamic in (True, "local"):
        s, z = compute_dynamic_scales_and_zp(value=xt, args=args, module=torch.nn.Module(), global_scale=g)
    else:
        s, z = torch.from_numpy(scale), None if zero is None else torch.from_numpy(zero)
    return ct_fake_quantize(x=xt, scale=s, zero_point=z, args=args, global_scale=g).numpy()


@pytest.mark.parametrize(
    "preset, act",
    [
        ("FP8_DYNAMIC", fp8_act(dynamic=True, granularity="token")),
        ("FP8_BLOCK", fp8_act(dynamic=True, granularity="group", group_size=128)),
        ("MXFP4", fp4_act(group_size=32, scale_dtype="float8_e8m0fnu")),
        ("MXFP8", ActQuant(fp8_e4m3, True, "group", 32, scale_dtype="float8_e8m0fnu").validate()),
    ],
)
def test_dynamic_matches_compressed_tensors(preset, act):
    x = _x()
    assert bits_equal(fake_quantize(x, act), _ct_qdq(x, preset))


def test_nvfp4_dynamic_local_with_global_scale():
    """NVFP4 activations: e4m3 group-16 scales under a static global divisor (CT dynamic='local')."""
    x = _x()
    g = np.array([448.0 * 6.0 / 9.5], np.float32)  # producer: 448 * 6 / calibrated amax
    act = fp4_act(group_size=16, scale_dtype="float8_e4m3fn", global_scale=g)
    got = fake_quantize(x, act)
    assert bits_equal(got, _ct_qdq(x, "NVFP4", global_scale=g))
    assert set(np.unique(np.abs(quantize_activations(x, act)[0]))) <= {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}


def _hard_x(group: int, seed: int) -> np.ndarray:
    """[2, 48, 8 * group] activations built to hit the QDQ's corners, one kind per group of ``group``:
    all-zero and -0.0 groups, units 1e-30 .. 1e30 (MX exponents far beyond +-12, e4m3 group scales
    that underflow to 0 or are subnormal), powers of two, and groups with elements placed on the
    E2M1 rounding thresholds (x / s = 0.25, 0.75, ..., 5.0 for the NVFP4 scale of that group)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * 48 * 8, group)).astype(np.float32)
    unit = np.float32(10.0) ** rng.integers(-30, 31, size=(x.shape[0], 1)).astype(np.float32)
    x = (x * unit).astype(np.float32)
    kind = np.arange(x.shape[0]) % 8
    x[kind == 0] = 0.0
    x[kind == 1] = -0.0
    x[kind == 2] = (np.sign(x[kind == 2]) * np.exp2(rng.integers(-40, 40, x[kind == 2].shape))).astype(np.float32)
    x[kind == 3, 1:] = -0.0  # one non-zero element
    g = np.float32(448.0 * 6.0 / 9.5)
    for r in np.flatnonzero(kind == 4):  # thresholds of x / s, s = e4m3(g * amax / 6) / g as CT computes it
        amax = np.float32(rng.uniform(0.5, 9.0))
        s = np.float32(np.float32(g * (amax / np.float32(6.0))).astype(ml_dtypes.float8_e4m3fn)) / g
        th = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)[rng.integers(0, 7, group)]
        x[r] = (th * s * rng.choice([-1, 1], group)).astype(np.float32)
        x[r, 0] = amax
    return x.reshape(2, 48, 8 * group)


@pytest.mark.parametrize("preset", ["NVFP4", "MXFP4", "MXFP8"])
def test_fp4_mx_spec_is_forward_quantize_bit_for_bit(preset):
    """The numpy spec == compressed-tensors' ``forward_quantize`` (what ``quantized_forward`` runs on a
    Linear's input, lifecycle/forward.py) on corner-case activations, outputs and scales, bit for bit.

    MXFP8 only: CT adds its symmetric zero point 0.0 to x / s (_quantize_dequantize), turning a -0.0
    input into +0.0; the spec keeps -0.0 (same value), so -0.0 is compared by value there."""
    import torch
    from compressed_tensors.quantization import QuantizationStatus, preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    args = preset_name_to_scheme(preset, ["Linear"]).input_activations
    module = torch.nn.Module()
    module.quantization_status = QuantizationStatus.DECOMPRESSED
    g = np.array([448.0 * 6.0 / 9.5], np.float32)
    if preset == "NVFP4":
        act = fp4_act(group_size=16, scale_dtype="float8_e4m3fn", global_scale=g)
        module.input_global_scale = torch.nn.Parameter(torch.from_numpy(g), requires_grad=False)
    elif preset == "MXFP4":
        act = fp4_act(group_size=32, scale_dtype="float8_e8m0fnu")
    else:
        act = ActQuant(fp8_e4m3, True, "group", 32, scale_dtype="float8_e8m0fnu").validate()
    x = _hard_x(act.group_size, seed=len(preset))
    want = forward_quantize(module, torch.from_numpy(x), "input", args).numpy()
    got = fake_quantize(x, act)
    if preset == "MXFP8":
        assert np.array_equal(got, want)
        got, want = got + np.float32(0), want + np.float32(0)  # -0.0 -> +0.0 on both sides
    assert bits_equal(got, want)
    gs = getattr(module, "input_global_scale", None)
    s_ct, _ = compute_dynamic_scales_and_zp(value=torch.from_numpy(x), args=args, module=module, global_scale=gs)
    s_ct = (s_ct / gs if gs is not None else s_ct).numpy()  # _quantize_dequantize: scale / global_scale
    assert bits_equal(quantize_activations(x, act)[1].reshape(s_ct.shape), s_ct)
    # NaN stays NaN (cast_to_fp4's magnitude * sign; the fp8 cast), in its group only
    x[0, 0, 3] = np.nan
    want = forward_quantize(module, torch.from_numpy(x), "input", args).numpy()
    assert np.array_equal(np.isnan(fake_quantize(x, act)), np.isnan(want)) and np.isnan(want).any()


def test_static_fp8_per_tensor_matches_compressed_tensors():
    x = _x()
    s = np.array([0.0123], np.float32)
    assert bits_equal(
        fake_quantize(x, fp8_act(dynamic=False, granularity="tensor", scale=s)), _ct_qdq(x, "FP8", scale=s)
    )


def test_static_int8_symmetric_and_asymmetric_match_compressed_tensors():
    """Static int8 (W8A8 with calibrated input_scale / input_zero_point): round-half-even, clamp [-128, 127]."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize

    x = _x()
    s = np.array([0.02], np.float32)
    for sym, z in ((True, None), (False, np.array([-7], np.int32))):
        act = int8_act(dynamic=False, granularity="tensor", scale=s, zero=z, symmetric=sym)
        args = QuantizationArgs(num_bits=8, type="int", symmetric=sym, strategy="tensor", dynamic=False)
        zt = None if z is None else torch.from_numpy(z.astype(np.int8))
        want = ct_fake_quantize(torch.from_numpy(x), torch.from_numpy(s), zt, args).numpy()
        assert bits_equal(fake_quantize(x, act), want), sym


def test_int8_dynamic_per_token_is_vllm_amax_over_127():
    x = _x()
    got_q, got_s, _ = quantize_activations(x, int8_act(dynamic=True))
    amax = np.abs(x).max(-1, keepdims=True)
    s = np.where(amax == 0, 1, amax / np.float32(127)).astype(np.float32)
    assert np.array_equal(got_s.reshape(s.shape), s)
    assert np.array_equal(got_q, np.clip(np.rint(x / s), -128, 127))
    assert np.abs(got_q).max() == 127  # the token's amax maps exactly to qmax
    # dynamic asymmetric per token (vLLM azp): codes span [-128, 127], zero point integral
    q, s, z = quantize_activations(x, int8_act(dynamic=True, symmetric=False))
    assert q.min() >= -128 and q.max() <= 127 and np.array_equal(z, np.rint(z))
    err = np.abs(fake_quantize(x, int8_act(dynamic=True, symmetric=False)) - x)
    assert (err <= s.reshape(*x.shape[:-1], 1) * 0.5 + 1e-6).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_dynamic_half_range_matches_compressed_tensors(symmetric):
    """W8A8 (llm-compressor) dynamic per-token int8: compressed-tensors' QDQ divides amax by 127.5."""
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
    from compressed_tensors.quantization.utils.helpers import compute_dynamic_scales_and_zp

    x = _x()
    x[1] += 0.7  # one-signed tokens: the asymmetric range is not centred
    args = QuantizationArgs(num_bits=8, type="int", symmetric=symmetric, strategy="token", dynamic=True)
    xt = torch.from_numpy(x)
    s, z = compute_dynamic_scales_and_zp(value=xt, args=args, module=torch.nn.Module())
    want = ct_fake_quantize(x=xt, scale=s, zero_point=z, args=args).numpy()
    act = ActQuant(int8, True, "token", None, symmetric, scale_rule="half_range").validate()
    assert bits_equal(fake_quantize(x, act), want)
    if symmetric:
        assert scale_divisor("int8", "half_range") == 127.5 and scale_divisor("int8", "qmax") == 127.0
        assert not bits_equal(fake_quantize(x, int8_act(dynamic=True)), want)  # vLLM's amax / 127 differs
        q, _, _ = quantize_activations(x, act)
        assert q.min() == -128 and q.max() == 127  # +-amax -> +-127.5: clamped to 127, rounded (even) to -128
    for name in ("fp8_e4m3", "fp4_e2m1"):  # symmetric ranges: both rules give the same divisor
        assert scale_divisor(name, "half_range") == scale_divisor(name, "qmax")


def test_scale_rule_validated_and_serialized():
    act = ActQuant(int8, True, "token", scale_rule="half_range").validate()
    back = ActQuant.from_json(act.static_json(), act.arrays())
    assert back.scale_rule == "half_range" and back.static_json() == act.static_json()
    old = {k: v for k, v in act.static_json().items() if k != "scale_rule"}  # files written before the field
    assert ActQuant.from_json(old, {}).scale_rule == "qmax"
    with pytest.raises(FormatError, match="scale_rule"):
        ActQuant(int8, True, "token", scale_rule="127.5").validate()


def test_fbgemm_amax_upper_bound_clamps():
    x = _x()[1:]  # no all-zero token (its scale is 1 by convention)
    act = ActQuant(fp8_e4m3, True, "token", amax_ub=1.0).validate()
    _, s, _ = quantize_activations(x, act)
    assert s.max() <= np.float32(1.0 / 448) and np.abs(fake_quantize(x, act)).max() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (dict(qtype=fp8_e4m3, dynamic=False, granularity="token", scale=np.ones(1, np.float32)), "per tensor"),
        (dict(qtype=fp8_e4m3, dynamic=False, granularity="tensor"), "needs a scale"),
        (dict(qtype=fp8_e4m3, dynamic=False, granularity="tensor", scale=np.array([np.nan], np.float32)), "positive"),
        (dict(qtype=fp8_e4m3, dynamic=True, granularity="group"), "group_size"),
        (dict(qtype=fp8_e4m3, dynamic=True, granularity="token", symmetric=False), "asymmetric"),
        (
            dict(qtype=fp8_e4m3, dynamic=True, granularity="group", group_size=16, scale_dtype="float8_e4m3fn"),
            "global_scale",
        ),
    ],
)
def test_validate_refuses_inconsistent_descriptors(kwargs, problem):
    with pytest.raises(FormatError, match=problem) as e:
        ActQuant(**kwargs).validate("model.layers.0.mlp.up_proj.input_quant")
    assert e.value.tensor == "model.layers.0.mlp.up_proj.input_quant"


def test_jax_pytree_and_jit():
    """ActQuant is a pytree: arrays are leaves (device-transferable), recipe fields are static."""
    import jax
    import jax.numpy as jnp

    from jquant.core.activation import register_pytree

    register_pytree()
    act = fp4_act(group_size=16, scale_dtype="float8_e4m3fn", global_scale=np.array([3.0], np.float32))
    leaves, treedef = jax.tree_util.tree_flatten(act)
    assert len(leaves) == 1 and leaves[0][0] == 3.0
    dev = jax.tree_util.tree_map(jnp.asarray, act)
    assert isinstance(dev, ActQuant) and dev.group_size == 16 and isinstance(dev.global_scale, jax.Array)
    out = jax.jit(lambda a, y: y * a.global_scale[0])(dev, jnp.ones(2))
    assert float(out[0]) == 3.0
