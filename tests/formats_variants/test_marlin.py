"""Marlin-repacked GPTQ (jquant.formats.marlin) against the Marlin source's own pack of real GPTQ tensors.

tests/formats_variants/producers_marlin.py packs GPTQModel's 4-bit checkpoint of the tiny Llama
with AutoGPTQ's / IST-DASLab's ``pack`` (transcribed; tables from GPTQModel). Unpacking must give
back the source GPTQ checkpoint's canonical QArrays bit for bit (that conversion is checked
against GPTQModel's own dequantizer in tests/formats).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.formats.marlin import MARLIN_PERM, unpack_marlin_scales, unpack_marlin_weight
from tests.formats_variants.producers_marlin import CONFIGS, RANDOM_SHAPES, marlin_variants


@pytest.fixture(scope="module")
def made():
    return marlin_variants()


@pytest.fixture(scope="module")
def gptq(made):
    return jquant.convert(made[1])


def test_perm_is_a_permutation():
    assert sorted(MARLIN_PERM.tolist()) == list(range(1024))
    assert MARLIN_PERM[:8].tolist() == [0, 128, 8, 136, 16, 144, 24, 152]


@pytest.mark.parametrize("i", range(len(RANDOM_SHAPES)))
def test_unpack_inverts_source_pack(made, i):
    d = np.load(made[0] / "random.npz")
    k, n, g = RANDOM_SHAPES[i]
    b, s = d[f"B{i}"], d[f"s{i}"]
    assert b.shape == (k // 16, 2 * n) and b.dtype == np.int32
    np.testing.assert_array_equal(unpack_marlin_weight(b), d[f"codes{i}"])
    single = g in (-1, k)
    np.testing.assert_array_equal(unpack_marlin_scales(s, single=single), d[f"scales{i}"])
    assert not np.array_equal(s, d[f"scales{i}"])  # the source really permuted them


@pytest.mark.parametrize("cfg", CONFIGS)
def test_checkpoint_equals_source_gptq(made, gptq, cfg):
    ck = jquant.convert(made[0] / cfg)
    assert ck.format == ("marlin" if cfg == "ist" else "gptq")
    assert sorted(ck.weights) == sorted(gptq.weights)
    nq = 0
    for name, a in gptq.weights.items():
        b = ck.weights[name]
        if not hasattr(a, "qtype"):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
            continue
        nq += 1
        assert b.qtype == a.qtype and b.qtype.name == "uint4b8" and b.shape == a.shape and b.block == a.block
        assert b.zero is None and b.perm is None and a.perm is None
        np.testing.assert_array_equal(b.data, a.data)
        np.testing.assert_array_equal(b.scale, a.scale)
        np.testing.assert_array_equal(dequantize(b), dequantize(a))
    assert nq == 14  # 2 layers x 7 projections


def _copy(made, tmp_path, cfg="autogptq", edit=None, qc_edit=None):
    d = tmp_path / cfg
    shutil.copytree(made[0] / cfg, d)
    if edit is not None:
        t = load_file(str(d / "model.safetensors"))
        edit(t)
        save_file(t, str(d / "model.safetensors"))
    if qc_edit is not None:
        c = json.loads((d / "config.json").read_text())
        qc_edit(c["quantization_config"])
        (d / "config.json").write_text(json.dumps(c))
    return d


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("edit", "tensor", "problem"),
    [
        (lambda t: t.pop(f"{Q}.s"), "s", "missing tensor"),
        (lambda t: t.pop(f"{Q}.B"), "B", "s without a quantized B"),
        (lambda t: t.update({f"{Q}.B": t[f"{Q}.B"][:, :-16]}), "B", "N a multiple of 64"),
        (lambda t: t.update({f"{Q}.s": t[f"{Q}.s"][:1]}), "s", r"shape \[1, 256\] but expected \[2, 256\]"),
        (lambda t: t.update({f"{Q}.g_idx": np.arange(256, dtype=np.int32)}), "g_idx", "unexpected tensor"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(made, tmp_path, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        jquant.convert(_copy(made, tmp_path, edit=edit))
    assert e.value.tensor == f"{Q}.{tensor}"


def test_nan_scale(made, tmp_path):
    def edit(t):
        t[f"{Q}.s"] = t[f"{Q}.s"].copy()
        t[f"{Q}.s"][1, 3] = np.nan

    with pytest.raises(FormatError, match="non-finite scale") as e:
        jquant.convert(_copy(made, tmp_path, cfg="ist", edit=edit))
    assert e.value.tensor == f"{Q}.s"


@pytest.mark.parametrize(
    ("cfg", "qc_edit", "err", "key", "problem"),
    [
        ("autogptq", lambda qc: qc.update(sym=False), UnsupportedFormatError, "sym", "4-bit symmetric"),
        ("autogptq", lambda qc: qc.update(desc_act=True), UnsupportedFormatError, "desc_act", "without act-order"),
        ("ist", lambda qc: qc.update(bits=8), UnsupportedFormatError, "bits", "4-bit"),
        ("ist", lambda qc: qc.pop("group_size"), ConfigError, "group_size", "must be a positive integer"),
        ("legacy", lambda qc: qc.update(checkpoint_format="gptq_v2"), ConfigError, "checkpoint_format", "contradicts"),
    ],
)  # fmt: skip
def test_bad_config(made, tmp_path, cfg, qc_edit, err, key, problem):
    with pytest.raises(err, match=problem) as e:
        jquant.convert(_copy(made, tmp_path, cfg=cfg, qc_edit=qc_edit))
    assert e.value.tensor == f"quantization_config.{key}"


def test_group_size_mismatch_is_caught(made, tmp_path):
    # G=64 config on G=128 tensors: the s tensor has half the rows the config implies
    with pytest.raises(FormatError, match=r"shape \[(2|4), 256\] but expected \[(4|8), 256\]") as e:
        jquant.convert(_copy(made, tmp_path, cfg="ist", qc_edit=lambda qc: qc.update(group_size=64)))
    assert e.value.tensor.endswith(".s")


def test_gptq_tensors_under_marlin_config_read_as_v1(made, gptq, tmp_path):
    # GPTQModel 7.x's FORMAT.MARLIN holder reads plain GPTQ tensors with v1 zeros (mlx.py pack_source).
    d = tmp_path / "gm"
    shutil.copytree(made[1], d)
    c = json.loads((d / "config.json").read_text())
    c["quantization_config"].update(format="marlin", checkpoint_format="marlin")
    (d / "config.json").write_text(json.dumps(c))
    (d / "quantize_config.json").unlink(missing_ok=True)
    ck = jquant.convert(d)
    w = f"{Q}.weight"
    np.testing.assert_array_equal(ck.weights[w].data, gptq.weights[w].data)
    assert ck.weights[w].qtype.name == "uint4b8"
