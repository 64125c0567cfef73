"""Autoregressive generation: jit-compiled prefill and decode step over a `KVCache`, with sampling.

The model is split once (``nnx.split``) into a graph and a state pytree; prefill and the decode
step are pure functions of (state, tokens, cache, key), compiled by ``jax.jit`` with the cache
donated, so each step updates the cache in place. Prompts are padded to a bucket of
`PROMPT_BUCKET` tokens and caches to `CACHE_BUCKET` slots, so prompts of similar length share
one compilation. Padded slots are harmless: they hold positions at or past the cache length,
which attention masks as future, and decoding overwrites them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["SamplingConfig", "sample", "Generator", "generate", "model_bytes", "PROMPT_BUCKET", "CACHE_BUCKET"]

PROMPT_BUCKET = 32
CACHE_BUCKET = 128


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


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Generator:
    """Compiled prefill + decode for one model (compilations are cached per shape and sampling).

    Args:
        model: a jquant causal LM (`LlamaForCausalLM`): ``hidden_states``, ``logits``, ``init_cache``.
    """

    def __init__(self, model: nnx.Module):
        self.model = model
        self.graphdef, self.state = nnx.split(model)
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("sampling",), donate_argnames=("cache",))
        self._step = jax.jit(self._step_fn, static_argnames=("sampling",), donate_argnames=("cache",))
        self._forward = jax.jit(lambda state, ids: nnx.merge(self.graphdef, state)(ids))

    def logits(self, ids: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """float32 logits [B, T, vocab] of a full forward, compiled once per `PROMPT_BUCKET` of T.

        The ids are right-padded to the bucket: causal attention keeps the real positions exact.
        """
        ids = np.asarray(ids, dtype=np.int32)
        b, t = ids.shape
        padded = np.zeros((b, _round_up(t, PROMPT_BUCKET)), np.int32)
        padded[:, :t] = ids
        return np.asarray(self._forward(self.state, jnp.asarray(padded)))[:, :t]

    def _prefill_fn(self, state, ids, n_prompt, cache, key, sampling):
        model = nnx.merge(self.graphdef, state)
        h, cache = model.hidden_states(ids, cache)
        last = jax.lax.dynamic_slice_in_dim(h, n_prompt - 1, 1, axis=1)[:, 0]  # [B, hidden] at the real last token
        cache = dataclasses.replace(cache, length=n_prompt)  # slots past the prompt were padding
        return sample(model.logits(last), key, sampling), cache

    def _step_fn(self, state, token, cache, key, sampling):
        model = nnx.merge(self.graphdef, state)
        h, cache = model.hidden_states(token[:, None], cache)
        return sample(model.logits(h[:, 0]), key, sampling), cache

    def __call__(
        self,
        prompt_ids: Sequence[Sequence[int]] | np.ndarray,
        *,
        max_new_tokens: int = 32,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        eos_token_ids: Sequence[int] = (),
        on_token: Callable[[np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Generates up to ``max_new_tokens`` after each prompt (prompts of equal length).

        Args:
            prompt_ids: int [B, T] token ids.
            max_new_tokens: tokens to generate at most.
            sampling: greedy by default.
            seed: PRNG seed for sampling.
            eos_token_ids: generation stops once every row has produced one of these.
            on_token: called with each new int32 [B] token batch as soon as it exists (streaming).

        Returns:
            int32 [B, n_new] generated tokens (n_new <= max_new_tokens; EOS included).
        """
        ids = np.asarray(prompt_ids, dtype=np.int32)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"prompt_ids must be [B, T] with T >= 1, got shape {ids.shape}")
        b, t = ids.shape
        t_pad = _round_up(t, PROMPT_BUCKET)
        cache = self.model.init_cache(b, _round_up(t_pad + max_new_tokens, CACHE_BUCKET))
        padded = np.zeros((b, t_pad), np.int32)
        padded[:, :t] = ids
        key = jax.random.key(seed)
        key, sub = jax.random.split(key)
        token, cache = self._prefill(self.state, jnp.asarray(padded), jnp.int32(t), cache, sub, sampling=sampling)
        out, eos, done = [], np.asarray(list(eos_token_ids), np.int32), np.zeros(b, bool)
        for i in range(max_new_tokens):
            tok = np.asarray(token)
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            done |= np.isin(tok, eos)
            if done.all() or i == max_new_tokens - 1:
                break
            key, sub = jax.random.split(key)
            token, cache = self._step(self.state, token, cache, sub, sampling=sampling)
        return np.stack(out, axis=1) if out else np.zeros((b, 0), np.int32)


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
