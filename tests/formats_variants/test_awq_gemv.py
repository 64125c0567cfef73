"""AutoAWQ GEMV / GEMV_FAST checkpoints (jquant.formats.awq_gemv) against AutoAWQ's own packers.

The same fp16 layers are packed by ``WQLinear_GEMM``, ``WQLinear_GEMV`` and ``WQLinear_GEMVFast``
(tests/formats_variants/producers_awq.py); the GEMM checkpoint is the oracle (its conversion is
checked against AutoAWQ's ``dequantize_gemm`` in tests/formats).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import FormatError, UnsupportedFormatError
from jquant.formats.awq_gemv import unpack_gemv_fast_qweight, zeros_width
from tests.formats_variants.producers_awq import GROUP_SIZES, LAYERS, awq_variants


@pytest.fixture(scope="module")
def variants():
    return awq_variants()


@pytest.fixture(scope="module")
def converted(variants):
    return {
        (g, v): jquant.convert(variants / f"g{g}-{v}").weights
        for g in GROUP_SIZES
        for v in ("gemm", "gemv", "gemv_fast")
    }


def test_pack_intweight_inverse(variants):
    d = np.load(variants / "pack_intweight.npz")
    assert d["packed"].dtype == np.int16 and d["packed"].shape == (3, 192)
    np.testing.assert_array_equal(unpack_gemv_fast_qweight(d["packed"]), d["codes"])


def test_zeros_width_matches_autoawq_shapes(variants):
    for g in GROUP_SIZES:
        t = load_file(str(variants / f"g{g}-gemv" / "model.safetensors"))
        for name, k, n, _ in LAYERS:
            assert t[f"{name}.qzeros"].shape == (n, zeros_width(k, g))
    assert zeros_width(256, 32) == 4 and zeros_width(128, 64) == 2 and zeros_width(4096, 128) == 4
    assert zeros_width(256, 48) is None


@pytest.mark.parametrize("g", GROUP_SIZES)
def test_gemv_equals_gemm(converted, g):
    gemm, gemv = converted[(g, "gemm")], converted[(g, "gemv")]
    assert sorted(gemm) == sorted(gemv)
    for name, k, n, bias in LAYERS:
        a, b = gemm[f"{name}.weight"], gemv[f"{name}.weight"]
        assert b.shape == (n, k) and b.block == (1, g) and b.qtype == a.qtype
        np.testing.assert_array_equal(b.data, a.data)
        np.testing.assert_array_equal(b.scale, a.scale)
        assert (a.zero is None) == (b.zero is None)
        if a.zero is not None:
            np.testing.assert_array_equal(b.zero, a.zero)
        np.testing.assert_array_equal(dequantize(b), dequantize(a))
        if bias:
            np.testing.assert_array_equal(gemv[f"{name}.bias"], gemm[f"{name}.bias"])


@pytest.mark.parametrize("g", GROUP_SIZES)
def test_gemv_fast_float_zero(converted, g):
    gemm, fast = converted[(g, "gemm")], converted[(g, "gemv_fast")]
    for name, k, n, _ in LAYERS:
        a, b = gemm[f"{name}.weight"], fast[f"{name}.weight"]
        assert b.qtype.name == "uint4" and b.shape == (n, k) and b.block == (1, g)
        assert b.zero.dtype == np.float16 and b.scale.dtype == np.float16
        np.testing.assert_array_equal(b.data, a.data)
        np.testing.assert_array_equal(b.scale, a.scale)
        z = np.full(a.scale.shape, 8, np.uint8) if a.zero is None else a.zero
        # WQLinear_GEMVFast.from_linear: qzeros = -(f16 scale * f32 zero).to(f16)
        np.testing.assert_array_equal(b.zero, (a.scale.astype(np.float32) * z.astype(np.float32)).astype(np.float16))
        # w = q*s - s*z, off from GEMM's s*(q - z) only by the f16 rounding of s*z (z <= 15: half an ulp of 16s)
        np.testing.assert_allclose(dequantize(b), dequantize(a), rtol=0, atol=float(np.abs(a.scale).max()) * 2**-7)


def _broken(variants, tmp_path, version, edit):
    d = tmp_path / version
    shutil.copytree(variants / f"g128-{version}", d)
    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"))
    return d


Q = "model.layers.0.self_attn.q_proj"


def _pad_scale(t):
    t[f"{Q}.scales"][:, -1] = 1.0


def _pad_zero(t):
    t[f"{Q}.qzeros"][:, -1] = 0x70000000


def _fast_pad(t):
    t[f"{Q}.qzeros"][-1, :] = 1.0


def _fast_nan(t):
    t[f"{Q}.qzeros"][0, 3] = np.nan


def _fast_dtype(t):
    t[f"{Q}.qweight"] = t[f"{Q}.qweight"].astype(np.int32)


@pytest.mark.parametrize(
    ("version", "edit", "tensor", "problem"),
    [
        ("gemv", _pad_scale, "scales", "padding columns beyond the last group is not zero"),
        ("gemv", _pad_zero, "qzeros", "padding nibbles beyond the last group is not zero"),
        ("gemv", lambda t: t.pop(f"{Q}.qzeros"), "qzeros", "missing tensor"),
        ("gemv_fast", _fast_pad, "qzeros", "padding rows beyond the last group is not zero"),
        ("gemv_fast", _fast_nan, "qzeros", "non-finite offset"),
        ("gemv_fast", _fast_dtype, "qweight", "dtype int32"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(variants, tmp_path, version, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        jquant.convert(_broken(variants, tmp_path, version, edit))
    assert e.value.tensor == f"{Q}.{tensor}"


def test_gemm_tensors_under_gemv_config(variants, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(variants / "g128-gemm", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["version"] = "gemv"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match=r"GEMV.* qweight is int32 \[N, K/8\]") as e:
        jquant.convert(d)
    assert e.value.tensor.endswith((".scales", ".qweight"))


def test_group_size_autoawq_does_not_define(variants, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(variants / "g128-gemv", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFormatError, match="group_size 16") as e:
        jquant.convert(d)
    assert e.value.tensor.endswith(".qzeros")


def test_marlin_version_still_refused(variants, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(variants / "g128-gemv", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["version"] = "marlin"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFormatError, match="'marlin' is not supported") as e:
        jquant.convert(d)
    assert e.value.tensor == "quantization_config.version"
