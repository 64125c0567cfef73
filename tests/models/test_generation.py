"""Sampling rules, model construction errors, and weights staying quantized on device."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.core import QArray
from jquant.models import SamplingConfig, from_checkpoint
from jquant.models.generate import model_bytes, sample
from jquant.nn import QParam

LOGITS = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.1, 0.8]], jnp.float32))


def _draws(cfg, n=200):
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jax.vmap(lambda k: sample(LOGITS, k, cfg))(keys))  # [n, 2]


def test_greedy_is_argmax():
    assert sample(LOGITS, jax.random.key(0), SamplingConfig()).tolist() == [0, 3]


def test_top_p_keeps_the_nucleus_only():
    d = _draws(SamplingConfig(temperature=1.0, top_p=0.7))
    assert set(d[:, 0]) == {0, 1}  # 0.5 + 0.3 reaches 0.7; token 2 and 3 never drawn
    assert set(d[:, 1]) == {3}  # 0.8 alone reaches 0.7


def test_top_k_and_temperature():
    d = _draws(SamplingConfig(temperature=1.0, top_k=3))
    assert set(d[:, 0]) == {0, 1, 2}
    hot = _draws(SamplingConfig(temperature=100.0), n=400)
    assert set(hot[:, 0]) == {0, 1, 2, 3}  # near-uniform at a high temperature


def test_unsupported_architecture_and_missing_fields():
    ck = jquant.Checkpoint("unquantized", {"model_type": "gpt2"}, {})
    with pytest.raises(jquant.UnsupportedFormatError, match="model_type 'gpt2'"):
        from_checkpoint(ck)
    ck = jquant.Checkpoint("unquantized", {"model_type": "llama", "vocab_size": 8}, {})
    with pytest.raises(jquant.ConfigError, match="hidden_size"):
        from_checkpoint(ck)


@pytest.fixture(scope="module")
def tiny_gguf_ckpt():
    gguf_files = pytest.importorskip("tests.fixtures.gguf_files", reason="tests/fixtures/gguf_files.py is absent")
    return jquant.convert(gguf_files.tiny_gguf("qwen2")[0])


def test_weights_stay_quantized_on_device(tiny_gguf_ckpt):
    model = from_checkpoint(tiny_gguf_ckpt, dtype=jnp.float32, strict=True)
    qs = jax.tree.leaves(nnx.state(model, QParam), is_leaf=lambda v: isinstance(v, QArray))
    n_quant = sum(isinstance(q, QArray) for q in qs)
    assert n_quant == len(tiny_gguf_ckpt.quantized()) > 10
    assert all(isinstance(q.data, jax.Array) for q in qs if isinstance(q, QArray))
    held, bf16 = model_bytes(model)
    assert held < 0.6 * bf16  # mostly 2-8 bit weights (and f32 norms)
    n_params = sum(
        (q.shape[0] * q.shape[1] if isinstance(q, QArray) else q.size)
        for q in jax.tree.leaves(tiny_gguf_ckpt.weights, is_leaf=lambda v: isinstance(v, QArray))
    )
    assert bf16 == 2 * n_params


def test_unused_tensor_is_reported(tiny_gguf_ckpt):
    ck = dataclasses.replace(tiny_gguf_ckpt, weights={**tiny_gguf_ckpt.weights, "model.extra.weight": np.zeros(3)})
    with pytest.raises(jquant.FormatError, match="model.extra.weight"):
        from_checkpoint(ck, strict=True)
    with pytest.warns(UserWarning, match="not used"):
        from_checkpoint(ck)


def test_model_bytes_counts_stacked_quantized_layers():
    producers_ct = pytest.importorskip("tests.fixtures.producers_ct", reason="tests/fixtures/producers_ct.py absent")
    ckpt = jquant.convert(producers_ct.llmcompressor_dir() / "W4A16")
    model = from_checkpoint(ckpt, dtype=jnp.float32)
    assert model.stacked_layers is not None  # every layer int4 g128: stacked under lax.scan
    held, bf16 = model_bytes(model)
    n_params = sum(
        (w.shape[0] * w.shape[1] if isinstance(w, QArray) else w.size)
        for w in jax.tree.leaves(ckpt.weights, is_leaf=lambda v: isinstance(v, QArray))
    )
    assert bf16 == 2 * n_params
    assert held == sum(w.nbytes if isinstance(w, QArray) else 4 * w.size for w in jax.tree.leaves(
        ckpt.weights, is_leaf=lambda v: isinstance(v, QArray)))  # fmt: skip
