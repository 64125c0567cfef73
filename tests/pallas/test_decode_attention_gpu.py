"""The decode attention kernel compiled for the GPU (skipped on CPU CI): the interpreter tests' cases
(`tests.pallas.test_decode_attention_interpret`) on the real kernel, and the model with it against
the model's XLA attention."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.models import from_checkpoint
from jquant.pallas.decode_attention import DecodeAttentionConfig
from tests.models.hf_tiny import hf_dir
from tests.pallas.test_decode_attention_interpret import _case, _check, teacher_forced_logits

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cache", ["bf16", "fp8", "int8"])
@pytest.mark.parametrize("block, splits", [(32, 1), (64, 3), (16, 8)])
def test_matches_the_models_attention(cache, block, splits):
    rng = np.random.default_rng(block + splits)
    q, k, v, scales = _case(rng, slots=200, kv=8, g=4, d=128, cache=cache)
    positions = jnp.asarray([0, 117, 199], jnp.int32)
    cfg = DecodeAttentionConfig(block=block, splits=splits)
    _check(q, k, v, positions, scales=scales, cfg=cfg, interpret=False)
    _check(q, k, v, positions, scales=scales, cfg=cfg, interpret=False, window=50)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3"])
def test_model_decode_with_the_kernel(kv_cache_dtype):
    model = from_checkpoint(jquant.convert(hf_dir("mistral")), dtype=jnp.bfloat16, kv_cache_dtype=kv_cache_dtype)
    prompt, steps = [5, 17, 99, 3, 250, 7, 8, 9, 10, 11], [40, 2, 77, 301, 9, 123]  # past the window of 8
    runs = {}
    for kind in ("xla", "pallas"):
        model.set_decode_attention(kind)
        runs[kind] = teacher_forced_logits(model, prompt, steps)
    want, got = runs["xla"], runs["pallas"]
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max(), rtol=0)
