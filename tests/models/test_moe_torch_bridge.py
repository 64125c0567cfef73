"""`torch_bridge.patch_model` on transformers' MoE models: quantized and dense per-expert weights.

The patched HF model must reproduce transformers' own forward over the same (dequantized) weights:
Qwen2-MoE and Mixtral with RTN int4 experts (`QuantExperts` replaces the 3-D experts module), gpt-oss
with the MXFP4 experts of tests/models/test_moe_gpt_oss.py (interleaved, clamped SwiGLU with
biases), and dense per-expert weights copied into the 3-D parameters (Mixtral's ``block_sparse_moe``
names included).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import jquant
from jquant.convert.checkpoint import Checkpoint
from jquant.models.mixtral import MOE_NAMES
from jquant.parity import compare_logits, transformers_logits
from tests.models.test_moe import ARCHS, BASE, _rtn_int4

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tb = pytest.importorskip("torch_bridge")

IDS = np.random.default_rng(2).integers(0, 256, size=(2, 10)).astype(np.int32)


def _model(arch):
    cfg_cls, model_cls, over = ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**BASE, **over})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.mul_(20.0)
    return model


@pytest.mark.slow  # ~13 s: the JAX model on the same checkpoint is compiled too
@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_int4_experts_patched_match_transformers(arch, tmp_path):
    model = _model(arch)
    model.save_pretrained(tmp_path)
    ckpt = jquant.convert(tmp_path)
    module, (_, _, d) = MOE_NAMES[arch]
    weights = {
        n: _rtn_int4(np.asarray(t), 32, asym=f".{d}." in n) if f".{module}.experts." in n else t
        for n, t in ckpt.weights.items()
    }
    oracle = copy.deepcopy(model)
    n_exp = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    g, u, _ = MOE_NAMES[arch][1]
    with torch.no_grad():
        for i, layer in enumerate(oracle.model.layers):
            experts = getattr(layer.mlp, "experts", None)
            if experts is None:
                continue
            for j in range(n_exp):
                deq = {p: torch.from_numpy(jquant.dequantize(weights[f"model.layers.{i}.{module}.experts.{j}.{p}.weight"])) for p in (g, u, d)}  # fmt: skip
                experts.gate_up_proj[j].copy_(torch.cat([deq[g], deq[u]]))
                experts.down_proj[j].copy_(deq[d])
    want = transformers_logits(oracle, IDS)
    patched = copy.deepcopy(model)
    report = tb.patch_model(patched, Checkpoint("rtn", ckpt.config, weights, {}))
    assert any(".experts.0." in n for n in report["quantized"]) and not report["unknown"]
    assert type(patched.model.layers[0].mlp.experts).__name__ == "QuantExperts"
    got = compare_logits(transformers_logits(patched, IDS), want)
    assert got.rel <= 1e-5, f"{arch}: {got}"
    # the JAX model on the same checkpoint agrees with the patched torch model (the parity pair)
    import jax.numpy as jnp

    jm = jquant.models.from_checkpoint(Checkpoint("rtn", ckpt.config, weights, {}), strict=True)
    assert compare_logits(np.asarray(jm(jnp.asarray(IDS))), transformers_logits(patched, IDS)).rel <= 1e-5


def test_dense_per_expert_weights_copy_into_fused_parameters(tmp_path):
    model = _model("mixtral")
    model.save_pretrained(tmp_path)
    ckpt = jquant.convert(tmp_path)  # per-expert names under block_sparse_moe
    assert "model.layers.0.block_sparse_moe.experts.5.w2.weight" in ckpt.weights
    fresh = transformers.MixtralForCausalLM(model.config).eval()
    report = tb.patch_model(fresh, ckpt)
    assert not report["unknown"] and not report["quantized"]
    assert compare_logits(transformers_logits(fresh, IDS), transformers_logits(model, IDS)).rel == 0.0


def test_gpt_oss_mxfp4_experts_patched_match_transformers():
    pytest.importorskip("compressed_tensors")
    from tests.models.test_moe_gpt_oss import _model as gpt_oss_model
    from tests.models.test_moe_gpt_oss import _mxfp4_dir

    model = gpt_oss_model()
    folder = _mxfp4_dir(model)
    oracle = transformers.GptOssForCausalLM.from_pretrained(
        folder, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32
    ).eval()
    ckpt = jquant.convert(folder)
    patched = copy.deepcopy(model)
    report = tb.patch_model(patched, ckpt)
    assert len([n for n in report["quantized"] if ".experts." in n]) == 2 * 2 * 6 and not report["unknown"]
    got = compare_logits(transformers_logits(patched, IDS), transformers_logits(oracle, IDS))
    assert got.rel <= 1e-5, got


def test_missing_expert_projection_is_named():
    model = _model("qwen2_moe")
    weights = {f"model.layers.0.mlp.experts.{j}.{p}.weight": np.zeros((96, 64), np.float32) for j in range(6) for p in ("gate_proj", "up_proj")}  # fmt: skip
    with pytest.raises(jquant.core.ConfigError, match="no down projection") as e:
        tb.patch_model(model, weights)
    assert "model.layers.0.mlp.experts.0" in str(e.value)
