"""Bad compressed-tensors / FP8-family checkpoints: each raises a `FormatError` subclass naming file, tensor, problem.

Inputs are llm-compressor checkpoints (tests/fixtures/producers_ct.py) with one thing broken.
"""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest

from jquant.convert import convert
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from tests.fixtures.producers_ct import tiny_config, write_checkpoint
from tests.formats_ct.conftest import read_config, read_tensors

Q = "model.layers.0.self_attn.q_proj"


def _broken(llmc, tmp_path, scheme, edit_tensors=None, edit_config=None):
    t = read_tensors(llmc / scheme)
    cfg = copy.deepcopy(read_config(llmc / scheme))
    if edit_tensors:
        edit_tensors(t)
    if edit_config:
        edit_config(cfg["quantization_config"])
    return write_checkpoint(tmp_path / "bad", cfg, t)


def _raises(folder, cls, tensor, match):
    with pytest.raises(cls, match=match) as e:
        convert(folder)
    assert e.value.tensor == tensor, e.value
    if tensor is not None and not tensor.endswith("input_quant"):
        assert e.value.file is not None and e.value.file.endswith(("model.safetensors", "config.json")), e.value
    return e.value


def _set(name, fn):
    def edit(t):
        t[name] = fn(t[name])

    return edit


def test_missing_partner_tensor(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "W4A16", lambda t: t.pop(f"{Q}.weight_scale"))
    _raises(f, FormatError, f"{Q}.weight_scale", "missing tensor")


def test_nvfp4_missing_global_scale(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "NVFP4", lambda t: t.pop(f"{Q}.weight_global_scale"))
    _raises(f, FormatError, f"{Q}.weight_global_scale", "missing tensor")


def test_nan_scale(llmc, tmp_path):
    def nan(a):
        a = a.copy()
        a[3, 1] = np.nan
        return a

    f = _broken(llmc, tmp_path, "W4A16", _set(f"{Q}.weight_scale", nan))
    _raises(f, FormatError, f"{Q}.weight_scale", r"non-finite scale .* at block \(3, 1\)")


def test_mx_scale_nan_exponent(llmc, tmp_path):
    def ff(a):
        a = a.copy()
        a[0, 0] = 0xFF  # E8M0 NaN
        return a

    f = _broken(llmc, tmp_path, "MXFP4", _set(f"{Q}.weight_scale", ff))
    _raises(f, FormatError, f"{Q}.weight_scale", "non-finite")


def test_scale_shape_does_not_fit_strategy(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "W4A16", _set(f"{Q}.weight_scale", lambda a: a[:, :1].copy()))
    _raises(f, FormatError, f"{Q}.weight_scale", r"group scale shape \[256, 1\] does not fit weight \[256, 256\]")
    f = _broken(llmc, tmp_path / "b", "FP8_DYNAMIC", _set(f"{Q}.weight_scale", lambda a: a[:100].copy()))
    _raises(f, FormatError, f"{Q}.weight_scale", "per-channel scale shape")


def test_fp8_weight_with_integer_scale(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "FP8", _set(f"{Q}.weight_scale", lambda a: np.ones(a.shape, np.int32)))
    _raises(f, FormatError, f"{Q}.weight_scale", "scale dtype int32 is not one of")


def test_group_size_does_not_divide_k(llmc, tmp_path):
    def cfg(qc):
        qc["config_groups"]["group_0"]["weights"]["group_size"] = 100

    f = _broken(llmc, tmp_path, "W4A16", edit_config=cfg)
    _raises(f, FormatError, "model.layers.0.mlp.down_proj.weight_scale", "group_size 100 does not divide K=512")


def test_block_size_does_not_fit_hf_fp8(tmp_path):
    w = np.zeros((256, 256), ml_dtypes.float8_e4m3fn)
    t = {f"{Q}.weight": w, f"{Q}.weight_scale_inv": np.ones((2, 2), np.float32)}
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [96, 128]}
    f = write_checkpoint(tmp_path / "ck", tiny_config(qc), t)
    _raises(
        f,
        FormatError,
        f"{Q}.weight_scale_inv",
        r"block scale shape \[2, 2\] does not fit weight \[256, 256\] with block \[96, 128\]",
    )


def test_unknown_group_format(llmc, tmp_path):
    def cfg(qc):
        qc["config_groups"]["group_0"]["format"] = "sparse-24-bitmask"

    with pytest.raises(
        UnsupportedFormatError, match="config_groups.group_0: unknown or unsupported format 'sparse-24-bitmask'"
    ):
        convert(_broken(llmc, tmp_path, "W4A16", edit_config=cfg))


def test_targets_match_nothing(llmc, tmp_path):
    def cfg(qc):
        qc["config_groups"]["group_0"]["targets"] = ["re:.*does_not_exist$", "model.layers.9.mlp"]

    with pytest.raises(ConfigError, match="targets .* match no module"):
        convert(_broken(llmc, tmp_path, "W4A16", edit_config=cfg))


def test_quantized_module_that_config_ignores(llmc, tmp_path):
    def cfg(qc):
        qc["ignore"] = ["lm_head", "re:.*q_proj$"]

    f = _broken(llmc, tmp_path, "W4A16", edit_config=cfg)
    _raises(f, ConfigError, f"{Q}.weight_packed", "no config group targets it")


def test_packed_width_and_weight_shape_disagree(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "W4A16", _set(f"{Q}.weight_packed", lambda a: a[:, :-1].copy()))
    _raises(f, FormatError, f"{Q}.weight_packed", r"shape \[256, 31\] does not fit weight \[256, 256\] at 4 bits")
    f = _broken(llmc, tmp_path / "b", "W8A16", _set(f"{Q}.weight_shape", lambda a: np.array([256, 300], np.int64)))
    _raises(f, FormatError, f"{Q}.weight_packed", "does not fit weight")


def test_act_order_g_idx_that_does_not_regroup(llmc, tmp_path):
    def cfg(qc):
        qc["config_groups"]["group_0"]["weights"]["actorder"] = "group"

    def add(t):
        for n in list(t):
            if n.endswith(".weight_packed"):
                t[n.replace("weight_packed", "weight_g_idx")] = np.zeros(
                    int(t[n.replace("weight_packed", "weight_shape")][1]), np.int32
                )

    f = _broken(llmc, tmp_path, "W4A16", add, cfg)
    _raises(f, FormatError, "model.layers.0.mlp.down_proj.weight_g_idx", "not all of size 128")


def test_transforms_and_frozen_status_refused(llmc, tmp_path):
    with pytest.raises(UnsupportedFormatError, match="transform_config"):
        convert(
            _broken(
                llmc, tmp_path, "W4A16", edit_config=lambda qc: qc.update(transform_config={"u": {"type": "hadamard"}})
            )
        )
    with pytest.raises(UnsupportedFormatError, match="quantization_status 'frozen'"):
        convert(_broken(llmc, tmp_path / "b", "W4A16", edit_config=lambda qc: qc.update(quantization_status="frozen")))


def test_static_input_scale_nan(llmc, tmp_path):
    f = _broken(llmc, tmp_path, "FP8", _set(f"{Q}.input_scale", lambda a: np.full_like(a, np.nan)))
    _raises(f, FormatError, f"{Q}.input_scale", "not a positive finite number")


def test_fp8_config_and_tensors_disagree(tmp_path):
    w = np.zeros((256, 256), ml_dtypes.float8_e4m3fn)
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    f = write_checkpoint(
        tmp_path / "a", tiny_config(qc), {f"{Q}.weight": w, f"{Q}.weight_scale": np.ones(1, np.float32)}
    )
    with pytest.raises(ConfigError, match="no tensor ends in .weight_scale_inv"):
        convert(f)
    f = write_checkpoint(tmp_path / "b", tiny_config({"quant_method": "fp8"}), {f"{Q}.weight": w})
    _raises(f, FormatError, f"{Q}.weight_scale", "fp8 weight without its scale")


def test_modelopt_and_gpt_oss_errors(tmp_path):
    f = write_checkpoint(
        tmp_path / "a",
        tiny_config({"quant_method": "modelopt", "quant_algo": "INT4_AWQ"}),
        {"x.weight": np.ones(2, np.float16)},
    )
    with pytest.raises(UnsupportedFormatError, match="quant_algo 'INT4_AWQ' is not supported"):
        convert(f)
    p = "model.layers.0.mlp.experts"
    t = {
        f"{p}.down_proj_blocks": np.zeros((2, 256, 4, 16), np.uint8),
        f"{p}.down_proj_scales": np.zeros((2, 256, 3), np.uint8),
    }
    f = write_checkpoint(tmp_path / "b", tiny_config({"quant_method": "mxfp4"}), t)
    _raises(f, FormatError, f"{p}.down_proj_scales", r"does not match blocks \[2, 256, 4, 16\]")
