"""Autoregressive generation: jit-compiled prefill and decode step over a `KVCache`, with sampling.

The model is split once (``nnx.split``) into a graph and a state pytree; prefill and the decode
step are pure functions of (state, tokens, cache, keys), compiled by ``jax.jit`` with the cache
donated, so each step updates the cache in place. Prompts are padded to a bucket of
`PROMPT_BUCKET` tokens and caches to `CACHE_BUCKET` slots, so prompts of similar length share
one compilation. Padded slots are harmless: they hold positions at or past the cache length,
which attention masks as future, and decoding overwrites them.

A batch of prompts of different lengths is **right-padded**: row r's prompt fills cache slots
``[0, n_r)`` at positions ``0 .. n_r - 1``, exactly where it sits when run alone, and the cache
keeps one length per row (``KVCache.length`` int32 [B]). Each decode step writes row r's token at
slot ``length[r]`` (one scatter) and attends with a per-row causal mask, so every row sees the same
keys, in the same slots, with the same RoPE positions as its single-prompt run: batched logits
equal single-prompt logits up to the matmuls' batch-size-dependent rounding (CPU f32: <= 1e-6 of
the largest logit, greedy tokens identical; `tests/models/test_batched_generation.py`). Left
padding would instead shift each row's keys by its pad length, changing the softmax's summation
order. Prompts of one length keep a scalar length (one ``dynamic_update_slice`` per step, as
before).

Each row samples with its own PRNG stream (``jax.random.key(seed_r)``, split once per step), so a
row with seed s draws the tokens it draws alone with seed s, whatever the batch around it. Rows
stop on their own (an end token or their own ``max_new_tokens``); a finished row still runs through
the batched step until every row is done, but its output is cut at its stop.

A quantized KV cache (`jquant.models.kv_quant`) whose scales come from the first prefill computes
them over the whole batch (``amax`` over every row and the padding), so a batched row's codes can
differ from its codes alone; checkpoint or constant scales (``kv_cache_scales``) keep them equal.

Prompts longer than ``prefill_chunk`` tokens (`PREFILL_CHUNK` by default) are prefilled in chunks:
each chunk attends over the cache written so far and its own causal block, so the logits equal the
one-pass prefill's up to f32 summation order, with attention memory bounded by the chunk. A
quantized cache without checkpoint scales then takes them from the first chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "SamplingConfig",
    "sample",
    "Generator",
    "generate",
    "model_bytes",
    "PROMPT_BUCKET",
    "CACHE_BUCKET",
    "PREFILL_CHUNK",
]

PROMPT_BUCKET = 32
CACHE_BUCKET = 128
# Prompts longer than this run through the cache in chunks of this many tokens: attention's f32
# scores of one chunk are [B, heads, chunk, S], where a whole 16k prompt's would be [B, heads, 16k,
# 16k] (32 GiB per layer for Llama-3-8B's 32 heads). A multiple of PROMPT_BUCKET.
PREFILL_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is picked from the logits.

    Attributes:
        temperature: 0 for greedy (argmax); else logits are divided by it before sampling.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
        top_k: keep the k most likely tokens (0: all).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sample(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Next tokens int32 [B] from float logits [B, vocab]."""
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / cfg.temperature
    if cfg.top_k > 0:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop_sorted = (jnp.cumsum(probs, axis=-1) - probs) >= cfg.top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _sample_rows(logits: jax.Array, keys: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Next tokens int32 [B] from logits [B, vocab], row r drawn with its own key ``keys[r]``."""
    if cfg.greedy:
        return sample(logits, keys[0], cfg)
    return jax.vmap(lambda row, key: sample(row[None], key, cfg)[0])(logits, keys)


def _split_rows(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(next keys, keys to draw with now), both [B]: one ``jax.random.split`` per row."""
    both = jax.vmap(jax.random.split)(keys)  # [B, 2]
    return both[:, 0], both[:, 1]


def _first_tokens(model, last, lengths, cache, keys, sampling):
    """End of a prefill: (tokens, logits, keys, cache) from the hidden states ``last`` [B, hidden] at
    each row's last prompt token. Slots past each prompt were padding: the cache's length becomes
    ``lengths`` (a scalar when every prompt has it)."""
    cache = dataclasses.replace(cache, length=lengths)
    logits = model.logits(last)
    keys, now = _split_rows(keys)
    return _sample_rows(logits, now, sampling), logits, keys, cache


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _as_rows(prompt_ids, what: str = "prompt_ids") -> list[np.ndarray]:
    """The prompts as a list of int32 [n_r] arrays (n_r >= 1), from int [B, T] or B sequences."""
    if isinstance(prompt_ids, np.ndarray) or hasattr(prompt_ids, "shape"):
        ids = np.asarray(prompt_ids)
        if ids.ndim != 2:
            raise ValueError(f"{what} must be [B, T] or a list of B token sequences, got shape {ids.shape}")
        rows = list(ids)
    else:
        rows = [np.asarray(r) for r in prompt_ids]
    if not rows:
        raise ValueError(f"{what} holds no prompt")
    for i, r in enumerate(rows):
        if r.ndim != 1 or r.size == 0:
            raise ValueError(f"{what}[{i}] must be a non-empty 1-D sequence of token ids, got shape {r.shape}")
        if not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"{what}[{i}] must hold integer token ids, got dtype {r.dtype}")
    return [r.astype(np.int32) for r in rows]


def _per_row(value, b: int, what: str) -> np.ndarray:
    """An int or B ints as int64 [B] (``what`` names the argument in the error)."""
    v = np.asarray(value)
    if v.ndim > 1 or (v.ndim == 1 and v.size != b) or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"{what} must be an int or {b} ints (one per prompt), got {value!r}")
    return np.broadcast_to(v.astype(np.int64), (b,))


class Generator:
    """Compiled prefill + decode for one model (compilations are cached per shape and sampling).

    Prompts of different lengths run as one batch (right-padded, one cache length per row; see the
    module docstring) and each row gives the tokens it gives alone.

    >>> gen = Generator(model)
    >>> out = gen.completions([[1, 5, 9], [1, 7]], max_new_tokens=8, eos_token_ids=[2])
    >>> [o.tolist() for o in out]                        # each cut after its end token or 8 tokens

    Args:
        model: a jquant causal LM (`LlamaForCausalLM`): ``hidden_states``, ``logits``, ``init_cache``.
        prefill_chunk: prompts longer than this many tokens are prefilled in chunks of it (a
            multiple of `PROMPT_BUCKET`); None: always in one pass.
    """

    def __init__(self, model: nnx.Module, *, prefill_chunk: int | None = PREFILL_CHUNK):
        if prefill_chunk is not None and (prefill_chunk <= 0 or prefill_chunk % PROMPT_BUCKET):
            raise ValueError(f"prefill_chunk must be a positive multiple of {PROMPT_BUCKET}, got {prefill_chunk}")
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.graphdef, self.state = nnx.split(model)
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("sampling",), donate_argnames=("cache",))
        self._prefill_part = jax.jit(self._prefill_part_fn, donate_argnames=("cache",))
        self._prefill_end = jax.jit(self._prefill_end_fn, static_argnames=("sampling",), donate_argnames=("cache",))
        self._step = jax.jit(self._step_fn, static_argnames=("sampling",), donate_argnames=("cache",))
        self._forward = jax.jit(lambda state, ids: nnx.merge(self.graphdef, state)(ids))

    def logits(self, ids: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """float32 logits [B, T, vocab] of a full forward, compiled once per `PROMPT_BUCKET` of T.

        The ids are right-padded to the bucket: causal attention keeps the real positions exact.
        Rows may differ in length (T = the longest); row r's logits past its own length belong to
        the padding.
        """
        rows = _as_rows(ids, "ids")
        t = max(len(r) for r in rows)
        padded = np.zeros((len(rows), _round_up(t, PROMPT_BUCKET)), np.int32)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = r
        return np.asarray(self._forward(self.state, jnp.asarray(padded)))[:, :t]

    def _prefill_fn(self, state, ids, lengths, cache, keys, sampling):
        model = nnx.merge(self.graphdef, state)
        # the prompts fill slots [0, T) of every row at once; the cache's own length (0, of the
        # shape ``lengths`` has, so the donated buffer is reused) is replaced after
        cache = dataclasses.replace(cache, length=jnp.zeros((), jnp.int32))
        h, cache = model.hidden_states(ids, cache)
        b = ids.shape[0]
        last = h[jnp.arange(b), jnp.broadcast_to(lengths, (b,)) - 1]  # [B, hidden] at each row's last prompt token
        return _first_tokens(model, last, lengths, cache, keys, sampling)

    def _prefill_part_fn(self, state, ids, start, lengths, cache, last):
        """One chunk ``ids`` [B, C] of a long prompt at cache slots ``[start, start + C)``; ``last``
        [B, hidden] keeps each row's hidden state at its last prompt token once a chunk holds it."""
        model = nnx.merge(self.graphdef, state)
        cache = dataclasses.replace(cache, length=start)
        h, cache = model.hidden_states(ids, cache)
        b, c = ids.shape
        at = jnp.broadcast_to(lengths, (b,)) - 1 - start  # each row's last prompt token, within this chunk
        here = (at >= 0) & (at < c)
        last = jnp.where(here[:, None], h[jnp.arange(b), jnp.clip(at, 0, c - 1)], last)
        return cache, last

    def _prefill_end_fn(self, state, last, lengths, cache, keys, sampling):
        """The first tokens from the last prompt positions' hidden states (after `_prefill_part_fn`)."""
        return _first_tokens(nnx.merge(self.graphdef, state), last, lengths, cache, keys, sampling)

    def _chunked_prefill(self, padded, n, cache, keys, sampling):
        """`_prefill` for prompts longer than ``prefill_chunk``, one chunk at a time (one compilation)."""
        c = self.prefill_chunk
        b = padded.shape[0]
        last = jnp.zeros((b, self.model.config.hidden_size), self.model.dtype)
        for start in range(0, padded.shape[1], c):
            ids = jnp.asarray(padded[:, start : start + c])
            cache, last = self._prefill_part(self.state, ids, jnp.int32(start), n, cache, last)
        return self._prefill_end(self.state, last, n, cache, keys, sampling=sampling)

    def _step_fn(self, state, token, cache, keys, sampling):
        model = nnx.merge(self.graphdef, state)
        h, cache = model.hidden_states(token[:, None], cache)
        logits = model.logits(h[:, 0])
        keys, now = _split_rows(keys)
        return _sample_rows(logits, now, sampling), logits, keys, cache

    def __call__(
        self,
        prompt_ids: Sequence[Sequence[int]] | np.ndarray,
        *,
        max_new_tokens: int | Sequence[int] = 32,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | Sequence[int] = 0,
        eos_token_ids: Sequence[int] = (),
        on_token: Callable[[np.ndarray], None] | None = None,
        on_logits: Callable[[np.ndarray], None] | None = None,
        pad_id: int = -1,
    ) -> np.ndarray:
        """Generates up to ``max_new_tokens`` after each prompt; the prompts may differ in length.

        Args:
            prompt_ids: int [B, T] token ids, or B sequences of token ids of any lengths >= 1.
            max_new_tokens: tokens to generate at most: one int for every row, or one per row.
            sampling: greedy by default.
            seed: PRNG seed for sampling: one for every row (each row then draws what it draws
                alone with that seed: give distinct seeds for distinct samples of one prompt), or
                one per row.
            eos_token_ids: a row stops after producing one of these (it is kept in the output).
            on_token: called with each new int32 [B] token batch as soon as it exists (streaming);
                rows already stopped show ``pad_id``.
            on_logits: called with each step's float32 [B, vocab] logits (those the tokens were
                drawn from; stopped rows' logits are meaningless).
            pad_id: fills each row after its stop.

        Returns:
            int32 [B, n_new] generated tokens, n_new <= max(max_new_tokens) the longest row's
            count; row r holds its tokens (end token included), then ``pad_id``. `completions`
            gives the rows cut at their stops.

        Raises:
            ValueError: a prompt that is empty or not 1-D integers, or ``max_new_tokens`` / ``seed``
                neither an int nor one per prompt (naming the argument).
        """
        tokens, _ = self._generate(
            prompt_ids, max_new_tokens, sampling, seed, eos_token_ids, on_token, on_logits, pad_id
        )
        return tokens

    def completions(
        self,
        prompt_ids: Sequence[Sequence[int]] | np.ndarray,
        *,
        max_new_tokens: int | Sequence[int] = 32,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int | Sequence[int] = 0,
        eos_token_ids: Sequence[int] = (),
        on_token: Callable[[np.ndarray], None] | None = None,
        on_logits: Callable[[np.ndarray], None] | None = None,
    ) -> list[np.ndarray]:
        """As `__call__`, but returns one int32 [n_r] array per prompt, cut after its stop."""
        tokens, counts = self._generate(
            prompt_ids, max_new_tokens, sampling, seed, eos_token_ids, on_token, on_logits, -1
        )
        return [tokens[r, :n] for r, n in enumerate(counts)]

    def _generate(self, prompt_ids, max_new_tokens, sampling, seed, eos_token_ids, on_token, on_logits, pad_id):
        """(int32 [B, n_new] tokens padded with ``pad_id``, int [B] tokens per row)."""
        rows = _as_rows(prompt_ids)
        b = len(rows)
        lengths = np.array([len(r) for r in rows], np.int32)
        limits = _per_row(max_new_tokens, b, "max_new_tokens")
        if (limits < 0).any():
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens!r}")
        seeds = _per_row(seed, b, "seed")
        counts = np.zeros(b, np.int64)
        n_steps = int(limits.max())
        if n_steps == 0:
            return np.zeros((b, 0), np.int32), counts
        chunked = self.prefill_chunk is not None and int(lengths.max()) > self.prefill_chunk
        t_pad = _round_up(int(lengths.max()), self.prefill_chunk if chunked else PROMPT_BUCKET)
        cache = self.model.init_cache(b, _round_up(t_pad + n_steps, CACHE_BUCKET))
        padded = np.zeros((b, t_pad), np.int32)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = r
        # one length per row only when they differ: equal prompts keep the scalar cache length and
        # its dynamic_update_slice write (and the compilation they always had)
        ragged = bool((lengths != lengths[0]).any())
        n = jnp.asarray(lengths) if ragged else jnp.int32(lengths[0])
        if ragged:
            cache = dataclasses.replace(cache, length=jnp.zeros((b,), jnp.int32))
        # jax.random.key(s) per row: a row's stream depends on its seed alone, not on the batch
        keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
        if chunked:
            token, logits, keys, cache = self._chunked_prefill(padded, n, cache, keys, sampling)
        else:
            token, logits, keys, cache = self._prefill(
                self.state, jnp.asarray(padded), n, cache, keys, sampling=sampling
            )
        eos = np.asarray(list(eos_token_ids), np.int32)
        done = limits == 0
        out = []
        while True:
            # Dispatch the next step before reading this token back, so the host's work (the copy,
            # the stop checks, the callbacks, the next dispatch) overlaps the device's step instead
            # of adding to it. The step is skipped only when every row stops here by its count; a
            # row's end token is known after the read, so an end-token stop wastes one step.
            now, now_logits = token, logits
            if not (done | (counts + 1 >= limits)).all():
                token, logits, keys, cache = self._step(self.state, token, cache, keys, sampling=sampling)
            tok = np.asarray(now).copy()
            tok[done] = pad_id
            out.append(tok)
            if on_logits is not None:
                on_logits(np.asarray(now_logits))
            if on_token is not None:
                on_token(tok)
            live = ~done
            counts[live] += 1
            done = done | (live & (np.isin(tok, eos) | (counts >= limits)))
            if done.all():
                break
        return np.stack(out, axis=1), counts


def generate(model: nnx.Module, prompt_ids, **kw) -> np.ndarray:
    """One-shot `Generator` call (compiles on every call; keep a `Generator` to reuse them)."""
    return Generator(model)(prompt_ids, **kw)


def model_bytes(model: nnx.Module) -> tuple[int, int]:
    """(bytes held by the model's arrays, bytes the same model would take with bf16 weights)."""
    from jquant.core.qarray import QArray

    held = bf16 = 0
    for leaf in jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, QArray)):
        if isinstance(leaf, QArray):
            held += leaf.nbytes
            n, k = leaf.shape  # logical shape of one weight; stacked layers add leading axes to the arrays
            copies = int(leaf.data.size) * leaf.qtype.codes_per_byte // (n * k)
            bf16 += 2 * n * k * copies
        else:
            held += int(leaf.size) * leaf.dtype.itemsize
            bf16 += 2 * int(leaf.size)
    return held, bf16
