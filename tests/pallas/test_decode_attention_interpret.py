"""The decode attention kernel (`jquant.pallas.decode_attention`) in the Pallas interpreter on CPU,
lowered for CUDA on the CPU host, and in the Llama model against the model's XLA attention.

Oracle: the model's XLA attention written out (`_xla_attention`: masked f32 scores over every slot,
`softmax_with_sinks`, probabilities rounded to the query dtype, f32 PV, ``v_scale``), on a cache
whose slots past each row's position hold zeros. The kernel's cache holds NaN there instead: it
must never read a slot a row cannot see. Shapes straddle the edges: a cache length that is not a
multiple of the block, positions 0 / mid-block / last slot, splits with no visible slot, MHA and
GQA groups of 4 and 8, a sliding window, sink logits, bf16 / fp8 / int8 caches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.core.errors import ConfigError
from jquant.models import from_checkpoint
from jquant.models.attention_sinks import softmax_with_sinks
from jquant.pallas.decode_attention import DecodeAttentionConfig, pallas_decode_attention
from tests.models.hf_tiny import hf_dir


def _xla_attention(q, keys, values, positions, *, window=None, k_scale=None, v_scale=None, sinks=None):
    """`jquant.models.llama.Attention`'s decode path for q [B, kv, g, d] (T = 1): f32 [B, kv, g, d]."""
    d = q.shape[-1]
    slots = jnp.arange(keys.shape[1])
    allowed = slots[None, :] <= positions[:, None]
    if window is not None:
        allowed &= positions[:, None] - slots[None, :] < window
    scores = jnp.einsum("bkgd,bskd->bkgs", q, keys.astype(q.dtype), preferred_element_type=jnp.float32) * d**-0.5
    if k_scale is not None:
        scores = scores * k_scale[None, :, None, None]
    scores = jnp.where(allowed[:, None, None], scores, -1e30)
    probs = softmax_with_sinks(scores[:, :, :, None], sinks)[:, :, :, 0].astype(q.dtype)
    out = jnp.einsum("bkgs,bskd->bkgd", probs, values.astype(q.dtype), preferred_element_type=jnp.float32)
    return out if v_scale is None else out * v_scale[None, :, None, None]


def _case(rng, *, b=3, slots=80, kv=2, g=4, d=64, cache="bf16"):
    q = jnp.asarray(rng.standard_normal((b, kv, g, d)), jnp.bfloat16)
    k = rng.standard_normal((b, slots, kv, d)).astype(np.float32)
    v = rng.standard_normal((b, slots, kv, d)).astype(np.float32)
    scales = None
    if cache == "fp8":
        scales = (rng.uniform(0.5, 2.0, kv).astype(np.float32), rng.uniform(0.5, 2.0, kv).astype(np.float32))
        k, v = (jnp.asarray(a, jnp.float8_e4m3fn) for a in (k, v))
    elif cache == "int8":
        scales = (rng.uniform(0.01, 0.02, kv).astype(np.float32), rng.uniform(0.01, 0.02, kv).astype(np.float32))
        k, v = (jnp.asarray(np.clip(np.round(a * 40), -127, 127), jnp.int8) for a in (k, v))
    else:
        k, v = jnp.asarray(k, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16)
    return q, k, v, scales


def _blind(a, positions, fill):
    """The cache with every slot past each row's position set to ``fill``."""
    future = np.arange(a.shape[1])[None, :] > np.asarray(positions)[:, None]
    out = np.array(a.astype(jnp.float32))
    out[future] = fill
    return jnp.asarray(out, a.dtype)


def _check(q, k, v, positions, *, scales=None, cfg=None, interpret=True, **kw):
    ks, vs = (None, None) if scales is None else (jnp.asarray(scales[0]), jnp.asarray(scales[1]))
    fill = np.nan if jnp.issubdtype(k.dtype, jnp.floating) else 127  # int8 has no NaN: a huge code
    got = pallas_decode_attention(
        q,
        _blind(k, positions, fill),
        _blind(v, positions, fill),
        positions,
        k_scale=ks,
        v_scale=vs,
        cfg=cfg,
        interpret=interpret,
        **kw,
    )
    want = _xla_attention(q, _blind(k, positions, 0), _blind(v, positions, 0), positions, k_scale=ks, v_scale=vs, **kw)
    assert got.dtype == q.dtype
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape and np.isfinite(got).all()
    # bf16 probabilities (rounded before normalizing here, after in XLA) over <= 80 slots
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max(), rtol=0)
    return got


@pytest.mark.parametrize("cache", ["bf16", "fp8", "int8"])
@pytest.mark.parametrize("splits", [1, 3])
def test_matches_the_models_attention(cache, splits):
    rng = np.random.default_rng(len(cache) * 10 + splits)
    q, k, v, scales = _case(rng, cache=cache)
    positions = jnp.asarray([0, 37, 79], jnp.int32)  # first slot, mid-block, last slot of 80
    _check(q, k, v, positions, scales=scales, cfg=DecodeAttentionConfig(block=32, splits=splits))


@pytest.mark.parametrize("g", [1, 8])
def test_group_sizes(g):
    rng = np.random.default_rng(g)
    q, k, v, _ = _case(rng, b=2, kv=2, g=g, d=32, slots=50)
    _check(q, k, v, jnp.asarray([49, 16], jnp.int32), cfg=DecodeAttentionConfig(block=16, splits=2))


@pytest.mark.parametrize("splits", [1, 4])  # 4: splits wholly before the window have no work
def test_sliding_window_and_sinks(splits):
    rng = np.random.default_rng(7)
    q, k, v, scales = _case(rng, slots=96, cache="fp8")
    positions = jnp.asarray([5, 40, 95], jnp.int32)
    sinks = jnp.asarray(rng.standard_normal(2 * 4), jnp.float32)
    cfg = DecodeAttentionConfig(block=16, splits=splits)
    _check(q, k, v, positions, scales=scales, window=12, sinks=sinks, cfg=cfg)


def test_rejects_what_it_cannot_run():
    q = jnp.zeros((1, 2, 4, 96), jnp.bfloat16)
    with pytest.raises(ValueError, match="head_dim 96"):
        pallas_decode_attention(q, jnp.zeros((1, 8, 2, 96), jnp.bfloat16), jnp.zeros((1, 8, 2, 96)), jnp.zeros(1))
    q = jnp.zeros((1, 2, 4, 64), jnp.float32)
    with pytest.raises(ValueError, match="query dtype float32"):
        pallas_decode_attention(q, jnp.zeros((1, 8, 2, 64)), jnp.zeros((1, 8, 2, 64)), jnp.zeros(1))


@pytest.mark.parametrize("cache, slots", [("bf16", 4096), ("fp8", 4096), ("int8", 4096), ("bf16", 256)])
def test_lowers_for_cuda(cache, slots):
    # 4096 slots: 16 splits merged by XLA; 256: one split, normalized and stored by the kernel
    q, k, v, scales = _case(np.random.default_rng(0), b=1, slots=slots, kv=8, d=128, cache=cache)
    ks = None if scales is None else jnp.asarray(scales[0])
    f = jax.jit(lambda q, k, v, p: pallas_decode_attention(q, k, v, p, k_scale=ks, v_scale=ks))
    text = f.trace(q, k, v, jnp.zeros(1, jnp.int32)).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 1, "one kernel per call"
    # the whole cache goes in as stored: fp8 codes are not converted outside the kernel
    assert f"tensor<1x{slots}x8x128x{dict(fp8='f8E4M3FN', int8='i8').get(cache, 'bf16')}>" in text
    call = next(line for line in text.splitlines() if "__gpu$xla.gpu.triton" in line)
    assert call.endswith("-> tensor<1x8x4x128xbf16>") == (slots == 256), call[-200:]


def teacher_forced_logits(model, prompt: list[int], steps: list[int]) -> np.ndarray:
    """f32 [len(steps), vocab]: the prompt prefilled through a cache, then ``steps`` fed one token
    at a time (the same tokens for every attention kind: no greedy near-tie can make them diverge)."""
    cache = model.init_cache(1, 32)
    _, cache = model(jnp.asarray([prompt], jnp.int32), cache)
    out = []
    for tok in steps:
        logits, cache = model(jnp.asarray([[tok]], jnp.int32), cache)
        out.append(np.asarray(logits[0, -1], np.float32))
    return np.stack(out)


@pytest.mark.parametrize(
    "arch, kv_cache_dtype", [("llama3", "auto"), ("llama3", "fp8_e4m3"), ("llama3", "int8"), ("mistral", "auto")]
)
def test_model_decode_with_the_kernel(arch, kv_cache_dtype):
    model = from_checkpoint(jquant.convert(hf_dir(arch)), dtype=jnp.bfloat16, kv_cache_dtype=kv_cache_dtype)
    prompt, steps = [5, 17, 99, 3, 250, 7, 8, 9, 10, 11], [40, 2, 77, 301, 9, 123]  # past mistral's window of 8
    runs = {}
    for kind in ("xla", "pallas-interpret"):
        model.set_decode_attention(kind)
        step = jax.make_jaxpr(lambda ids, c: model(ids, c))(jnp.zeros((1, 1), jnp.int32), model.init_cache(1, 32))
        assert ("pallas_call" in str(step)) == (kind != "xla")  # the decode step really runs the kernel
        runs[kind] = teacher_forced_logits(model, prompt, steps)
    want, got = runs["xla"], runs["pallas-interpret"]
    assert np.isfinite(got).all()
    tol = 0.03 * np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.8
    # the tolerance catches attention over the wrong slots: a one-token context moves logits beyond it
    model.set_decode_attention("xla")
    assert np.abs(teacher_forced_logits(model, prompt[:1], steps) - want).max() > tol


def test_model_refuses_what_the_kernel_cannot_run():
    model = from_checkpoint(jquant.convert(hf_dir("qwen3")), dtype=jnp.bfloat16)  # head_dim 96
    with pytest.raises(ConfigError, match="head_dim 96"):
        model.set_decode_attention("pallas-interpret")
    with pytest.raises(ConfigError, match="runs on a GPU"):
        model.set_decode_attention("pallas")
    with pytest.raises(ConfigError, match="expected"):
        model.set_decode_attention("flash")
