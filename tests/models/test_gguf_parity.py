"""GGUF models in jquant vs transformers loading the same file (``from_pretrained(dir, gguf_file=...)``).

transformers dequantizes every tensor with gguf-py, so its forward is the producer-side oracle of
the file's values; jquant keeps them quantized (codes + scales on device) and must agree.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.models import Generator, from_checkpoint
from jquant.parity import compare_logits, load_transformers_model, transformers_greedy, transformers_logits

pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf_files = pytest.importorskip("tests.fixtures.gguf_files", reason="tests/fixtures/gguf_files.py is absent")

IDS = np.random.default_rng(0).integers(3, 512, size=(1, 20)).astype(np.int32)


@pytest.mark.parametrize("setup", ["llama", "mistral", "qwen2", "qwen3"])
def test_tiny_gguf_type_mix_matches_transformers(setup):
    path, _ = gguf_files.tiny_gguf(setup)  # every canonical GGML type, spread over the layers
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32, strict=True)
    oracle = load_transformers_model(path)
    gen = Generator(model)
    report = compare_logits(gen.logits(IDS), transformers_logits(oracle, IDS))
    assert report.rel <= 1e-3, f"{setup}: {report}"
    assert report.top1_agreement == 1.0, f"{setup}: {report}"
    ours = gen(IDS, max_new_tokens=8)
    assert ours.tolist() == transformers_greedy(oracle, IDS, 8).tolist()


SMOL_PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the ocean.",
    "Explain in one sentence what a neural network is.",
)


@pytest.fixture(scope="module")
def smollm2():
    from jquant.convert.default_model import default_model_path
    from jquant.models.tokenizer import load_tokenizer

    try:
        path = default_model_path()
    except jquant.FormatError as e:
        pytest.skip(str(e))
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32, strict=True)
    return model, Generator(model), load_transformers_model(path), load_tokenizer(path)


@pytest.mark.parametrize("prompt", SMOL_PROMPTS)
def test_smollm2_q4_1_greedy_and_logits_match_transformers(smollm2, prompt):
    from jquant.models.tokenizer import prompt_ids

    model, gen, oracle, tok = smollm2
    ids = prompt_ids(tok, prompt)
    ours = gen(ids, max_new_tokens=16)
    theirs = transformers_greedy(oracle, ids, 16)
    assert ours.tolist() == theirs.tolist(), (tok.decode(ours[0]), tok.decode(theirs[0]))
    full = np.concatenate([ids, ours[:, :-1]], axis=1)  # logits along the whole generated text
    report = compare_logits(gen.logits(full), transformers_logits(oracle, full))
    assert report.rel <= 1e-3, report
    assert report.top1_agreement == 1.0, report


def test_smollm2_answer_is_coherent(smollm2):
    from jquant.models.tokenizer import prompt_ids

    model, gen, _, tok = smollm2
    out = gen(prompt_ids(tok, SMOL_PROMPTS[0]), max_new_tokens=12, eos_token_ids=[tok.eos_token_id])
    assert "Paris" in tok.decode(out[0], skip_special_tokens=True)
