"""jquant's Llama-family decoder vs transformers on tiny random f32 models of each architecture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.models import Generator, from_checkpoint
from tests.models.hf_tiny import ARCHS, hf_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IDS = np.random.default_rng(0).integers(0, 512, size=(2, 24)).astype(np.int32)


def hf_logits(folder, ids):
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return m, m(torch.from_numpy(ids).long()).logits.numpy()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
    folder = hf_dir(request.param)
    hf, ref = hf_logits(folder, IDS)
    model = from_checkpoint(jquant.convert(folder), dtype=jnp.float32, strict=True)
    return request.param, folder, hf, ref, model


def test_logits_match_transformers(arch):
    name, _, _, ref, model = arch
    out = np.asarray(model(jnp.asarray(IDS)))
    assert out.shape == ref.shape == (2, 24, 512)
    rel = np.abs(out - ref).max() / ref.std()
    assert rel < 1e-4, f"{name}: max|diff|/std = {rel:.2e}"
    assert (out.argmax(-1) == ref.argmax(-1)).mean() == 1.0


def test_kv_cache_decode_equals_full_forward(arch):
    name, _, _, _, model = arch
    full = np.asarray(model(jnp.asarray(IDS)))
    step = nnx.jit(lambda m, ids, c: m(ids, c))  # the same call under nnx.jit (one compile per shape)
    cache = model.init_cache(2, 32)
    pre, cache = step(model, jnp.asarray(IDS[:, :10]), cache)
    steps = [np.asarray(pre)]
    for t in range(10, 24):
        lg, cache = step(model, jnp.asarray(IDS[:, t : t + 1]), cache)
        steps.append(np.asarray(lg))
    inc = np.concatenate(steps, axis=1)
    assert int(cache.length) == 24
    np.testing.assert_allclose(inc, full, atol=1e-4 * full.std(), rtol=0, err_msg=name)


def test_greedy_generation_matches_transformers(arch):
    name, _, hf, _, model = arch
    prompt = IDS[:1, :12]
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(prompt).long(), max_new_tokens=12, do_sample=False, eos_token_id=None)
    ref = ref[0, 12:].numpy()
    streamed = []
    got = Generator(model)(prompt, max_new_tokens=12, on_token=streamed.append)
    assert got.shape == (1, 12)
    assert np.concatenate(streamed).tolist() == got[0].tolist()
    assert got[0].tolist() == ref.tolist(), name


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_bfloat16_model_is_close_to_float32_transformers(name):
    """The accelerator default dtype (bf16 activations and float weights) runs and stays close."""
    from jquant.parity import compare_logits

    folder = hf_dir(name)
    model = from_checkpoint(jquant.convert(folder), dtype=jnp.bfloat16)
    floats = [a for a in jax.tree.leaves(nnx.state(model)) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.bfloat16 for a in floats)
    out = Generator(model).logits(IDS)
    report = compare_logits(out, hf_logits(folder, IDS)[1])
    assert report.rel < 0.1 and report.top1_agreement >= 0.9, report


def test_scanned_and_unrolled_layers_agree():
    """Identical layers run stacked under lax.scan by default; the unrolled form gives the same logits."""
    ckpt = jquant.convert(hf_dir("qwen2"))
    scanned = from_checkpoint(ckpt, dtype=jnp.float32)
    unrolled = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False)
    assert scanned.stacked_layers is not None and scanned.layers is None
    assert unrolled.layers is not None and len(unrolled.layers) == 2
    a, b = Generator(scanned), Generator(unrolled)
    np.testing.assert_allclose(a.logits(IDS), b.logits(IDS), rtol=1e-5, atol=1e-5)
    assert a(IDS[:1, :8], max_new_tokens=6).tolist() == b(IDS[:1, :8], max_new_tokens=6).tolist()


def test_mixed_layer_types_stay_unrolled():
    gguf_files = pytest.importorskip("tests.fixtures.gguf_files", reason="tests/fixtures/gguf_files.py is absent")
    ckpt = jquant.convert(gguf_files.tiny_gguf("llama")[0])  # GGML types differ from layer to layer
    assert from_checkpoint(ckpt).stacked_layers is None
    with pytest.raises(jquant.ConfigError, match="scan_layers=True"):
        from_checkpoint(ckpt, scan_layers=True)
