"""gpt-oss in jquant vs transformers 5.25: dense fused experts, MXFP4 experts, YaRN tables.

Oracles: a tiny random ``GptOssForCausalLM`` (f32, seeded, biases / sinks / norms randomized so a
missed one shows) saved with ``save_pretrained``, which writes gpt-oss' fused expert tensors
(``mlp.experts.gate_up_proj`` [E, H, 2I], gate/up interleaved, with biases). For MXFP4, the same
experts are quantized by compressed-tensors' MXFP4 compressor (a real producer of E2M1 codes with
E8M0 scales), written in gpt-oss' ``*_blocks`` / ``*_scales`` layout, and transformers loads that
checkpoint itself (``Mxfp4Config(dequantize=True)``: its own CPU dequantizer) as the oracle.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.core import QArray
from jquant.models import GptOssForCausalLM, from_checkpoint
from jquant.models.gpt_oss import yarn_parameters
from jquant.parity import compare_logits, transformers_logits
from tests.fixtures.cache import cached_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

E, H, I = 6, 64, 96  # noqa: E741
CONFIG = dict(
    vocab_size=256, hidden_size=H, intermediate_size=I, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=32, num_local_experts=E, num_experts_per_tok=2, sliding_window=4,
    max_position_embeddings=128,
    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=8.0, beta_fast=32.0, beta_slow=1.0,
                         truncate=False, original_max_position_embeddings=16),
)  # fmt: skip
# Two rows, 12 tokens: past the sliding window of 4 on layer 0, every expert gets tokens.
IDS = np.random.default_rng(0).integers(0, 256, size=(2, 12)).astype(np.int32)


def _model():
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(transformers.GptOssConfig(**CONFIG)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("router.weight"):  # sharp routing: the top-k matters
                p.mul_(20.0)
            elif name.endswith(("bias", "sinks")):
                p.copy_(0.5 * torch.randn_like(p))
            elif ".experts." in name:  # big enough that the SwiGLU clamp (limit 7) cuts some values
                p.copy_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def dense():
    model = _model()
    folder = cached_dir(f"hf-tiny-gpt-oss-transformers{transformers.__version__}", model.save_pretrained)
    return model, folder


def test_yarn_tables_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for extra in (dict(truncate=False), dict(truncate=True), dict(attention_factor=1.3), dict(beta_fast=8.0)):
        rope = {**CONFIG["rope_parameters"], **extra}
        cfg = transformers.GptOssConfig(**{**CONFIG, "rope_parameters": rope})
        inv, scale = ROPE_INIT_FUNCTIONS["yarn"](cfg)
        mine, my_scale = yarn_parameters(32, tuple(sorted(rope.items())))
        np.testing.assert_allclose(mine, inv.numpy(), rtol=2e-7, atol=0, err_msg=str(extra))
        assert my_scale == pytest.approx(scale, rel=1e-12), extra


@pytest.mark.slow  # ~25 s on 2 cores: two unrolled (sliding / full) models compiled, plus cache decode
def test_dense_fused_experts_match_transformers(dense):
    model, folder = dense
    ckpt = jquant.convert(folder)
    # the fused [E, H, 2I] tensors became per-expert linears [2I, H], rows in stored (interleaved) order
    gu = model.model.layers[0].mlp.experts.gate_up_proj.detach().numpy()
    assert np.array_equal(ckpt.weights["model.layers.0.mlp.experts.3.gate_up_proj.weight"], gu[3].T)
    assert not any(n.endswith(("experts.gate_up_proj", "experts.down_proj")) for n in ckpt.weights)
    oracle = transformers_logits(model, IDS)
    for kw in (dict(), dict(fuse_projections=False)):
        jm = from_checkpoint(ckpt, strict=True, **kw)
        assert isinstance(jm, GptOssForCausalLM) and jm.layers is not None  # sliding / full layers: unrolled
        report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), oracle)
        assert report.rel <= 1e-5, f"{kw}: {report}"
        assert report.top1_agreement == 1.0
    cache = jm.init_cache(IDS.shape[0], 16)
    first, cache = jm(jnp.asarray(IDS[:, :11]), cache)
    last, _ = jm(jnp.asarray(IDS[:, 11:]), cache)  # a one-token decode step, past the window of 4
    assert compare_logits(np.concatenate([first, last], axis=1), oracle).rel <= 1e-5


def test_sinks_and_clamp_matter(dense):
    """The oracle comparison is only as strong as the features it exercises: removing the sinks, or
    the SwiGLU clamp, must move the logits well beyond the tolerance."""
    model, folder = dense
    ckpt = jquant.convert(folder)
    oracle = transformers_logits(model, IDS)
    weights = dict(ckpt.weights)
    for i in range(2):
        weights[f"model.layers.{i}.self_attn.sinks"] = np.full((4,), -1e4, np.float32)  # sinks off
    no_sinks = from_checkpoint(jquant.Checkpoint("x", ckpt.config, weights, {}))
    assert compare_logits(np.asarray(no_sinks(jnp.asarray(IDS))), oracle).rel > 1e-3
    no_clamp = from_checkpoint(jquant.Checkpoint("x", {**ckpt.config, "swiglu_limit": 1e9}, ckpt.weights, {}))
    assert compare_logits(np.asarray(no_clamp(jnp.asarray(IDS))), oracle).rel > 1e-3


def _mxfp4_dir(model):
    """gpt-oss MXFP4 checkpoint of ``model``: experts quantized by compressed-tensors' MXFP4 compressor."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from safetensors.numpy import save_file

    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    comp = BaseCompressor.get_value_from_registry("mxfp4-pack-quantized")

    def mx(w):  # [N, K] -> uint8 blocks [N, K/32, 16], uint8 E8M0 exponents [N, K/32]
        g = w.reshape(w.shape[0], -1, 32)
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights)
        c = comp.compress({"weight": w, "weight_scale": scale}, scheme)
        return c["weight_packed"].numpy().reshape(w.shape[0], -1, 16), c["weight_scale"].numpy()

    def build(folder):
        tensors = {}
        for name, p in model.state_dict().items():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # [E, in, out] -> rows = out
                packed = [mx(p[e].T.contiguous()) for e in range(p.shape[0])]
                tensors[f"{name}_blocks"] = np.stack([b for b, _ in packed])
                tensors[f"{name}_scales"] = np.stack([s for _, s in packed])
            else:
                tensors[name] = p.numpy()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        }  # fmt: skip
        (folder / "config.json").write_text(json.dumps(cfg))

    import compressed_tensors

    return cached_dir(f"gpt-oss-mxfp4-ct{compressed_tensors.__version__}-tf{transformers.__version__}", build)


def test_mxfp4_experts_match_transformers_dequantized(dense):
    model, _ = dense
    pytest.importorskip("compressed_tensors")
    folder = _mxfp4_dir(model)
    ckpt = jquant.convert(folder)
    assert ckpt.format == "mxfp4"
    q = ckpt.weights["model.layers.1.mlp.experts.5.down_proj.weight"]
    assert isinstance(q, QArray) and q.qtype.name == "fp4_e2m1" and q.shape == (H, I) and q.block == (1, 32)
    oracle_model = transformers.GptOssForCausalLM.from_pretrained(
        folder, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32
    ).eval()
    oracle = transformers_logits(oracle_model, IDS)
    assert compare_logits(transformers_logits(model, IDS), oracle).rel > 1e-3  # fp4 changed something
    jm = from_checkpoint(ckpt, strict=True)
    report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), oracle)
    assert report.rel <= 1e-5, report
    assert report.top1_agreement == 1.0


def test_missing_expert_bias_is_named(dense):
    _, folder = dense
    ckpt = jquant.convert(folder)
    name = "model.layers.1.mlp.experts.2.down_proj.bias"
    weights = {k: v for k, v in ckpt.weights.items() if k != name}
    with pytest.raises(jquant.core.FormatError, match="missing") as e:
        from_checkpoint(jquant.Checkpoint("x", ckpt.config, weights, {}))
    assert name in str(e.value)
