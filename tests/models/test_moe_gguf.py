"""GGUF MoE (llama.cpp ``qwen2moe``, ``qwen3moe``, Mixtral as ``llama``): 3-D ``ffn_*_exps`` split per
expert, bit-exact, and logits vs transformers.

Producer: gguf-py's own `GGUFWriter` with experts quantized by ``gguf.quants.quantize`` (Q4_0, Q4_1,
Q5_0, Q8_0) and Q4_K by the numpy encoder of `tests.fixtures.gguf_files` (gguf-py has no K-quant
encoder), from tiny random transformers models (f32, seeded), written with llama.cpp's names,
shapes and metadata keys (``convert_hf_to_gguf.py Qwen2MoeModel`` / ``Qwen3MoeModel`` /
``LlamaModel``, which also takes ``MixtralForCausalLM`` and permutes its Q/K rows). Oracles:
``gguf.quants.dequantize`` of the written 3-D payloads (bit-exact, per expert), and transformers'
forward over those dequantized weights (logits within 1e-5 relative).
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


# ---- Mixtral (arch "llama" + llama.expert_count) and Qwen3-MoE ("qwen3moe") ----

from tests.fixtures.gguf_files import llama_permute, quantize_q4_k  # noqa: E402

H2, I2, HD2 = 256, 64, 64  # hidden a multiple of 256 so the up experts can be Q4_K (K = hidden)
SETUPS = {
    "mixtral": dict(
        arch="llama",
        hf=("MixtralConfig", "MixtralForCausalLM"),
        config=dict(intermediate_size=I2, num_local_experts=E, rope_theta=1e6, sliding_window=None),
        types={"ffn_gate_exps": "Q4_0", "ffn_up_exps": "Q4_K", "ffn_down_exps": "Q8_0", "attn_q": "Q8_0"},
        names=("block_sparse_moe", ("w1", "w3", "w2")),
    ),
    "qwen3_moe": dict(
        arch="qwen3moe",
        hf=("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
        config=dict(
            intermediate_size=160,
            moe_intermediate_size=I2,
            num_experts=E,
            norm_topk_prob=True,
            rope_theta=1e6,
            head_dim=HD2,
            mlp_only_layers=[],
            decoder_sparse_step=1,
        ),  # fmt: skip
        types={"ffn_gate_exps": "Q5_0", "ffn_up_exps": "Q4_K", "ffn_down_exps": "Q4_1", "attn_k": "Q8_0"},
        names=("mlp", ("gate_proj", "up_proj", "down_proj")),
    ),
}
IDS2 = np.random.default_rng(2).integers(0, V, size=(2, 10)).astype(np.int32)


def _hf_moe(kind: str):
    setup = SETUPS[kind]
    conf_cls, model_cls = (getattr(transformers, n) for n in setup["hf"])
    cfg = dict(
        vocab_size=V, hidden_size=H2, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = model_cls(conf_cls(**cfg, **setup["config"])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("gate.weight"):
                p.mul_(20.0)  # a decisive router, so top-k does not flip on quantization noise
    return model


def _write_moe(kind: str, model, folder):
    """llama.cpp's file for ``kind``; ``expected.npz``: gguf-py's dequantization per written tensor (HF row order)."""
    from gguf.quants import dequantize, quantize

    setup = SETUPS[kind]
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(folder / f"tiny-{kind}.gguf"), arch=setup["arch"])
    w.add_name(f"tiny-{kind}")
    w.add_context_length(128)
    w.add_embedding_length(H2)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(setup["config"]["intermediate_size"])
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_vocab_size(V)
    w.add_expert_count(E)
    w.add_expert_used_count(2)
    if kind == "mixtral":
        w.add_rope_dimension_count(H2 // HEADS)
    else:  # Qwen3MoeModel: expert width and the HF head_dim as key / value lengths
        w.add_expert_feed_forward_length(I2)
        w.add_key_length(HD2)
        w.add_value_length(HD2)
    expected = {}

    def put(gname, a, hname=None, heads=None):
        """Writes ``a`` (HF row order); llama permutes attn_q / attn_k rows first (``LlamaModel.permute``)."""
        t = setup["types"].get(gname.split(".")[2]) if gname.startswith("blk.") else None
        a = np.ascontiguousarray(a, np.float32)
        if t is None:
            payload, deq = a, a
        elif t == "Q4_K":
            payload = quantize_q4_k(a)
            deq = dequantize(payload, gguf.GGMLQuantizationType.Q4_K).reshape(a.shape)
        else:
            payload = quantize(a, gguf.GGMLQuantizationType[t])
            deq = dequantize(payload, gguf.GGMLQuantizationType[t]).reshape(a.shape)
        if heads is not None:  # blocks lie inside rows, so permuting the payload's rows = quantizing permuted rows
            payload = llama_permute(payload, heads)
        w.add_tensor(gname, payload, raw_dtype=None if t is None else gguf.GGMLQuantizationType[t])
        expected[hname or gname] = deq

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output.weight", sd["lm_head.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    permute = kind == "mixtral"
    for i in range(LAYERS):
        q, b = f"model.layers.{i}.", f"blk.{i}."
        for g, h in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            put(f"{b}{g}.weight", sd[f"{q}{h}.weight"])
        for g, h, heads in (("attn_q", "q_proj", HEADS), ("attn_k", "k_proj", KV), ("attn_v", "v_proj", None)):
            put(
                f"{b}{g}.weight", sd[f"{q}self_attn.{h}.weight"], f"{q}self_attn.{h}.weight", heads if permute else None
            )
        put(f"{b}attn_output.weight", sd[f"{q}self_attn.o_proj.weight"])
        if kind == "qwen3_moe":
            put(f"{b}attn_q_norm.weight", sd[f"{q}self_attn.q_norm.weight"])
            put(f"{b}attn_k_norm.weight", sd[f"{q}self_attn.k_norm.weight"])
        put(f"{b}ffn_gate_inp.weight", sd[f"{q}mlp.gate.weight"])
        gate_up = sd[f"{q}mlp.experts.gate_up_proj"]  # [E, 2I, H] = [gate; up] per expert (transformers 5)
        put(f"{b}ffn_gate_exps.weight", gate_up[:, :I2], f"{q}gate_exps")
        put(f"{b}ffn_up_exps.weight", gate_up[:, I2:], f"{q}up_exps")
        put(f"{b}ffn_down_exps.weight", sd[f"{q}mlp.experts.down_proj"], f"{q}down_exps")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(folder / "expected.npz", **expected)


def _oracle(model, expected):
    """transformers' model of the same config over gguf-py's dequantization of the written tensors."""
    oracle = type(model)(model.config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, a in expected.items():
        if name in state:
            state[name] = torch.from_numpy(a)
    for i in range(LAYERS):
        q = f"model.layers.{i}."
        gate_up = np.concatenate([expected[f"{q}gate_exps"], expected[f"{q}up_exps"]], axis=1)
        state[f"{q}mlp.experts.gate_up_proj"] = torch.from_numpy(gate_up)
        state[f"{q}mlp.experts.down_proj"] = torch.from_numpy(expected[f"{q}down_exps"])
    oracle.load_state_dict(state)
    return oracle


@pytest.fixture(scope="module", params=sorted(SETUPS))
def moe_gguf2(request):
    kind = request.param
    model = _hf_moe(kind)
    key = f"gguf-tiny-{kind}-v1-tf{transformers.__version__}"
    folder = cached_dir(key, lambda f: _write_moe(kind, model, f))
    return kind, model, folder / f"tiny-{kind}.gguf", dict(np.load(folder / "expected.npz"))


def test_mixtral_and_qwen3moe_experts_bit_exact(moe_gguf2):
    kind, _, path, expected = moe_gguf2
    ckpt = jquant.convert(path)
    module, projs = SETUPS[kind]["names"]
    arch = SETUPS[kind]["hf"][1]
    assert ckpt.config["model_type"] == kind and ckpt.config["architectures"] == [arch]
    if kind == "mixtral":
        assert ckpt.config["num_local_experts"] == E and ckpt.config["intermediate_size"] == I2
    else:
        assert ckpt.config["num_experts"] == E and ckpt.config["moe_intermediate_size"] == I2
        assert ckpt.config["norm_topk_prob"] is True and ckpt.config["head_dim"] == HD2
    types = SETUPS[kind]["types"]
    for i in range(LAYERS):
        for proj, key in zip(projs, ("gate_exps", "up_exps", "down_exps")):
            ref = expected[f"model.layers.{i}.{key}"]
            for j in range(E):
                qa = ckpt.weights[f"model.layers.{i}.{module}.experts.{j}.{proj}.weight"]
                assert isinstance(qa, QArray), (i, proj, j)
                got = jquant.dequantize(qa)
                assert np.array_equal(got.view(np.uint32), ref[j].view(np.uint32)), (i, proj, j)
        assert ckpt.weights[f"model.layers.{i}.{module}.gate.weight"].shape == (E, H2)
        # attention rows back in HF order (llama's Q/K permutation undone on quantized blocks too)
        for h in ("q_proj", "k_proj"):
            name = f"model.layers.{i}.self_attn.{h}.weight"
            got = np.asarray(jquant.dequantize(ckpt.weights[name]))
            assert np.array_equal(got.view(np.uint32), expected[name].view(np.uint32)), name
    assert any(isinstance(ckpt.weights[n], QArray) for n in ckpt.weights if "self_attn" in n)
    assert ckpt.metadata["tensor_types"]["Q4_K"] == LAYERS
    assert all(t in ckpt.metadata["tensor_types"] for t in types.values())
    if kind == "mixtral":  # every MoE tensor under HF Mixtral's names
        assert not any(".mlp." in n for n in ckpt.weights)


def test_mixtral_and_qwen3moe_logits_match_transformers(moe_gguf2):
    kind, model, path, expected = moe_gguf2
    want = transformers_logits(_oracle(model, expected), IDS2)
    assert compare_logits(transformers_logits(model, IDS2), want).rel > 1e-3  # quantization changed something
    jm = from_checkpoint(jquant.convert(path), strict=True)
    assert isinstance(jm, MoeForCausalLM) and jm.config.model_type == kind
    report = compare_logits(np.asarray(jm(jnp.asarray(IDS2))), want)
    assert report.rel <= 1e-5, (kind, report)
    assert report.top1_agreement == 1.0


def test_llama_without_expert_count_stays_dense():
    from jquant.formats.gguf.arch import ARCHS, MIXTRAL, arch_spec, hf_name

    assert arch_spec({"general.architecture": "llama"}) is ARCHS["llama"]
    assert arch_spec({"general.architecture": "llama", "llama.expert_count": 8}) is MIXTRAL
    assert hf_name("blk.2.ffn_up_exps.weight", spec=MIXTRAL) == "model.layers.2.block_sparse_moe.experts.w3.weight"
    assert hf_name("blk.2.ffn_gate_inp.weight", spec=MIXTRAL) == "model.layers.2.block_sparse_moe.gate.weight"
    assert hf_name("blk.2.ffn_down_exps.weight") == "model.layers.2.mlp.experts.down_proj.weight"


def test_one_token_decode_takes_the_routed_expert_path(moe_gguf2, monkeypatch):
    """Decoding one token (top-2 copies < 4 experts) runs grouped_qmatmul's routed path; logits still match."""
    from jquant.ops import grouped
    from jquant.ops.grouped import grouped_implementation

    traced = []  # the routed path's row counts, recorded when the model's graph is traced

    def spy(x, *args):
        traced.append(x.shape[0])
        return routed(x, *args)

    routed = grouped._routed
    monkeypatch.setattr(grouped, "_routed", spy)
    kind, model, path, expected = moe_gguf2
    jm = from_checkpoint(jquant.convert(path), strict=True)
    w = jnp.zeros((E, I2, H2), jnp.float32)
    assert grouped_implementation(jnp.zeros((2, H2)), w) == "xla_routed_reference"  # 1 token x top-2 rows
    ids = IDS2[:1]
    want = transformers_logits(_oracle(model, expected), ids)
    cache = jm.init_cache(1, 16)
    steps = [jm(jnp.asarray(ids[:, :7]), cache)]
    for t in range(7, ids.shape[1]):  # one token at a time: M = 1 token, 2 rows
        steps.append(jm(jnp.asarray(ids[:, t : t + 1]), steps[-1][1]))
    got = np.concatenate([np.asarray(s[0]) for s in steps], axis=1)
    report = compare_logits(got, want)
    assert report.rel <= 1e-5, (kind, report)
    assert traced and set(traced) == {2}, traced  # only the one-token steps (2 rows), never the prefill


# ---- gpt-oss ("gpt-oss": MXFP4 experts with biases, gate / up split, sinks, YaRN, sliding window) ----

E3, H3, I3, HEADS3, HD3 = 4, 64, 96, 4, 32
OSS_CONFIG = dict(
    vocab_size=V, hidden_size=H3, intermediate_size=I3, num_hidden_layers=LAYERS, num_attention_heads=HEADS3,
    num_key_value_heads=2, head_dim=HD3, num_local_experts=E3, num_experts_per_tok=2, sliding_window=4,
    max_position_embeddings=128, rms_norm_eps=1e-5,
    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=8.0, original_max_position_embeddings=16),
)  # fmt: skip


def _oss_model():
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(transformers.GptOssConfig(**OSS_CONFIG)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("router.weight"):
                p.mul_(20.0)
            elif name.endswith(("bias", "sinks")):
                p.copy_(0.5 * torch.randn_like(p))
            elif ".experts." in name:  # big enough that the SwiGLU clamp (limit 7) cuts some values
                p.copy_(0.3 * torch.randn_like(p))
    return model


def _write_oss(model, folder):
    """``convert_hf_to_gguf.py GptOssModel``'s layout; experts MXFP4 by ``gguf.quants.quantize``."""
    from gguf.quants import dequantize, quantize

    mx = gguf.GGMLQuantizationType.MXFP4
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(folder / "tiny-gpt-oss.gguf"), arch="gpt-oss")
    w.add_name("tiny-gpt-oss")
    w.add_context_length(128)
    w.add_embedding_length(H3)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(I3)
    w.add_head_count(HEADS3)
    w.add_head_count_kv(2)
    w.add_key_length(HD3)
    w.add_value_length(HD3)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(150000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(8.0)
    w.add_rope_scaling_orig_ctx_len(16)
    w.add_sliding_window(4)
    w.add_vocab_size(V)
    w.add_expert_count(E3)
    w.add_expert_used_count(2)
    w.add_expert_feed_forward_length(I3)
    expected = {}

    def put(gname, a, quantized=False):
        a = np.ascontiguousarray(a, np.float32)
        if quantized:
            payload = quantize(a, mx)
            w.add_tensor(gname, payload, raw_dtype=mx)
            expected[gname] = dequantize(payload, mx).reshape(a.shape)
        else:
            w.add_tensor(gname, a)
            expected[gname] = a

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output.weight", sd["lm_head.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    for i in range(LAYERS):
        q, b = f"model.layers.{i}.", f"blk.{i}."
        put(f"{b}attn_norm.weight", sd[f"{q}input_layernorm.weight"])
        put(f"{b}post_attention_norm.weight", sd[f"{q}post_attention_layernorm.weight"])
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            for leaf in ("weight", "bias"):
                put(f"{b}{g}.{leaf}", sd[f"{q}self_attn.{h}.{leaf}"])
        put(f"{b}attn_sinks.weight", sd[f"{q}self_attn.sinks"])
        put(f"{b}ffn_gate_inp.weight", sd[f"{q}mlp.router.weight"])
        put(f"{b}ffn_gate_inp.bias", sd[f"{q}mlp.router.bias"])
        gu, gu_b = sd[f"{q}mlp.experts.gate_up_proj"], sd[f"{q}mlp.experts.gate_up_proj_bias"]  # [E, H, 2I], [E, 2I]
        put(f"{b}ffn_gate_exps.weight", gu[:, :, 0::2].transpose(0, 2, 1), quantized=True)
        put(f"{b}ffn_up_exps.weight", gu[:, :, 1::2].transpose(0, 2, 1), quantized=True)
        put(f"{b}ffn_down_exps.weight", sd[f"{q}mlp.experts.down_proj"].transpose(0, 2, 1), quantized=True)
        put(f"{b}ffn_gate_exps.bias", gu_b[:, 0::2])
        put(f"{b}ffn_up_exps.bias", gu_b[:, 1::2])
        put(f"{b}ffn_down_exps.bias", sd[f"{q}mlp.experts.down_proj_bias"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np.savez(folder / "expected.npz", **expected)


@pytest.fixture(scope="module")
def oss_gguf():
    model = _oss_model()
    folder = cached_dir(f"gguf-tiny-gpt-oss-v1-tf{transformers.__version__}", lambda f: _write_oss(model, f))
    return model, folder / "tiny-gpt-oss.gguf", dict(np.load(folder / "expected.npz"))


def _interleave(gate, up):
    """[..., N, K] gate and up -> [..., 2N, K] rows g0, u0, g1, u1... (HF gpt-oss gate_up_proj order)."""
    out = np.empty((*gate.shape[:-2], 2 * gate.shape[-2], gate.shape[-1]), gate.dtype)
    out[..., 0::2, :], out[..., 1::2, :] = gate, up
    return out


def test_gpt_oss_experts_bit_exact(oss_gguf):
    from jquant.models.config import DecoderConfig

    _, path, expected = oss_gguf
    ckpt = jquant.convert(path)
    c = ckpt.config
    assert c["model_type"] == "gpt_oss" and c["architectures"] == ["GptOssForCausalLM"]
    assert (c["num_local_experts"], c["num_experts_per_tok"], c["intermediate_size"], c["head_dim"]) == (E3, 2, I3, HD3)
    assert c["layer_types"] == ["sliding_attention", "full_attention"] and c["sliding_window"] == 4
    assert c["rope_scaling"] == {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16}
    assert DecoderConfig.from_hf(c).layer_windows == (4, None)
    for i in range(LAYERS):
        b, q = f"blk.{i}.", f"model.layers.{i}."
        gate_up = _interleave(expected[f"{b}ffn_gate_exps.weight"], expected[f"{b}ffn_up_exps.weight"])
        bias = np.empty((E3, 2 * I3), np.float32)
        bias[:, 0::2], bias[:, 1::2] = expected[f"{b}ffn_gate_exps.bias"], expected[f"{b}ffn_up_exps.bias"]
        for j in range(E3):
            for proj, ref, ref_b in (
                ("gate_up_proj", gate_up[j], bias[j]),
                ("down_proj", expected[f"{b}ffn_down_exps.weight"][j], expected[f"{b}ffn_down_exps.bias"][j]),
            ):
                qa = ckpt.weights[f"{q}mlp.experts.{j}.{proj}.weight"]
                assert isinstance(qa, QArray) and qa.qtype.name == "fp4_e2m1", (i, j, proj, qa)
                got = jquant.dequantize(qa)
                assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (i, j, proj)
                np.testing.assert_array_equal(ckpt.weights[f"{q}mlp.experts.{j}.{proj}.bias"], ref_b)
        np.testing.assert_array_equal(ckpt.weights[f"{q}self_attn.sinks"], expected[f"{b}attn_sinks.weight"])
        assert ckpt.weights[f"{q}mlp.router.bias"].shape == (E3,)
        assert f"{q}post_attention_layernorm.weight" in ckpt.weights


def test_gpt_oss_logits_match_transformers(oss_gguf):
    model, path, expected = oss_gguf
    oracle = type(model)(model.config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(LAYERS):
        b, q = f"blk.{i}.", f"model.layers.{i}."
        gate_up = _interleave(expected[f"{b}ffn_gate_exps.weight"], expected[f"{b}ffn_up_exps.weight"])
        state[f"{q}mlp.experts.gate_up_proj"] = torch.from_numpy(np.ascontiguousarray(gate_up.transpose(0, 2, 1)))
        down = expected[f"{b}ffn_down_exps.weight"].transpose(0, 2, 1)
        state[f"{q}mlp.experts.down_proj"] = torch.from_numpy(np.ascontiguousarray(down))
    oracle.load_state_dict(state)
    want = transformers_logits(oracle, IDS)
    assert compare_logits(transformers_logits(model, IDS), want).rel > 1e-3  # MXFP4 changed something
    from jquant.models import GptOssForCausalLM

    jm = from_checkpoint(jquant.convert(path), strict=True)
    assert isinstance(jm, GptOssForCausalLM)
    report = compare_logits(np.asarray(jm(jnp.asarray(IDS))), want)
    assert report.rel <= 1e-5, report
    assert report.top1_agreement == 1.0


def test_gpt_oss_halves_that_do_not_pair_are_named(oss_gguf):
    from jquant.formats.base import TensorGroup
    from jquant.formats.gguf import GGML_TYPES, GGUF, RawTensor

    _, path, _ = oss_gguf
    fmt = GGUF.from_config(jquant.convert(path).config, [])
    q8 = next(t for t in GGML_TYPES.values() if t.name == "Q8_0")
    mx = next(t for t in GGML_TYPES.values() if t.name == "MXFP4")
    gate = RawTensor("blk.0.ffn_gate_exps.weight", mx, (E3, I3, H3), np.zeros((E3 * I3, H3 // 32 * 17), np.uint8))
    up = RawTensor("blk.0.ffn_up_exps.weight", q8, (E3, I3, H3), np.zeros((E3 * I3, H3 // 32 * 34), np.uint8))
    tensors = {t.name: t for t in (gate, up)}

    class Src:
        def __getitem__(self, name):
            return tensors[name]

    prefix = "model.layers.0.mlp.experts.gate_up_proj"
    both = TensorGroup(prefix, {"gate_weight": (Src(), gate.name), "up_weight": (Src(), up.name)})
    with pytest.raises(jquant.core.UnsupportedFormatError, match="do not interleave") as e:
        fmt.convert_module(both)
    assert "blk.0.ffn_gate_exps.weight" in str(e.value)
    with pytest.raises(jquant.core.FormatError, match="ffn_up_exps.weight is missing") as e:
        fmt.convert_module(TensorGroup(prefix, {"gate_weight": (Src(), gate.name)}))
    assert "blk.0.ffn_gate_exps.weight" in str(e.value)
