"""TorchAO safetensors checkpoints (transformers ``TorchAoConfig`` + torchao 0.18) -> canonical.

Oracle: torchao's own ``dequantize(torch.float32)`` of each weight and its own activation
quantize-dequantize (tests/fixtures/producers_torchao.py); Int4WeightOnly: the documented mslk
formula (torchao has no Int4 dequantize and its quantizer needs CUDA; see the fixture).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import jquant
from jquant.core.activation import fake_quantize
from jquant.core.errors import ConfigError, UnsupportedFormatError
from tests.fixtures.producers_torchao import TORCHAO_CONFIGS, torchao_available

pytestmark = pytest.mark.skipif(torchao_available() is not None, reason=str(torchao_available()))

WITH_ACT = {"int8_dynamic": ("int8", "token"), "float8_dynamic": ("fp8_e4m3", "token")}


@pytest.fixture(scope="module")
def tao():
    from tests.fixtures.producers_torchao import torchao_dir

    return torchao_dir()


@pytest.mark.parametrize("config", TORCHAO_CONFIGS)
def test_bit_exact_with_torchao(config, tao):
    ckpt = jquant.convert(tao / config)
    assert ckpt.format == "torchao"
    oracle = np.load(tao / config / "oracle.npz")
    linears = sorted(n for n in oracle.files if n.endswith("_proj.weight") and not n.startswith("act:"))
    assert sorted(ckpt.quantized()) == linears and len(linears) == 14
    for n in linears:
        np.testing.assert_array_equal(jquant.dequantize(ckpt.weights[n]), oracle[n], err_msg=n)
    acts = {n: v for n, v in ckpt.weights.items() if n.endswith(".input_quant")}
    if config in WITH_ACT:
        assert len(acts) == 14
        a = acts["model.layers.0.self_attn.q_proj.input_quant"]
        assert (a.qtype.name, a.granularity, a.dynamic) == (*WITH_ACT[config], True)
        ref = oracle["act:model.layers.0.self_attn.q_proj.weight"]
        np.testing.assert_array_equal(fake_quantize(oracle["act_x"], a), ref)
    else:
        assert not acts
    assert ckpt.weights["lm_head.weight"].dtype.name == "bfloat16"  # not quantized


def test_int4_layout(tao):
    w = jquant.convert(tao / "int4_weight_only").weights["model.layers.0.mlp.down_proj.weight"]
    assert w.qtype.name == "uint4b8" and w.block == (1, 128) and w.zero is not None
    assert w.scale.dtype.name == "bfloat16" and w.scale.shape == (256, 4)


@pytest.mark.parametrize("config", ["int8_weight_only", "float8_weight_only", "int4_weight_only"])
def test_model_runs(config, tao):
    import jax.numpy as jnp

    from jquant.models import from_checkpoint
    from jquant.quantize import dequantized

    ckpt = jquant.convert(tao / config)
    ids = jnp.asarray([[3, 17, 99, 250, 7]], dtype=jnp.int32)
    ours = np.asarray(from_checkpoint(ckpt, dtype=jnp.float32)(ids))
    dense = np.asarray(from_checkpoint(dequantized(ckpt, np.float32), dtype=jnp.float32)(ids))
    assert np.abs(ours - dense).max() / dense.std() < 1e-4


def _copy(tao, config, tmp_path):
    out = tmp_path / config
    shutil.copytree(tao / config, out)
    return out


def _rewrite_metadata(folder, fn):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    f = folder / "model.safetensors"
    with safe_open(f, "np") as h:
        meta = dict(h.metadata())
    tensors = load_file(f)
    fn(tensors, meta)
    save_file(tensors, f, metadata=meta)


def test_refusals_name_the_tensor(tao, tmp_path):
    name = "model.layers.0.self_attn.q_proj.weight"

    def retype(tensors, meta):
        e = json.loads(meta[name])
        e["_type"] = "NVFP4Tensor"
        meta[name] = json.dumps(e)

    f = _copy(tao, "int8_weight_only", tmp_path)
    _rewrite_metadata(f, retype)
    with pytest.raises(UnsupportedFormatError, match=r"q_proj\._weight_qdata.*NVFP4Tensor is not supported"):
        jquant.convert(f)

    f = _copy(tao, "int8_dynamic", tmp_path / "b")
    cfg = json.loads((f / "config.json").read_text())
    cfg["quantization_config"]["quant_type"]["default"]["_type"] = "Int8WeightOnlyConfig"
    (f / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="with activation quantization, but quantization_config says Int8WeightOnly"):
        jquant.convert(f)

    f = _copy(tao, "int8_weight_only", tmp_path / "c")
    _rewrite_metadata(f, lambda t, m: m.pop("tensor_names"))
    with pytest.raises(ConfigError, match="no 'tensor_names'"):
        jquant.convert(f)

    def pre_scale(tensors, meta):
        tensors["model.layers.0.self_attn.q_proj._weight_act_pre_scale"] = np.ones(256, np.float32)
        e = json.loads(meta[name])
        e["_tensor_data_names"].append("act_pre_scale")
        meta[name] = json.dumps(e)

    f = _copy(tao, "int8_weight_only", tmp_path / "d")
    _rewrite_metadata(f, pre_scale)
    with pytest.raises(UnsupportedFormatError, match="_weight_act_pre_scale.*not supported"):
        jquant.convert(f)

    f = _copy(tao, "int4_weight_only", tmp_path / "e")
    cfg = json.loads((f / "config.json").read_text())
    cfg["quantization_config"]["quant_type"] = "int4_weight_only"
    (f / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFormatError, match="old string form"):
        jquant.convert(f)
