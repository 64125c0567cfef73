"""q/k/v and gate/up stacked into one matmul each (`fuse_projections`) compute the same model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.core.concat import why_not_concat
from jquant.models import Generator, from_checkpoint
from jquant.parity import compare_logits

gptq_awq = pytest.importorskip(
    "tests.fixtures.producers_gptq_awq", reason="tests/fixtures/producers_gptq_awq.py absent"
)


def _ct(scheme: str):
    producers_ct = pytest.importorskip("tests.fixtures.producers_ct")
    return producers_ct.llmcompressor_dir() / scheme


IDS = np.random.default_rng(1).integers(3, 512, size=(1, 12)).astype(np.int32)


@pytest.mark.parametrize(
    "name, make",
    [
        ("gptq-b4-g128-sym", lambda: gptq_awq.gptq_checkpoint(4, 128, True, False, "gptq")),
        # act-order: q/k/v (and gate/up) share their input, hence GPTQ's Hessian and permutation
        ("gptq-b4-g32-asym-actorder", lambda: gptq_awq.gptq_checkpoint(4, 32, False, True, "gptq")),
        # W8A8: q/k/v share one dynamic per-token fp8 recipe, so the fused matmul quantizes x identically
        ("ct-fp8-dynamic", lambda: _ct("FP8_DYNAMIC")),
        ("ct-w8a8-int8", lambda: _ct("W8A8")),
    ],
)
def test_fused_projections_match_separate_ones(name, make):
    try:
        folder = make()
    except gptq_awq.ProducerUnavailable as e:
        pytest.skip(str(e))
    ckpt = jquant.convert(folder)
    p = "model.layers.0"
    qkv = [ckpt.weights[f"{p}.self_attn.{n}_proj.weight"] for n in "qkv"]
    gate_up = [ckpt.weights[f"{p}.mlp.{n}_proj.weight"] for n in ("gate", "up")]
    assert why_not_concat(qkv) == "" and why_not_concat(gate_up) == "", name  # both stack here
    fused = from_checkpoint(ckpt, dtype=jnp.float32, strict=True)
    separate = from_checkpoint(ckpt, dtype=jnp.float32, strict=True, fuse_projections=False)
    layer = fused.stacked_layers if fused.stacked_layers is not None else fused.layers[0]
    assert layer.self_attn.qkv_proj is not None and layer.self_attn.q_proj is None, name
    assert layer.mlp.gate_up_proj is not None and layer.mlp.gate_proj is None, name
    s_layer = separate.stacked_layers if separate.stacked_layers is not None else separate.layers[0]
    assert s_layer.self_attn.qkv_proj is None and s_layer.mlp.gate_up_proj is None
    assert (layer.self_attn.qkv_proj.input_quant is None) == (f"{p}.self_attn.q_proj.input_quant" not in ckpt.weights)
    report = compare_logits(Generator(fused).logits(IDS), Generator(separate).logits(IDS))
    assert report.rel <= 1e-5 and report.top1_agreement == 1.0, f"{name}: {report}"
