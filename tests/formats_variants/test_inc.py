"""Intel Neural Compressor FP8 checkpoints (jquant.formats.inc).

Two layers: (1) when neural-compressor is importable, INC itself quantizes and saves the tiny
Llama on CPU (tests/formats_variants/producers_inc.py) and every weight must match each
PatchedLinear's own ``dequant_weights`` bit for bit; (2) always, synthetic checkpoints written in
the layout INC's ``save`` produces (tensor names, [K, N] weights, bf16 scalar or [N] scales,
``quantization_config`` without ``quant_method``), copied from such a run, for detection, the
transposition and the refusals.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from tests.fixtures.producers_ct import write_checkpoint
from tests.fixtures.producers_gptq_awq import ProducerUnavailable
from tests.formats_variants.producers_inc import SCALE_METHODS, inc_dir

BF16 = ml_dtypes.bfloat16
E4M3 = ml_dtypes.float8_e4m3fn
# FP8Config.to_dict() as INC 3.10 saved it (mode LOAD; no quant_method; booleans as strings)
INC_QC = {
    "fp8_config": "E4M3", "hp_dtype": "bf16", "mode": "LOAD", "scale_method": "maxabs_arbitrary",
    "blocklist": {"types": [], "names": []}, "allowlist": {"types": [], "names": []}, "observer": "maxabs",
    "use_qdq": "True", "fake_quant": "False", "scale_format": "scalar", "world_size": -1,
}  # fmt: skip
M = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def produced():
    try:
        return inc_dir()
    except ProducerUnavailable as e:
        pytest.skip(f"INC producer unavailable: {e}")


@pytest.mark.parametrize("method", SCALE_METHODS)
def test_matches_inc_dequant_weights(produced, method):
    oracle = np.load(produced / method / "_oracle.npz")
    ck = jquant.convert(produced / method)
    assert ck.format == "inc" and len(oracle.files) == 15  # 2 x 7 projections + lm_head (blocklist empty)
    per_channel = "pcs" in method
    for name in oracle.files:
        q = ck.weights[name]
        n, k = oracle[name].shape
        assert q.qtype.name == "fp8_e4m3" and q.shape == (n, k)
        assert q.block == ((1, k) if per_channel else (n, k))
        # INC: f32 dequantize_per_{tensor,channel}, then cast to the bf16 hp dtype
        got = np.asarray(dequantize(q), np.float32).astype(BF16).astype(np.float32)
        np.testing.assert_array_equal(got, oracle[name])
        assert ck.weights[name.replace(".weight", ".input_quant")].dynamic is False


def _tensors(k=64, n=32, per_channel=False, seed=0):
    rng = np.random.default_rng(seed)
    w_nk = rng.uniform(-400, 400, size=(n, k)).astype(E4M3)
    scale = (2.0 ** rng.integers(-12, -6, size=(n,))).astype(BF16) if per_channel else np.array(3.1e-4, BF16)
    t = {
        f"{M}.weight": np.ascontiguousarray(w_nk.T),  # INC stores [K, N]
        f"{M}.dequant_weights.scale": scale,
        f"{M}.quant_input.scale": np.array(0.03125, BF16),
        f"{M}.quant_input.scale_inv": np.array(32.0, BF16),
        "model.norm.weight": np.ones(k, BF16),
    }
    if per_channel:
        t[f"{M}.dequant_weights.zero_point"] = np.array(0.0, np.float32)
        t[f"{M}.quant_input.zero_point"] = np.array(0.0, np.float32)
    return t, w_nk, scale


@pytest.mark.parametrize("per_channel", [False, True])
def test_synthetic_layout(tmp_path, per_channel):
    t, w_nk, scale = _tensors(per_channel=per_channel)
    ck = jquant.convert(write_checkpoint(tmp_path / "ck", {"quantization_config": INC_QC}, t))
    assert ck.format == "inc"
    q = ck.weights[f"{M}.weight"]
    np.testing.assert_array_equal(q.data.view(np.uint8), w_nk.view(np.uint8))
    s = scale.astype(np.float32).reshape(-1, 1)
    np.testing.assert_array_equal(dequantize(q), w_nk.astype(np.float32) * s)
    act = ck.weights[f"{M}.input_quant"]
    assert act.granularity == "tensor" and float(np.asarray(act.scale).reshape(-1)[0]) == 0.03125
    np.testing.assert_array_equal(ck.weights["model.norm.weight"], t["model.norm.weight"])


def _convert(tmp_path, qc=None, edit=None):
    t, _, _ = _tensors()
    if edit is not None:
        edit(t)
    return jquant.convert(write_checkpoint(tmp_path / "ck", {"quantization_config": qc or INC_QC}, t))


@pytest.mark.parametrize(
    ("qc", "err", "key", "problem"),
    [
        ({**INC_QC, "mode": "MEASURE"}, UnsupportedFormatError, "mode", "only saved"),
        ({**INC_QC, "fp8_config": "E3M4"}, UnsupportedFormatError, "fp8_config", "E3M4"),
        ({**INC_QC, "fake_quant": "True"}, UnsupportedFormatError, "fake_quant", "high-precision"),
        ({**INC_QC, "blocklist": {"names": "lm_head"}}, ConfigError, "blocklist", "must be"),
        ({"bits": 4, "group_size": 128}, UnsupportedFormatError, "quant_method", "no quant_method"),
    ],
)  # fmt: skip
def test_bad_config(tmp_path, qc, err, key, problem):
    with pytest.raises(err, match=problem) as e:
        _convert(tmp_path, qc=qc)
    assert e.value.tensor == f"quantization_config.{key}"


def _no_scale(t):
    t.update({k.replace("up_proj", "gate_proj"): v for k, v in t.items() if k.startswith(M)})
    t.pop(f"{M}.dequant_weights.scale")


def _stray(t):
    t["model.layers.0.input_layernorm.weight"] = np.ones(64, BF16)
    t["model.layers.0.input_layernorm.quant_input.scale"] = np.array(0.5, BF16)


def _kv(t):
    t["model.layers.0.self_attn.k_cache.quant_input.scale"] = np.array(0.5, BF16)


@pytest.mark.parametrize(
    ("edit", "tensor", "problem"),
    [
        (lambda t: t.update({f"{M}.dequant_weights.scale": np.ones(7, BF16)}), f"{M}.dequant_weights.scale", r"shape \[7\]"),
        (lambda t: t.update({f"{M}.weight": t[f"{M}.weight"].astype(np.float32)}), f"{M}.weight", "float32"),
        (lambda t: t.update({f"{M}.quant_input.scale": np.array(-1.0, BF16)}), f"{M}.quant_input.scale", "positive finite"),
        (lambda t: t.pop(f"{M}.quant_input.scale"), f"{M}.quant_input.scale", "missing tensor"),
        (lambda t: t.update({f"{M}.dequant_weights.zero_point": np.array(2.0, np.float32)}), f"{M}.dequant_weights.zero_point", "non-zero"),
        (_kv, "model.layers.0.self_attn.k_cache.quant_input.scale", "KV-cache"),
        (_no_scale, f"{M}.dequant_weights.scale", "missing tensor"),
        (_stray, "model.layers.0.input_layernorm.quant_input.scale", "without an fp8 weight"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(tmp_path, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        _convert(tmp_path, edit=edit)
    assert e.value.tensor == tensor
