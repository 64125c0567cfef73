"""Batched prompts of different lengths (issue 18): each row of a batch gives what it gives alone.

`Generator` right-pads a ragged batch and keeps one cache length per row (`jquant.models.generate`),
so row r attends over the same keys, in the same slots, at the same RoPE positions as its
single-prompt run. The oracle is that single-prompt run: greedy tokens identical, logits equal up
to the matmuls' batch-size rounding (f32 on CPU), per-row sampling streams identical per seed.
Prompt lengths straddle the edge cases: 1 token, a length past Mistral's sliding window (8), the
longest setting the padding of the others.
"""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.models import Generator, SamplingConfig, from_checkpoint
from tests.models.hf_tiny import hf_dir

LENGTHS = (5, 1, 17, 9)
N_NEW = 10
# measured 5e-7 .. 8e-7 of the largest |logit| (f32 and int8 caches): XLA:CPU's f32 dot rounds a
# little differently for a batch of 4 rows than for 1
LOGIT_TOL = 1e-5


def _prompts(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def gens() -> dict[str, Generator]:
    """One `Generator` per architecture for the module: its compilations are shared by the tests."""
    return {}


def _gen(gens, arch: str) -> Generator:
    if arch not in gens:
        gens[arch] = Generator(from_checkpoint(jquant.convert(hf_dir(arch)), dtype=jnp.float32))
    return gens[arch]


@pytest.fixture(params=["llama3", "mistral"])  # mistral: sliding window 8, shorter than the longest prompt
def gen(gens, request) -> Generator:
    return _gen(gens, request.param)


@pytest.fixture
def llama_gen(gens) -> Generator:
    return _gen(gens, "llama3")


def _run(gen, prompts, **kw):
    """(int32 [B, n] tokens, float32 [n, B, vocab] logits of each step)."""
    logits = []
    tokens = gen(prompts, max_new_tokens=N_NEW, on_logits=logits.append, **kw)
    return tokens, np.stack(logits)


def test_greedy_batch_equals_each_prompt_alone(gen):
    prompts = _prompts(gen.model.config.vocab_size)
    tokens, logits = _run(gen, prompts)
    assert tokens.shape == (len(prompts), N_NEW)
    assert len({tuple(t) for t in tokens.tolist()}) == len(prompts)  # the rows really differ
    for r, p in enumerate(prompts):
        alone, alone_logits = _run(gen, [p])
        assert tokens[r].tolist() == alone[0].tolist(), f"row {r} (prompt of {len(p)} tokens)"
        err = np.abs(logits[:, r] - alone_logits[:, 0]).max() / np.abs(alone_logits).max()
        assert err < LOGIT_TOL, f"row {r}: max |batched - alone| / max |logit| = {err:.2e}"


def test_quantized_gguf_batch_equals_alone():
    """A GGUF of mixed quantized types (Q8_0 / Q4_0 / K-quants / IQ4_XS / MXFP4, q/k/v biases): the
    matmuls run quantized kernels at M = 4 x 32 and 4 rows vs 32 and 1 rows."""
    gguf_files = pytest.importorskip("tests.fixtures.gguf_files", reason="tests/fixtures/gguf_files.py is absent")
    g = Generator(from_checkpoint(jquant.convert(gguf_files.tiny_gguf("qwen2")[0]), dtype=jnp.float32))
    prompts = _prompts(g.model.config.vocab_size, seed=5)
    tokens, logits = _run(g, prompts)
    for r, p in enumerate(prompts):
        alone, alone_logits = _run(g, [p])
        assert tokens[r].tolist() == alone[0].tolist(), r
        err = np.abs(logits[:, r] - alone_logits[:, 0]).max() / np.abs(alone_logits).max()
        assert err < LOGIT_TOL, f"row {r}: {err:.2e}"


def test_ragged_full_forward_logits_equal_each_prompt_alone(gen):
    prompts = _prompts(gen.model.config.vocab_size, seed=1)
    batched = gen.logits(prompts)
    assert batched.shape[:2] == (len(prompts), max(LENGTHS))
    for r, p in enumerate(prompts):
        alone = gen.logits([p])[0]
        np.testing.assert_allclose(batched[r, : len(p)], alone, atol=LOGIT_TOL * np.abs(alone).max(), rtol=0)


def test_sampling_per_row_seed_equals_alone(llama_gen):
    gen, sampling = llama_gen, SamplingConfig(temperature=0.8, top_p=0.9, top_k=20)
    p = _prompts(gen.model.config.vocab_size, seed=2)
    prompts, seeds = [p[0], p[1], p[2], p[0]], [11, 12, 13, 11]  # the first prompt twice, with one seed
    tokens = gen(prompts, max_new_tokens=N_NEW, sampling=sampling, seed=seeds)
    for r in range(3):
        alone = gen([prompts[r]], max_new_tokens=N_NEW, sampling=sampling, seed=seeds[r])
        assert tokens[r].tolist() == alone[0].tolist(), r
    assert tokens[3].tolist() == tokens[0].tolist()  # same prompt, same seed: same draws
    other = gen([prompts[0]], max_new_tokens=N_NEW, sampling=sampling, seed=14)
    assert other[0].tolist() != tokens[0].tolist()  # another seed draws otherwise: sampling is really on


def test_each_row_stops_on_its_own(gen):
    prompts = _prompts(gen.model.config.vocab_size, seed=3)
    full = gen(prompts, max_new_tokens=N_NEW)
    eos = int(full[1, 3])  # row 1's 4th token becomes an end token
    first = [int(np.flatnonzero(row == eos)[0]) + 1 if eos in row else N_NEW for row in full]
    limits = [N_NEW, N_NEW, 4, 7]
    want = [min(f, m) for f, m in zip(first, limits)]
    streamed = []
    out = gen.completions(prompts, max_new_tokens=limits, eos_token_ids=[eos], on_token=streamed.append)
    assert [len(o) for o in out] == want and want[1] <= 4
    for r, o in enumerate(out):
        assert o.tolist() == full[r, : want[r]].tolist(), r  # the batch around a stopped row is unchanged
    padded = gen(prompts, max_new_tokens=limits, eos_token_ids=[eos], pad_id=-7)
    assert padded.shape == (4, max(want))
    for r, n in enumerate(want):
        assert padded[r, :n].tolist() == out[r].tolist() and (padded[r, n:] == -7).all()
    assert len(streamed) == max(want) and (np.stack(streamed, 1)[:, : max(want)] == padded.clip(-1)).all()


def test_bad_prompts_and_per_row_arguments_are_named(gen):
    with pytest.raises(ValueError, match=r"prompt_ids\[1\] must be a non-empty"):
        gen([[1, 2], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int or 2 ints"):
        gen([[1, 2], [3]], max_new_tokens=[2, 3, 4])
    with pytest.raises(ValueError, match="seed must be an int or 2 ints"):
        gen([[1, 2], [3]], seed=[1])
    with pytest.raises(ValueError, match=r"prompt_ids\[0\] must hold integer"):
        gen([[1.5, 2.0]])
    assert gen([[1, 2], [3]], max_new_tokens=0).shape == (2, 0)


def test_int8_kv_cache_batch_equals_alone_with_fixed_scales(llama_gen):
    """A quantized cache with constant (or checkpoint) scales: every row's codes equal its codes alone."""
    model = from_checkpoint(
        jquant.convert(hf_dir("llama3")), dtype=jnp.float32, kv_cache_dtype="int8", kv_cache_scales=0.01
    )
    g = Generator(model)
    prompts = _prompts(model.config.vocab_size, seed=4)
    tokens, logits = _run(g, prompts)
    plain, plain_logits = _run(llama_gen, prompts)
    effect = np.abs(logits[0] - plain_logits[0]).max() / np.abs(plain_logits[0]).max()  # first step: same tokens in
    assert effect > 100 * LOGIT_TOL, effect  # the int8 cache is really in use (measured 1.1e-2 of the largest logit)
    for r, p in enumerate(prompts):
        alone, alone_logits = _run(g, [p])
        assert tokens[r].tolist() == alone[0].tolist(), r
        err = np.abs(logits[:, r] - alone_logits[:, 0]).max() / np.abs(alone_logits).max()
        assert err < LOGIT_TOL, f"row {r}: {err:.2e}"


def test_int8_kv_prefill_scales_span_the_batch():
    """Scales computed on the first prefill cover the whole batch (as vLLM's ``calc_kv_scales``), so a
    batched row need not equal its run alone. With right padding, layer 0's keys of each row are
    those of its run alone, so layer 0's scale is the largest of the rows' scales alone; a row whose
    own scale is smaller gets other codes, and from layer 1 on even its keys differ."""
    model = from_checkpoint(jquant.convert(hf_dir("llama3")), dtype=jnp.float32, kv_cache_dtype="int8")
    assert model.kv_quant.source == "prefill"
    prompts = _prompts(model.config.vocab_size, seed=4)
    forward = nnx.jit(lambda m, ids, c: m(ids, c))

    def k_scales(batch):  # f32 [layers, kv_heads] after a prefill of the right-padded batch
        ids = np.zeros((len(batch), 32), np.int32)
        for i, p in enumerate(batch):
            ids[i, : len(p)] = p
        _, cache = forward(model, jnp.asarray(ids), model.init_cache(len(batch), 128))
        return np.stack([np.asarray(s) for s in cache.k_scale])

    batched = k_scales(prompts)
    alone = np.stack([k_scales([p]) for p in prompts])  # [B, layers, kv_heads]
    np.testing.assert_allclose(batched[0], alone[:, 0].max(0), rtol=1e-6)
    assert (alone[:, 0].min(0) < 0.99 * batched[0]).any()
    assert not np.allclose(batched[1:], alone[:, 1:].max(0), rtol=1e-6, atol=0)


def test_cli_generate_batch_of_prompts(llama_gen, tmp_path, capsys):
    """Two ``--prompt`` values and a ``--prompts-file`` run as one batch of 3 prompts of different
    lengths; each printed completion is the one the `Generator` gives that prompt alone."""
    from jquant.cli import main
    from jquant.convert.tokenizer import end_token_ids, load_tokenizer
    from jquant.models.tokenizer import prompt_ids

    folder = str(hf_dir("llama3"))
    (tmp_path / "prompts.txt").write_text("t11\n\n  \nt12 t13 t14 t15 t16\n")
    prompts = ["t5 t6 t7", "t9 t10", "t11", "t12 t13 t14 t15 t16"]
    rc = main([
        "generate", folder, "--prompt", prompts[0], "--prompt", prompts[1], "--prompts-file",
        str(tmp_path / "prompts.txt"), "--no-chat", "--max-new-tokens", "6", "--dtype", "float32",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    heads = re.findall(r"^--- prompt (\d)/4: '(.*)' \((\d+) tokens\)$", out, re.M)
    assert [(int(i), p) for i, p, _ in heads] == list(enumerate(prompts, 1)), out
    assert len({n for *_, n in heads}) >= 3  # prompts of different lengths
    texts = re.split(r"^--- prompt \d/4: .*\n", out, flags=re.M)[1:]
    tok = load_tokenizer(folder)
    eos = end_token_ids(tok, folder, llama_gen.model.config.eos_token_ids)
    for p, text in zip(prompts, texts):
        alone = llama_gen.completions(prompt_ids(tok, p, chat=False), max_new_tokens=6, eos_token_ids=eos)[0]
        assert len(alone) >= 1 and text.rstrip("\n") == tok.decode(alone.tolist(), skip_special_tokens=True), p
    assert "4 prompts of" in err and "x 4 rows" in err and "tokens/s" in err and "per prompt)" in err


def test_cli_empty_prompts_file_is_an_error(tmp_path, capsys):
    from jquant.cli import main

    (tmp_path / "empty.txt").write_text("\n \n")
    rc = main(["generate", str(hf_dir("llama3")), "--prompts-file", str(tmp_path / "empty.txt")])
    assert rc == 2 and "--prompts-file holds no prompt" in capsys.readouterr().err


def test_next_step_is_dispatched_before_the_token_is_read():
    """The loop dispatches step n + 1 before reading token n back (host work overlaps the device's). A
    stop by count is known ahead, so it costs no extra step; an end-token stop costs exactly one, and
    the tokens are those of the loop that never runs ahead."""
    model = from_checkpoint(jquant.quantize(hf_dir("llama3"), "w4a16-g128-asym"), dtype=jnp.float32)
    gen = Generator(model)
    calls, step = [], gen._step
    gen._step = lambda *a, **kw: (calls.append(1), step(*a, **kw))[1]
    prompt = [[5, 9, 2, 77]]
    out = gen(prompt, max_new_tokens=6)
    assert out.shape == (1, 6) and len(calls) == 5  # tokens 2..6; none past the count
    end = int(out[0, 2])
    first = out[0].tolist().index(end)  # the end token's first appearance (0, 1 or 2)
    calls.clear()
    cut = gen(prompt, max_new_tokens=6, eos_token_ids=[end])
    np.testing.assert_array_equal(cut[0], out[0, : first + 1])
    assert len(calls) == first + 1  # the last one ran ahead and was dropped


@pytest.mark.parametrize("arch", ["llama3", "mistral"])  # mistral: its sliding window (8) spans chunk edges
def test_chunked_prefill_equals_one_pass(gens, arch):
    """Prompts longer than ``prefill_chunk`` run through the cache a chunk at a time: the same tokens,
    logits equal up to f32 summation order, for a ragged batch whose rows end in different chunks."""
    one_pass = _gen(gens, arch)
    chunked = Generator(one_pass.model, prefill_chunk=32)
    prompts = _prompts(one_pass.model.config.vocab_size, lengths=(70, 5, 33, 64), seed=7)
    for batch in (prompts, [prompts[0]]):
        want, want_logits = _run(one_pass, batch)
        got, got_logits = _run(chunked, batch)
        assert got.tolist() == want.tolist()
        err = np.abs(got_logits - want_logits).max() / np.abs(want_logits).max()
        assert err < LOGIT_TOL, f"max |chunked - one pass| / max |logit| = {err:.2e}"
    with pytest.raises(ValueError, match="multiple of 32"):
        Generator(one_pass.model, prefill_chunk=48)


def test_chunked_prefill_with_a_quantized_cache(gens):
    """An fp8 KV cache with fixed (checkpoint-style) scales: chunked prefill writes the same codes."""
    from jquant.models.kv_quant import KVQuant

    base = _gen(gens, "llama3").model
    c = base.config
    scales = tuple((0.02,) * c.num_key_value_heads for _ in range(c.num_hidden_layers))
    model = nnx.clone(base)
    model.kv_quant = KVQuant("fp8_e4m3", scales, scales, "constant")
    prompts = _prompts(c.vocab_size, lengths=(70, 40), seed=8)
    want, want_logits = _run(Generator(model, prefill_chunk=None), prompts)
    got, got_logits = _run(Generator(model, prefill_chunk=32), prompts)
    assert got.tolist() == want.tolist()
    assert np.abs(got_logits - want_logits).max() / np.abs(want_logits).max() < LOGIT_TOL
