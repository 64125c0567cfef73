"""The Torch bridge's lean CPU decode path (issue 23): `torch_bridge.patch.Decoder`, fused q / k / v and
gate / up (`torch_bridge.linear.fuse`), `QuantLinear.runner` and the CPU kernel's bound call.

Everything here must compute the numbers the patched transformers model computes today: the tests
compare with ``torch.equal``, not a tolerance.
"""

from __future__ import annotations

import pytest
import torch

import jquant
import torch_bridge as tb
from jquant.core.errors import ConfigError
from tests.models.hf_tiny import hf_dir
from torch_bridge.linear import fuse
from torch_bridge.patch import Decoder


def _hf_logits(model, ids: list[int], steps: int) -> list[torch.Tensor]:
    """Greedy logits [1, V] of the prompt's last position and of ``steps - 1`` decode steps, through the
    model's own forward with a ``DynamicCache`` (what the bridge ran before `Decoder`)."""
    from transformers import DynamicCache

    out = []
    with torch.inference_mode():
        cache, x = DynamicCache(), torch.tensor([ids])
        for _ in range(steps):
            lg = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]
            out.append(lg.clone())
            x = torch.tensor([[int(lg.argmax(-1))]])
    return out


def _decoder_logits(dec: Decoder, ids: list[int], steps: int) -> list[torch.Tensor]:
    out = [dec.prefill(ids)[:, -1]]
    while len(out) < steps:
        out.append(dec.step(int(out[-1].argmax(-1)))[:, -1])
    return out


def _quantized(arch: str, scheme: str):
    return jquant.quantize(hf_dir(arch), scheme, include_lm_head=True)


def _gguf_mix():
    from tests.fixtures.gguf_files import tiny_gguf

    return jquant.convert(tiny_gguf("llama")[0])  # a type per tensor: some q / k / v do not fuse


CASES = {
    "llama3_w4a16_asym": lambda: _quantized("llama3", "w4a16-g128-asym"),  # int zeros, llama3 rope scaling
    "qwen2_w8a16": lambda: _quantized("qwen2", "w8a16"),  # q / k / v biases, per-channel int8
    "gguf_llama_mix": _gguf_mix,
}


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_logits_equal_the_patched_model(case):
    ckpt = CASES[case]()
    model = tb.from_checkpoint(ckpt, dtype=torch.float32)
    ids = [5, 17, 300, 2, 9, 44, 1]
    ref = _hf_logits(model, ids, 6)
    dec = Decoder(model, max_len=32)
    got = _decoder_logits(dec, ids, 6)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert torch.equal(a, b), f"step {i}: max |diff| {(a - b).abs().max().item()}"
    # the model's own forward still computes the same after fusion re-pointed its buffers
    assert all(torch.equal(a, b) for a, b in zip(ref, _hf_logits(model, ids, 6)))
    # a second sequence reuses the cache buffers
    assert all(torch.equal(a, b) for a, b in zip(got, _decoder_logits(dec, ids, 6)))
    assert dec.length == len(ids) + 5


def test_decoder_on_the_default_model_fuses_and_matches():
    """The README's main job (SmolLM2-135M-Instruct Q4_1): every layer's q / k / v and gate / up fused,
    one CPU-kernel call each, the logits equal to the patched model's for 8 steps."""
    from jquant.convert.default_model import default_model_path

    ckpt = jquant.convert(default_model_path())
    w = ckpt.weights
    w.setdefault("lm_head.weight", w["model.embed_tokens.weight"])  # tied: the quantized table as the head
    model = tb.from_checkpoint(ckpt, dtype=torch.float32)
    ids = [1, 9690, 198, 2683, 314, 253, 5356, 30]
    ref = _hf_logits(model, ids, 8)
    dec = Decoder(model, max_len=64)
    assert all(L["qkv"] is not None and L["gate_up"] is not None for L in dec._layers)
    got = _decoder_logits(dec, ids, 8)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    toks = dec.generate(ids, max_new_tokens=8)
    assert toks == [int(g.argmax(-1)) for g in got]


def test_decoder_refuses_what_it_does_not_mirror():
    from tests.models.hf_tiny import make_hf_model

    with pytest.raises(ConfigError, match="qwen3"):
        Decoder(make_hf_model("qwen3"))
    with pytest.raises(ConfigError, match="sliding window"):
        Decoder(make_hf_model("mistral"), max_len=32)  # window 8


@pytest.mark.parametrize("scheme", ["w4a16-g128-asym", "w8a16", "nf4"])
def test_fuse_is_the_concatenation_and_shares_the_weights(scheme):
    ckpt = _quantized("llama3", scheme)
    model = tb.from_checkpoint(ckpt, dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    x = torch.randn(3, 1, attn.q_proj.in_features)
    with torch.inference_mode():
        ref = torch.cat([p(x) for p in parts], -1)
        fused = fuse(parts)
        assert fused is not None and fused.out_features == sum(p.out_features for p in parts)
        assert torch.equal(fused(x), ref)
        assert torch.equal(torch.cat([p(x) for p in parts], -1), ref)  # the parts, re-pointed, unchanged
    base = fused.weight_data.untyped_storage().data_ptr()
    assert all(p.weight_data.untyped_storage().data_ptr() == base for p in parts)  # views: held once


def test_fuse_declines_mismatched_layers():
    a = _quantized("llama3", "w4a16-g128-asym")
    b = _quantized("llama3", "w8a16")
    name = "model.layers.0.self_attn.q_proj.weight"
    la, lb = tb.QuantLinear(a.weights[name]), tb.QuantLinear(b.weights[name])
    assert fuse([la, lb]) is None  # different qtypes
    assert fuse([la]) is None
    assert fuse([la, torch.nn.Linear(4, 4)]) is None


@pytest.mark.parametrize("m", [1, 5, 40])
def test_runner_equals_forward(m):
    """`QuantLinear.runner` (no custom-op dispatch, the CPU kernel's bound call) computes what the module
    computes, at decode sizes (C++ kernel) and past its M range (the plan's next backend)."""
    ckpt = _quantized("qwen2", "w4a16-g128-asym")
    lin = tb.QuantLinear(ckpt.weights["model.layers.0.self_attn.q_proj.weight"], torch.randn(256))
    x = torch.randn(m, 256)
    for dtype in (torch.float32, torch.bfloat16):
        run = lin.runner("cpu", dtype)
        with torch.inference_mode():
            assert torch.equal(run(x.to(dtype)), lin(x.to(dtype)))
    assert "torch_cpu_qmatmul" in lin.backend
