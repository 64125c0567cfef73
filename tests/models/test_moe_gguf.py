"""GGUF MoE (llama.cpp ``qwen2moe``): 3-D ``ffn_*_exps`` split per expert, bit-exact, and logits vs transformers.

Producer: gguf-py's own `GGUFWriter` with experts quantized by ``gguf.quants.quantize`` (Q4_0, Q4_1,
Q8_0), from a tiny random transformers Qwen2-MoE (f32, seeded), written with llama.cpp's names,
shapes and metadata keys (``convert_hf_to_gguf.py Qwen2MoeModel``). Oracles: ``gguf.quants.dequantize``
of the written 3-D payloads (bit-exact, per expert), and transformers' forward over those
dequantized weights (logits within 1e-5 relative).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.core import QArray
from jquant.models import MoeForCausalLM, from_checkpoint
from jquant.parity import compare_logits, transformers_logits
from tests.fixtures.cache import cached_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

V, H, HEADS, KV, E, I, SHARED, LAYERS = 256, 64, 4, 2, 4, 96, 64, 2  # noqa: E741
CONFIG = dict(
    vocab_size=V, hidden_size=H, intermediate_size=160, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
    num_key_value_heads=KV, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1e6,
    tie_word_embeddings=False, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2,
    shared_expert_intermediate_size=SHARED, qkv_bias=True,
)  # fmt: skip
EXPERT_TYPES = {"ffn_gate_exps": "Q4_0", "ffn_up_exps": "Q4_1", "ffn_down_exps": "Q8_0", "ffn_down_shexp": "Q8_0"}
IDS = np.random.default_rng(1).integers(0, V, size=(2, 12)).astype(np.int32)


def _hf_model():
    torch.manual_seed(0)
    model = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(**CONFIG)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("gate.weight"):
                p.mul_(20.0)
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _write(model, folder):
    """The GGUF file and, per HF name, the float32 weights it holds (gguf-py's dequantization)."""
    from gguf.quants import dequantize, quantize

    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(folder / "tiny-qwen2moe.gguf"), arch="qwen2moe")
    w.add_name("tiny-qwen2moe")
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(160)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_vocab_size(V)
    w.add_expert_count(E)
    w.add_expert_used_count(2)
    w.add_expert_feed_forward_length(I)
    w.add_expert_shared_feed_forward_length(SHARED)
    expected = {}

    def put(gname, a, hname=None):
        t = EXPERT_TYPES.get(gname.split(".")[2]) if gname.startswith("blk.") else None
        a = np.ascontiguousarray(a, np.float32)
        if t is None:
            w.add_tensor(gname, a)
            deq = a
        else:
            qt = gguf.GGMLQuantizationType[t]
            payload = quantize(a, qt)
            w.add_tensor(gname, payload, raw_dtype=qt)
            deq = dequantize(payload, qt).reshape(a.shape)
        expected[hname or gname] = deq

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output.weight", sd["lm_head.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    for i in range(LAYERS):
        q, b = f"model.layers.{i}.", f"blk.{i}."
        for g, h in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            put(f"{b}{g}.weight", sd[f"{q}{h}.weight"])
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            for leaf in ("weight", "bias"):
                if f"{q}self_attn.{h}.{leaf}" in sd:
                    put(f"{b}{g}.{leaf}", sd[f"{q}self_attn.{h}.{leaf}"])
        put(f"{b}ffn_gate_inp.weight", sd[f"{q}mlp.gate.weight"])
        gate_up = sd[f"{q}mlp.experts.gate_up_proj"]  # [E, 2I, H]: transformers 5 holds [gate; up]
        put(f"{b}ffn_gate_exps.weight", gate_up[:, :I], f"{q}gate_exps")
        put(f"{b}ffn_up_exps.weight", gate_up[:, I:], f"{q}up_exps")
        put(f"{b}ffn_down_exps.weight", sd[f"{q}mlp.experts.down_proj"], f"{q}down_exps")
        for proj in ("gate", "up", "down"):
            put(f"{b}ffn_{proj}_shexp.weight", sd[f"{q}mlp.shared_expert.{proj}_proj.weight"])
        put(
            f"{b}ffn_gate_inp_shexp.weight", sd[f"{q}mlp.shared_expert_gate.weight"].reshape(H)
        )  # 1-D, as llama.cpp's graph reads it
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(folder / "expected.npz", **expected)
    (folder / "config.json").write_text(json.dumps(CONFIG))


@pytest.fixture(scope="module")
def moe_gguf():
    model = _hf_model()
    folder = cached_dir(f"gguf-tiny-qwen2moe-tf{transformers.__version__}", lambda f: _write(model, f))
    return model, folder / "tiny-qwen2moe.gguf", dict(np.load(folder / "expected.npz"))


def test_expert_tensors_split_bit_exact(moe_gguf):
    _, path, expected = moe_gguf
    ckpt = jquant.convert(path)
    assert ckpt.config["model_type"] == "qwen2_moe" and ckpt.config["num_experts"] == E
    assert ckpt.config["mlp_only_layers"] == [] and ckpt.config["norm_topk_prob"] is False
    for i in range(LAYERS):
        for proj, key in (("gate_proj", "gate_exps"), ("up_proj", "up_exps"), ("down_proj", "down_exps")):
            ref = expected[f"model.layers.{i}.{key}"]
            for j in range(E):
                q = ckpt.weights[f"model.layers.{i}.mlp.experts.{j}.{proj}.weight"]
                assert isinstance(q, QArray), (i, proj, j)
                got = jquant.dequantize(q)
                assert got.shape == ref[j].shape and np.array_equal(got.view(np.uint32), ref[j].view(np.uint32)), (
                    i,
                    proj,
                    j,
                )
        assert ckpt.weights[f"model.layers.{i}.mlp.shared_expert_gate.weight"].shape == (1, H)
    assert not any(".experts.gate_proj" in n for n in ckpt.weights)


def test_logits_match_transformers_over_gguf_dequantized(moe_gguf):
    model, path, expected = moe_gguf
    oracle = transformers.Qwen2MoeForCausalLM(model.config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(LAYERS):
        q = f"model.layers.{i}."
        state[f"{q}mlp.experts.gate_up_proj"] = torch.from_numpy(
            np.concatenate([expected[f"{q}gate_exps"], expected[f"{q}up_exps"]], axis=1)
        )
        state[f"{q}mlp.experts.down_proj"] = torch.from_numpy(expected[f"{q}down_exps"])
        state[f"{q}mlp.shared_expert.down_proj.weight"] = torch.from_numpy(expected[f"blk.{i}.ffn_down_shexp.weight"])
    oracle.load_state_dict(state)
    want = transformers_logits(oracle, IDS)
    assert compare_logits(transformers_logits(model, IDS), want).rel > 1e-3  # quantization changed something
    jm = from_checkpoint(jquant.convert(path), strict=True)
    assert isinstance(jm, MoeForCausalLM)
    report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), want)
    assert report.rel <= 1e-5, report
    assert report.top1_agreement == 1.0


def test_expert_tensor_of_wrong_rank_is_named(moe_gguf):
    from jquant.formats.base import TensorGroup
    from jquant.formats.gguf import GGML_TYPES, GGUF, RawTensor

    _, path, _ = moe_gguf
    fmt = GGUF.from_config(jquant.convert(path).config, [])
    raw = RawTensor("blk.0.ffn_up_exps.weight", GGML_TYPES[0], (I, H), np.zeros((I, H), np.float32))

    class Src:
        def __getitem__(self, name):
            return raw

    group = TensorGroup("model.layers.0.mlp.experts.up_proj", {"weight": (Src(), raw.name)})
    with pytest.raises(jquant.core.FormatError, match="3-D expert weight") as e:
        fmt.convert_module(group)
    assert "blk.0.ffn_up_exps.weight" in str(e.value)


def test_inspect_shows_the_moe_architecture_and_experts(moe_gguf, capsys):
    from jquant.cli import main

    _, path, _ = moe_gguf
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "architecture Qwen2MoeForCausalLM" in out
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in out and "uint4" in out
