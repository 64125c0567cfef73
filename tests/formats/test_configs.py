"""Config parsing of GPTQ / AWQ / AutoRound: per-module resolution, synonyms, refusals (no producers needed)."""

from __future__ import annotations

import pytest

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.formats._int_packed import IntScheme
from jquant.formats.autoround import AutoRoundConfig
from jquant.formats.awq import AWQConfig
from jquant.formats.gptq import GPTQConfig

GPTQMODEL_DYNAMIC = {  # GPTQModel README's example shape: exclusions and per-module overrides, first match wins
    r"-:model\.layers\.0\.mlp\..*": {},
    r"+:.*\.q_proj": {"bits": 8, "group_size": 32, "sym": False},
    r".*\.k_proj": {"desc_act": True},
    r".*proj": {"bits": 2},
}


def test_gptq_dynamic_first_match_wins():
    cfg = GPTQConfig.from_dict({"bits": 4, "group_size": 128, "desc_act": False, "dynamic": GPTQMODEL_DYNAMIC})
    assert cfg.checkpoint_format == "gptq"
    assert cfg.scheme("model.layers.0.mlp.up_proj") is None  # -: exclusion
    assert cfg.scheme("model.layers.1.mlp.up_proj") == IntScheme(2, 128, True, False, zeros_v1=True)
    assert cfg.scheme("model.layers.0.self_attn.q_proj") == IntScheme(8, 32, False, False, zeros_v1=True)
    assert cfg.scheme("model.layers.0.self_attn.k_proj") == IntScheme(4, 128, True, True, zeros_v1=True)
    # re.match anchors at the start: a pattern for a later part of the name does not match
    assert (
        GPTQConfig.from_dict({"bits": 4, "group_size": -1, "dynamic": {r"-:mlp": {}}}).scheme("model.mlp") is not None
    )


def test_gptq_format_synonyms_and_v2():
    assert GPTQConfig.from_dict({"bits": 3, "group_size": 64, "format": "GPTQ_V2"}).scheme("x").zeros_v1 is False
    assert GPTQConfig.from_dict({"bits": 3, "group_size": 64, "checkpoint_format": "gptq_v2", "format": "gptq_v2"})
    assert GPTQConfig.from_dict({"bits": 4, "group_size": 128, "is_marlin_format": True}).checkpoint_format == "marlin"
    with pytest.raises(UnsupportedFormatError, match="checkpoint_format='marlin_24' is not supported"):
        GPTQConfig.from_dict({"bits": 4, "group_size": 128, "checkpoint_format": "marlin_24"})
    with pytest.raises(ConfigError, match="unknown checkpoint_format='gptq_v9'"):
        GPTQConfig.from_dict({"bits": 4, "group_size": 128, "checkpoint_format": "gptq_v9"})
    with pytest.raises(ConfigError, match="lacks group_size"):
        GPTQConfig.from_dict({"bits": 4})


def test_awq_legacy_keys():
    cfg = AWQConfig.from_dict({"w_bit": 4, "q_group_size": 64, "zero_point": True, "version": "GEMM"})
    assert (cfg.bits, cfg.group_size, cfg.version) == (4, 64, "gemm")
    cfg = AWQConfig.from_dict({"bits": 4, "group_size": 128, "modules_to_not_convert": ["visual", "lm_head"]})
    assert cfg.skips("model.visual.blocks.0.attn.qkv") and not cfg.skips("model.layers.0.mlp.up_proj")
    with pytest.raises(UnsupportedFormatError, match="marlin"):
        AWQConfig.from_dict({"bits": 4, "group_size": 128, "version": "marlin"})


def test_autoround_layer_resolution():
    qc = {
        "quant_method": "auto-round",
        "packing_format": "auto_round:auto_gptq",
        "bits": 4,
        "group_size": 128,
        "sym": True,
        "data_type": "int",
        "block_name_to_quantize": "model.layers",
        "extra_config": {
            "model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32},
            ".*gate_proj": {"bits": 16, "data_type": "float"},
            "lm_head": {"bits": 8, "group_size": 64, "sym": False, "data_type": "int"},
        },
    }
    cfg = AutoRoundConfig.from_dict(qc)
    assert cfg.scheme("model.layers.0.mlp.down_proj") == IntScheme(8, 32, True, zeros_v1=True)
    assert cfg.scheme("model.layers.1.mlp.down_proj") == IntScheme(4, 128, True, zeros_v1=True)
    assert cfg.scheme("model.layers.1.mlp.gate_proj") is None  # bits 16 by regex -> dense
    assert cfg.scheme("lm_head") == IntScheme(8, 64, False, zeros_v1=True)  # outside the blocks, listed
    assert cfg.scheme("model.embed_tokens") is None  # outside the blocks, not listed
    native = AutoRoundConfig.from_dict({**qc, "packing_format": "auto_round", "extra_config": {}})
    assert native.scheme("model.layers.0.mlp.up_proj").zeros_v1 is False
    assert AutoRoundConfig.from_dict({**qc, "packing_format": "auto_round:auto_awq"}).layout == "awq"
    # block lists may be given as a list, or nested per block (multimodal exports)
    nested = AutoRoundConfig.from_dict({**qc, "block_name_to_quantize": [["model.layers.0", "model.layers.1"]]})
    assert nested.block_name_to_quantize == ("model.layers",)


@pytest.mark.parametrize(
    ("edit", "cls", "match"),
    [
        ({"packing_format": "auto_round:fp8"}, UnsupportedFormatError, "packing_format 'auto_round:fp8'"),
        ({"packing_format": "auto_round:llm_compressor"}, UnsupportedFormatError, "integer exports only"),
        ({"data_type": "nv_fp"}, UnsupportedFormatError, "data_type 'nv_fp'"),
        ({"act_bits": 8}, UnsupportedFormatError, "activation quantization"),
        ({"bits": 6}, UnsupportedFormatError, "planar"),
        ({"sym": "true"}, ConfigError, "true or false"),
        ({"extra_config": {"a": 3}}, ConfigError, "expected a dict"),
        ({"extra_config": {"a": {"bits": 4, "data_type": "mx_fp"}}}, UnsupportedFormatError, "data_type 'mx_fp'"),
    ],
)
def test_autoround_refusals(edit, cls, match):
    qc = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, **edit}
    with pytest.raises(cls, match=match) as info:
        AutoRoundConfig.from_dict(qc, file="config.json")
    assert info.value.file == "config.json" and info.value.tensor.startswith("quantization_config")
