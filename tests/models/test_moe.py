"""MoE decoders (Mixtral, Qwen2-MoE, Qwen3-MoE) in jquant vs transformers, dense and with int4 experts.

Oracle: a tiny random transformers model (f32), saved with ``save_pretrained`` (per-expert HF
names) and converted with `jquant.convert`. With quantized experts, the same model's expert weights
are RTN-quantized (numpy, int4, group 32) into canonical `QArray`s, written with `jquant.save` and
read back; transformers then holds ``jquant.dequantize`` of those experts.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.convert.checkpoint import Checkpoint
from jquant.core import QArray, int_type, pack_codes
from jquant.models import MoeForCausalLM, from_checkpoint
from jquant.models.mixtral import MOE_NAMES
from jquant.parity import compare_logits, transformers_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    num_experts_per_tok=2,
)
ARCHS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(intermediate_size=96, num_local_experts=6)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        intermediate_size=160, moe_intermediate_size=96, num_experts=6, norm_topk_prob=True, head_dim=32,
        decoder_sparse_step=1, mlp_only_layers=[1],  # layer 1 keeps a dense MLP
    )),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        intermediate_size=160, moe_intermediate_size=96, num_experts=6, shared_expert_intermediate_size=80,
        qkv_bias=True, mlp_only_layers=[1],  # norm_topk_prob left at Qwen2-MoE's default (False)
    )),
}  # fmt: skip
# Two rows (the router flattens B x T), a prompt long enough that every expert gets tokens.
IDS = np.random.default_rng(0).integers(0, 256, size=(2, 12)).astype(np.int32)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def hf_model(request, tmp_path_factory):
    arch = request.param
    cfg_cls, model_cls, over = ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**{**BASE, **over})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # random norms, so a missed one shows
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("gate.weight"):  # sharper routing than the 0.02 init: the top-k matters
                p.mul_(20.0)
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp(arch)
    model.save_pretrained(folder)
    return arch, model, folder


def test_dense_logits_match_transformers(hf_model):
    arch, model, folder = hf_model
    ckpt = jquant.convert(folder)  # check_model runs: the MoE names and shapes are validated
    oracle = transformers_logits(model, IDS)
    for kw in (dict(), dict(scan_layers=False, fuse_projections=False)):
        jm = from_checkpoint(ckpt, strict=True, **kw)
        assert isinstance(jm, MoeForCausalLM)
        report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), oracle)
        assert report.rel <= 1e-5, f"{arch} {kw}: {report}"
        assert report.top1_agreement == 1.0
    # Incremental decoding through the KV cache routes the same way as the full forward.
    cache = jm.init_cache(IDS.shape[0], 16)
    first, cache = jm(jnp.asarray(IDS[:, :9]), cache)
    rest, _ = jm(jnp.asarray(IDS[:, 9:]), cache)
    assert compare_logits(np.concatenate([first, rest], axis=1), oracle).rel <= 1e-5


def _rtn_int4(w: np.ndarray, group: int, asym: bool) -> QArray:
    """numpy round-to-nearest int4, group ``group``: symmetric (uint4b8, fp16 scales) or asymmetric (uint4 + zeros)."""
    n, k = w.shape
    g = w.reshape(n, k // group, group).astype(np.float32)
    if asym:
        lo, hi = g.min(-1), g.max(-1)
        scale = np.maximum(hi - lo, 1e-6) / 15.0
        zero = np.clip(np.round(-lo / scale), 0, 15)
        codes = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, 15)
        scale, zero, qtype = scale.astype(np.float16), zero.astype(np.uint8), int_type(4)
    else:
        scale = (np.abs(g).max(-1) / 7.0).astype(np.float16)
        codes = np.clip(np.round(g / scale.astype(np.float32)[..., None]), -8, 7) + 8
        zero, qtype = None, int_type(4, bias=8)
    data = pack_codes(codes.reshape(n, k).astype(np.uint8), 4)
    return QArray(data=data, scale=scale, zero=zero, qtype=qtype, shape=(n, k), block=(1, group)).validate()


def test_int4_experts_match_transformers_over_dequantized(hf_model, tmp_path):
    arch, model, folder = hf_model
    ckpt = jquant.convert(folder)
    module, (g, u, d) = MOE_NAMES[arch]
    weights = dict(ckpt.weights)
    for name, t in ckpt.weights.items():
        if f".{module}.experts." in name:  # gate/up symmetric, down asymmetric: both zero kinds
            weights[name] = _rtn_int4(np.asarray(t), 32, asym=f".{d}." in name)
    quant = Checkpoint("rtn-int4-test", ckpt.config, weights, {})
    jquant.save(quant, tmp_path / "canonical")
    back = jquant.convert(tmp_path / "canonical")
    assert sum(isinstance(v, QArray) for v in back.weights.values()) == sum(f".{module}.experts." in n for n in weights)

    oracle = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    oracle.load_state_dict(model.state_dict())
    cfg = model.config
    n_exp = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    with torch.no_grad():
        for i, layer in enumerate(oracle.model.layers):
            experts = getattr(layer.mlp, "experts", None)
            if experts is None:  # a dense layer
                continue
            for j in range(n_exp):
                deq = {p: torch.from_numpy(jquant.dequantize(back.weights[f"model.layers.{i}.{module}.experts.{j}.{p}.weight"])) for p in (g, u, d)}  # fmt: skip
                experts.gate_up_proj[j].copy_(torch.cat([deq[g], deq[u]]))
                experts.down_proj[j].copy_(deq[d])
    oracle_logits = transformers_logits(oracle, IDS)
    assert compare_logits(transformers_logits(model, IDS), oracle_logits).rel > 1e-3  # int4 changed something
    jm = from_checkpoint(back, strict=True)
    report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), oracle_logits)
    assert report.rel <= 1e-5, f"{arch}: {report}"
    assert report.top1_agreement == 1.0


def test_missing_expert_is_refused(hf_model):
    arch, _, folder = hf_model
    ckpt = jquant.convert(folder)
    module, (g, _, _) = MOE_NAMES[arch]
    name = f"model.layers.0.{module}.experts.3.{g}.weight"
    weights = {k: v for k, v in ckpt.weights.items() if k != name}
    with pytest.raises(jquant.core.FormatError, match="missing") as e:
        from jquant.convert.validate import check_model

        check_model(ckpt.config, weights)
    assert name in str(e.value)
    with pytest.raises(jquant.core.FormatError, match="missing"):
        from_checkpoint(Checkpoint("x", ckpt.config, weights, {}))


def test_fused_expert_layout_converts_like_per_expert(hf_model, tmp_path):
    """transformers 5's in-memory layout (``mlp.experts.gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I];
    Mixtral's router under ``mlp.gate``), saved as is, converts to the same tensors as the per-expert names."""
    import shutil

    from safetensors.torch import save_file

    arch, model, folder = hf_model
    fused = tmp_path / "fused"
    fused.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(k.endswith(".mlp.experts.gate_up_proj") for k in state)
    save_file(state, fused / "model.safetensors")
    shutil.copy(folder / "config.json", fused / "config.json")
    per_expert, from_fused = jquant.convert(folder), jquant.convert(fused)
    assert sorted(from_fused.weights) == sorted(per_expert.weights)
    for name, w in per_expert.weights.items():
        assert np.array_equal(np.asarray(from_fused.weights[name]), np.asarray(w)), name


def test_fused_expert_tensor_of_wrong_rank_is_named(hf_model):
    from jquant.core.experts import split_fused_experts

    arch, _, _ = hf_model
    name = "model.layers.0.mlp.experts.gate_up_proj"
    with pytest.raises(jquant.core.FormatError, match="expected 3-D") as e:
        split_fused_experts(name, np.zeros((4, 8), np.float32), arch)
    assert name in str(e.value)
    with pytest.raises(jquant.core.FormatError, match="odd"):
        split_fused_experts(name, np.zeros((2, 7, 8), np.float32), arch)
