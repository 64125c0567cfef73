"""`patch_model` on transformers' tiny Llama from real GPTQ / AWQ / GGUF checkpoints.

Logits of the patched model == transformers over the *producer's own* dequantized weights
(GPTQModel, AutoAWQ, gguf-py) within float32 tolerance, and the same greedy tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import jquant
import torch_bridge as tb
from torch_bridge.parity import run_parity, torch_bridge_leg


def _gptq(bits, group, sym, act):
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint, producer_dequantized

    try:
        p = gptq_checkpoint(bits, group, sym, act, "gptq")
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    return p, producer_dequantized(p)["f32"]


def _awq():
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, awq_checkpoint, producer_dequantized

    try:
        p = awq_checkpoint(128)
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    return p, producer_dequantized(p)["f32"]


def _gguf():
    from tests.fixtures.gguf_files import tiny_gguf

    return tiny_gguf("llama")


SOURCES = {
    "gptq_sym_g128": lambda: _gptq(4, 128, True, False),
    "gptq_asym_g32_actorder": lambda: _gptq(4, 32, False, True),
    "awq_g128": _awq,
    "gguf_llama_mix": _gguf,
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_patched_logits_match_producer(source):
    path, oracle = SOURCES[source]()
    ckpt = jquant.convert(path)
    rep = run_parity(ckpt, oracle=oracle, legs={"torch_bridge": torch_bridge_leg}, new_tokens=6)
    assert all(r.bit_exact for r in rep.weights), str(rep)
    c = rep.comparison("torch_bridge")
    assert c.max_over_std < 1e-5 and c.top1 == 1.0 and c.greedy_equal, str(rep)


def test_patch_report_and_backends():
    path, _ = SOURCES["gptq_asym_g32_actorder"]()
    ckpt = jquant.convert(path)
    model = tb.from_checkpoint(ckpt)
    rep = model.jquant_patch_report
    assert len(rep["quantized"]) == 14 and not rep["unknown"]
    assert "model.norm.weight" in rep["dense"] and "lm_head.weight" in rep["dense"]
    layers = [m for m in model.modules() if isinstance(m, tb.QuantLinear)]
    assert len(layers) == 14 and all(m.weight_perm is not None for m in layers)  # act-order kept as perm
    ids = torch.tensor([[5, 17, 300, 2, 9]])
    with torch.no_grad():
        model(ids[:, :1])  # one decode row: jquant's C++ CPU kernel; dequantize + matmul from M = 33
    assert {m.backend for m in layers} == {"torch_cpu_qmatmul, torch_dequant_matmul"}
    # generate() through transformers' own loop with the KV cache
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 9)


def test_model_is_built_without_weights_and_every_parameter_is_set():
    """from_checkpoint builds the transformers model with its parameters on the meta device, so the
    float weights the quantized layers replace never exist; nothing may stay unset (uninitialized
    storage would be a wrong answer, where transformers' random init used to hide a missing tensor)."""
    path, _ = SOURCES["gguf_llama_mix"]()
    ckpt = jquant.convert(path)
    model = tb.from_checkpoint(ckpt)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    rotary = model.model.rotary_emb  # buffers are computed, not loaded: they must not be left empty
    assert torch.isfinite(rotary.inv_freq).all() and (rotary.inv_freq > 0).all()
    weights = {k: v for k, v in ckpt.weights.items() if k != "model.norm.weight"}
    with pytest.raises(jquant.ConfigError, match="model.norm.weight"):
        tb.from_checkpoint(dataclasses.replace(ckpt, weights=weights))


def test_w8a8_checkpoint_quantizes_activations():
    """compressed-tensors W8A8 (llm-compressor): each layer applies its checkpoint ActQuant."""
    from tests.fixtures.producers_ct import llmcompressor_dir

    ckpt = jquant.convert(llmcompressor_dir() / "W8A8")
    model = tb.from_checkpoint(ckpt)
    assert len(model.jquant_patch_report["input_quant"]) == 14
    weight_only = tb.from_checkpoint(ckpt, act_quant=None)
    ids = torch.tensor([[5, 17, 300, 2, 9, 44]])
    with torch.no_grad():
        a, b = model(ids).logits, weight_only(ids).logits
    # activation quantization changes the function measurably (so it is really applied) but mildly
    d = (a - b).abs().max() / b.std()
    assert 1e-4 < d < 0.2, float(d)
    assert np.isfinite(a.numpy()).all()
