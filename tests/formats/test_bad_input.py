"""Broken GPTQ / AWQ / AutoRound checkpoints: a `FormatError` naming file, tensor and problem; the CLI writes nothing.

Each case copies a real producer checkpoint (`tests.fixtures.producers_gptq_awq`) and breaks one
thing in its tensors or its config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.cli import main as cli_main
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from tests.fixtures.producers_gptq_awq import ProducerUnavailable, autoround_checkpoint, awq_checkpoint, gptq_checkpoint

L = "model.layers.0.self_attn.q_proj"  # K = N = 256
D = "model.layers.0.mlp.down_proj"  # K = 512, N = 256


def _make(fn, *args):
    try:
        return fn(*args)
    except ProducerUnavailable as e:
        pytest.skip(str(e))


def _broken(
    src: Path,
    dst: Path,
    tensors: Callable[[dict], None] | None = None,
    config: Callable[[dict], None] | None = None,
) -> Path:
    """Copies checkpoint ``src`` to ``dst``, editing its tensor dict / quantization_config in place."""
    shutil.copytree(src, dst)
    for side in ("quantize_config.json", "quantization_config.json", "quant_log.csv"):
        (dst / side).unlink(missing_ok=True)  # only config.json speaks for the quantization
    if tensors is not None:
        f = SafetensorsFile(dst / "model.safetensors")
        t = {name: np.array(f[name]) for name in f}
        del f
        tensors(t)
        write_safetensors(dst / "model.safetensors", t)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _expect(folder: Path, cls: type[FormatError], tensor: str, problem: str, file: str = "model.safetensors"):
    with pytest.raises(cls) as info:
        jquant.convert(folder)
    e = info.value
    assert e.tensor == tensor, str(e)
    assert e.file is not None and e.file.endswith(file), str(e)
    assert problem in e.problem, str(e)
    return e


def _cli_leaves_nothing(folder: Path, tmp_path: Path):
    out = tmp_path / "out" / "converted"
    out.parent.mkdir()
    assert cli_main(["convert", str(folder), str(out)]) == 2
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no temporary folder left behind"


@pytest.fixture(scope="module")
def gptq_sym():
    return _make(gptq_checkpoint, 4, 128, True, False, "gptq")


@pytest.fixture(scope="module")
def gptq_act():
    return _make(gptq_checkpoint, 4, 32, False, True, "gptq")


@pytest.fixture(scope="module")
def awq():
    return _make(awq_checkpoint, 128)


# ---- tensors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["qzeros", "scales"])
def test_gptq_missing_partner(gptq_sym, tmp_path, missing):
    bad = _broken(gptq_sym, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.{missing}"))
    _expect(bad, FormatError, f"{L}.{missing}", "missing tensor")
    _cli_leaves_nothing(bad, tmp_path)


def test_awq_missing_scales(awq, tmp_path):
    bad = _broken(awq, tmp_path / "ck", tensors=lambda t: t.pop(f"{D}.scales"))
    _expect(bad, FormatError, f"{D}.scales", "missing tensor")


def test_missing_g_idx_with_desc_act(gptq_act, tmp_path):
    bad = _broken(gptq_act, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.g_idx"))
    _expect(bad, FormatError, f"{L}.g_idx", "missing tensor")
    _cli_leaves_nothing(bad, tmp_path)


def test_g_idx_out_of_range(gptq_act, tmp_path):
    def edit(t):
        t[f"{L}.g_idx"][3] = 99

    bad = _broken(gptq_act, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.g_idx", "value 99 at input channel 3 is outside [0, 8)")


def test_g_idx_wrong_group_sizes(gptq_act, tmp_path):
    def edit(t):
        g = t[f"{L}.g_idx"]
        g[0] = (g[0] + 1) % 8  # one channel moves to another group: 33 and 31 members

    bad = _broken(gptq_act, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.g_idx", "input channels but group_size gives 32")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_scales(gptq_sym, tmp_path, value):
    def edit(t):
        t[f"{D}.scales"][1, 7] = value

    bad = _broken(gptq_sym, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{D}.scales", "non-finite scale")
    _cli_leaves_nothing(bad, tmp_path)


def test_scales_wrong_shape(awq, tmp_path):
    def edit(t):
        t[f"{D}.scales"] = t[f"{D}.scales"][:-1]

    bad = _broken(awq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{D}.scales", "shape [3, 256] but expected [4, 256]")


def test_float_qweight(gptq_sym, tmp_path):
    def edit(t):
        t[f"{L}.qweight"] = t[f"{L}.qweight"].astype(np.float32)

    bad = _broken(gptq_sym, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.qweight", "dtype float32 but packed words must be int32")
    _cli_leaves_nothing(bad, tmp_path)


def test_int64_qzeros(awq, tmp_path):
    def edit(t):
        t[f"{L}.qzeros"] = t[f"{L}.qzeros"].astype(np.int64)

    bad = _broken(awq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.qzeros", "dtype int64")


def test_gptq_config_over_awq_tensors(awq, tmp_path):
    def edit(qc):
        qc.clear()
        qc.update(quant_method="gptq", bits=4, group_size=128, sym=False, desc_act=False)

    bad = _broken(awq, tmp_path / "ck", config=edit)
    _expect(bad, FormatError, f"{D}.scales", "looks packed along N like AWQ")
    _cli_leaves_nothing(bad, tmp_path)


def test_awq_config_over_gptq_tensors(gptq_sym, tmp_path):
    def edit(qc):
        qc.clear()
        qc.update(quant_method="awq", bits=4, group_size=128, zero_point=True, version="gemm")

    bad = _broken(gptq_sym, tmp_path / "ck", config=edit)
    _expect(bad, FormatError, f"{D}.g_idx", "AWQ has no g_idx")
    # without the g_idx giveaway, the shapes still disagree with AWQ's packing
    bad2 = _broken(
        gptq_sym, tmp_path / "ck2", config=edit, tensors=lambda t: [t.pop(k) for k in list(t) if "g_idx" in k]
    )
    _expect(bad2, FormatError, f"{D}.qweight", "group_size 128 does not divide in_features K=64")


def test_group_size_not_dividing_k(gptq_sym, tmp_path):
    bad = _broken(gptq_sym, tmp_path / "ck", config=lambda qc: qc.update(group_size=96))
    _expect(bad, FormatError, f"{D}.qweight", "group_size 96 does not divide in_features K=512")


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "cls", "key", "problem"),
    [
        (dict(bits=1), ConfigError, "quantization_config.bits", "bits=1 is not a supported width"),
        (dict(bits=16), ConfigError, "quantization_config.bits", "bits=16 is not a supported width"),
        (dict(bits="4"), ConfigError, "quantization_config.bits", "must be an integer"),
        (dict(group_size=0), ConfigError, "quantization_config.group_size", "positive integer or -1"),
        (dict(checkpoint_format="gptq_v2"), ConfigError, "quantization_config.checkpoint_format", "contradicts"),
        (dict(checkpoint_format="marlin_24", format="marlin_24"), UnsupportedFormatError, "quantization_config.checkpoint_format", "not supported"),
        (dict(pack_dtype="int16"), UnsupportedFormatError, "quantization_config.pack_dtype", "only int32"),
        (dict(desc_act="yes"), ConfigError, "quantization_config.desc_act", "true or false"),
        (dict(dynamic={"+:(unclosed": {}}), ConfigError, "quantization_config.dynamic", "bad regex"),
        (dict(dynamic={r"+:.*q_proj": {"bits": 16}}), ConfigError, "quantization_config.dynamic['+:.*q_proj'].bits", "not a supported width"),
    ],
)  # fmt: skip
def test_gptq_bad_config(gptq_sym, tmp_path, edit, cls, key, problem):
    bad = _broken(gptq_sym, tmp_path / "ck", config=lambda qc: qc.update(edit))
    _expect(bad, cls, key, problem, file="config.json")
    _cli_leaves_nothing(bad, tmp_path)


def test_gptq_dynamic_exclusion_contradicts_tensors(gptq_sym, tmp_path):
    bad = _broken(gptq_sym, tmp_path / "ck", config=lambda qc: qc.update(dynamic={r"-:.*down_proj": {}}))
    _expect(bad, ConfigError, "model.layers.0.mlp.down_proj.qweight", "dynamic '-:' rule excludes it")


@pytest.mark.parametrize(
    ("edit", "cls", "key", "problem"),
    [
        (dict(version="marlin"), UnsupportedFormatError, "quantization_config.version", "'marlin' is not supported"),
        (dict(zero_point=False), UnsupportedFormatError, "quantization_config.zero_point", "always carry zero points"),
        (dict(bits=8), UnsupportedFormatError, "quantization_config.bits", "4-bit codes only"),
        (dict(w_bit=3), ConfigError, "quantization_config.bits", "contradicts w_bit=3"),
        (dict(modules_to_not_convert="lm_head"), ConfigError, "quantization_config.modules_to_not_convert", "list of strings"),
    ],
)  # fmt: skip
def test_awq_bad_config(awq, tmp_path, edit, cls, key, problem):
    bad = _broken(awq, tmp_path / "ck", config=lambda qc: qc.update(edit))
    _expect(bad, cls, key, problem, file="config.json")


def test_awq_modules_to_not_convert_contradicts_tensors(awq, tmp_path):
    bad = _broken(awq, tmp_path / "ck", config=lambda qc: qc.update(modules_to_not_convert=["lm_head", "o_proj"]))
    _expect(bad, ConfigError, "model.layers.0.self_attn.o_proj.qweight", "modules_to_not_convert lists it")


def test_bias_passes_through(gptq_sym, tmp_path):
    """A GPTQ module with a bias: the bias comes back as is; a bias of the wrong length is refused."""
    bias = np.linspace(-1, 1, 256).astype(np.float16)
    ok = _broken(gptq_sym, tmp_path / "ok", tensors=lambda t: t.update({f"{L}.bias": bias}))
    np.testing.assert_array_equal(jquant.convert(ok).weights[f"{L}.bias"], bias)
    bad = _broken(gptq_sym, tmp_path / "bad", tensors=lambda t: t.update({f"{L}.bias": bias[:100]}))
    _expect(bad, FormatError, f"{L}.bias", "shape [100] but expected [256]")


@pytest.fixture(scope="module")
def autoround_sym():
    return _make(autoround_checkpoint, "auto_round", 4, 128, True)


@pytest.mark.parametrize(
    "edit",
    [
        dict(block_name_to_quantize="model.layers.1"),
        dict(extra_config={"model.layers.0.mlp.down_proj": {"bits": 16, "data_type": "float"}}),
    ],
)
def test_autoround_config_leaves_quantized_layer_dense(autoround_sym, tmp_path, edit):
    bad = _broken(autoround_sym, tmp_path / "ck", config=lambda qc: qc.update(edit))
    _expect(bad, ConfigError, f"{D}.qweight", "the config leaves it dense")
    _cli_leaves_nothing(bad, tmp_path)


def test_autoround_unsupported_packing(autoround_sym, tmp_path):
    bad = _broken(autoround_sym, tmp_path / "ck", config=lambda qc: qc.update(packing_format="auto_round:fp8"))
    _expect(bad, UnsupportedFormatError, "quantization_config.packing_format", "not supported", file="config.json")


def test_awq_legacy_side_file(awq, tmp_path):
    """AutoAWQ's legacy ``quant_config.json`` (w_bit / q_group_size / "GEMM") reads the same as config.json's."""
    legacy = tmp_path / "legacy"
    shutil.copytree(awq, legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    del cfg["quantization_config"]
    (legacy / "config.json").write_text(json.dumps(cfg))
    side = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
    (legacy / "quant_config.json").write_text(json.dumps(side))
    a, b = jquant.convert(awq), jquant.convert(legacy)
    assert b.format == "awq" and set(a.quantized()) == set(b.quantized())
    for name, w in a.quantized().items():
        for field, arr in w.arrays().items():
            np.testing.assert_array_equal(b.weights[name].arrays()[field], arr)


def test_stray_dense_weight_next_to_qweight(gptq_sym, tmp_path):
    def edit(t):
        t[f"{L}.weight"] = np.zeros((256, 256), np.float16)

    bad = _broken(gptq_sym, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight", "unexpected tensor next to a GPTQ qweight")


def test_quantized_lm_head_needs_lm_head_true(gptq_sym, tmp_path):
    """A quantized lm_head converts when the config says ``lm_head: true`` and is refused otherwise."""

    def edit(t):  # a 256 x 256 quantized lm_head, borrowed from q_proj (vocab shrinks; only the format matters)
        del t["lm_head.weight"]
        for s in ("qweight", "qzeros", "scales", "g_idx"):
            t[f"lm_head.{s}"] = t[f"{L}.{s}"]

    bad = _broken(gptq_sym, tmp_path / "bad", tensors=edit, config=lambda qc: qc.update(lm_head=False))
    _expect(bad, ConfigError, "lm_head.qweight", "lm_head is false")
    ok = _broken(gptq_sym, tmp_path / "ok", tensors=edit, config=lambda qc: qc.update(lm_head=True))
    with pytest.raises(FormatError, match=r"'lm_head.weight'.*shape \[256, 256\] but the config needs \[512, 256\]"):
        jquant.convert(ok)  # as a model, the borrowed lm_head has the wrong vocab size
    ckpt = jquant.convert(ok, check_model=False)
    np.testing.assert_array_equal(
        jquant.dequantize(ckpt.weights["lm_head.weight"]), jquant.dequantize(ckpt.weights[f"{L}.weight"])
    )


def test_sym_flag_is_only_a_hint(tmp_path):
    """``sym: true`` over asymmetric zero points keeps the zeros (lossless), same weights as ``sym: false``."""
    src = _make(gptq_checkpoint, 4, 128, False, False, "gptq")
    lying = _broken(src, tmp_path / "ck", config=lambda qc: qc.update(sym=True))
    a, b = jquant.convert(src), jquant.convert(lying)
    for name, w in a.quantized().items():
        assert b.weights[name].zero is not None
        np.testing.assert_array_equal(jquant.dequantize(b.weights[name]), jquant.dequantize(w))
