"""compressed-tensors ``mxfp6-pack-quantized`` (jquant.formats.mxfp6) against compressed-tensors' decompressor.

llm-compressor's ``MXFP6A16`` preset quantizes the tiny Llama and compressed-tensors 0.20 packs it
(tests/formats_variants/producers_mxfp6.py); ``MXFP6PackedCompressor.decompress`` is the oracle.
"""

from __future__ import annotations

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import ConfigError, FormatError
from jquant.formats.mxfp6 import E2M3_VALUES, FP6_E2M3, unpack_fp6
from tests.formats_variants.producers_mxfp6 import mxfp6_dir


@pytest.fixture(scope="module")
def folder():
    return mxfp6_dir()


def test_codebook_and_unpack():
    assert len(E2M3_VALUES) == 64 and FP6_E2M3.container_bits == 8
    assert E2M3_VALUES[:9] == (0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0) and E2M3_VALUES[31] == 7.5
    assert E2M3_VALUES[33] == -0.125 and np.signbit(E2M3_VALUES[32])
    # the same table as the OCP bit patterns decoded by ml_dtypes (sign of -0 included)
    ocp = np.arange(64, dtype=np.uint8).view(ml_dtypes.float6_e2m3fn).astype(np.float32)
    np.testing.assert_array_equal(ocp, np.array(E2M3_VALUES, np.float32))
    assert np.array_equal(np.signbit(ocp), np.signbit(E2M3_VALUES))
    # codes 1, 2, 3, 63: word = 1 | 2 << 6 | 3 << 12 | 63 << 18 = 0xFC3081 -> bytes 81 30 FC
    np.testing.assert_array_equal(unpack_fp6(np.array([[0x81, 0x30, 0xFC]], np.uint8)), [[1, 2, 3, 63]])


def test_matches_compressed_tensors_decompress(folder):
    oracle = np.load(folder / "oracle.npz")
    ck = jquant.convert(folder / "MXFP6A16")
    assert ck.format == "compressed-tensors" and len(oracle.files) == 14
    for name in oracle.files:
        q = ck.weights[name]
        n, k = oracle[name].shape
        assert q.qtype == FP6_E2M3 and q.shape == (n, k) and q.block == (1, 32)
        assert q.data.shape == (n, k) and q.scale.shape == (n, k // 32) and q.scale.dtype.name == "float8_e8m0fnu"
        np.testing.assert_array_equal(np.asarray(dequantize(q), np.float32), oracle[name])
        assert len(np.unique(q.data)) > 48  # the codes really span the table


def test_jnp_dequantize_agrees(folder):
    ck = jquant.convert(folder / "MXFP6A16")
    q = ck.weights["model.layers.0.mlp.down_proj.weight"]
    np.testing.assert_array_equal(np.asarray(jquant.dequantize(q), np.float32), dequantize(q))


Q = "model.layers.0.self_attn.q_proj"


def _broken(folder, tmp_path, edit=None, qc_edit=None):
    d = tmp_path / "ck"
    shutil.copytree(folder / "MXFP6A16", d)
    if edit is not None:
        t = load_file(str(d / "model.safetensors"))
        edit(t)
        save_file(t, str(d / "model.safetensors"))
    if qc_edit is not None:
        c = json.loads((d / "config.json").read_text())
        qc_edit(c["quantization_config"])
        (d / "config.json").write_text(json.dumps(c))
    return d


def _nan_scale(t):
    t[f"{Q}.weight_scale"] = t[f"{Q}.weight_scale"].copy()
    t[f"{Q}.weight_scale"][0, 0] = 0xFF


@pytest.mark.parametrize(
    ("edit", "tensor", "problem"),
    [
        (lambda t: t.update({f"{Q}.weight_packed": t[f"{Q}.weight_packed"][:, :-1]}), "weight_packed", "4 codes per 3 bytes"),
        (lambda t: t.update({f"{Q}.weight_packed": t[f"{Q}.weight_packed"].view(np.int8)}), "weight_packed", "dtype int8"),
        (lambda t: t.update({f"{Q}.weight_scale": t[f"{Q}.weight_scale"][:, :-1]}), "weight_scale", "shape"),
        (lambda t: t.pop(f"{Q}.weight_scale"), "weight_scale", "missing"),
        (_nan_scale, "weight_scale", "non-finite scale"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(folder, tmp_path, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        jquant.convert(_broken(folder, tmp_path, edit=edit))
    assert e.value.tensor == f"{Q}.{tensor}"


def test_wrong_bits_in_config(folder, tmp_path):
    def qc_edit(qc):
        qc["config_groups"]["group_0"]["weights"]["num_bits"] = 4

    with pytest.raises(ConfigError, match="mxfp6 needs 6-bit float weights") as e:
        jquant.convert(_broken(folder, tmp_path, qc_edit=qc_edit))
    assert e.value.tensor.endswith(".weight_packed")


def test_model_runs_on_fp6_codes(folder):
    import jax.numpy as jnp

    ck = jquant.convert(folder / "MXFP6A16")
    ids = jnp.asarray((np.arange(1, 13, dtype=np.int32) * 37 % 500)[None])
    got = np.asarray(jquant.models.from_checkpoint(ck)(ids), np.float32)
    ck.weights.update({k: np.asarray(dequantize(v), np.float32) for k, v in ck.weights.items() if hasattr(v, "qtype")})
    want = np.asarray(jquant.models.from_checkpoint(ck)(ids), np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
