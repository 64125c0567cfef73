"""The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM) in Flax NNX over jquant.nn.

Mirrors transformers' ``LlamaForCausalLM`` (``modeling_llama.py``) op for op: pre-RMSNorm blocks,
rotary GQA attention (softmax in f32), SwiGLU MLP, final RMSNorm, LM head (or the tied embedding).
Architecture variants are data, not branches: q/k/v biases exist when the checkpoint has them
(Qwen2), q/k RMSNorm when ``q_norm`` / ``k_norm`` weights exist (Qwen3), sliding windows per layer
from the config (Mistral). Every linear layer is a `QuantLinear`, whatever its format.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jquant.core.errors import ConfigError
from jquant.models.attention_sinks import softmax_with_sinks
from jquant.models.config import DecoderConfig
from jquant.models.kv_cache import KVCache, LayerKV
from jquant.models.kv_quant import write_layer
from jquant.models.rope import apply_rope, inv_frequencies, rope_cos_sin
from jquant.nn import Weights
from jquant.nn.linear import at_layer, split_layer_weights
from jquant.nn.weights import to_device_tree
from jquant.ops.device import default_platform

__all__ = ["Attention", "MLP", "DecoderLayer", "LlamaForCausalLM"]

_NEG_INF = -1e30  # finite "minus infinity": fully masked rows stay NaN-free


class Attention(nnx.Module):
    """Rotary multi-head attention with grouped KV heads (HF ``LlamaAttention`` / ``Qwen3Attention``)."""

    def __init__(self, cfg: DecoderConfig, w: Weights, prefix: str, layer: int, *, fuse: bool = True):
        h, nh, nkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, d
        self.window = cfg.layer_windows[layer]
        names = [f"{prefix}.{p}_proj" for p in "qkv"]
        # q, k and v read the same input: one stacked matmul when their weights stack losslessly.
        qkv = w.fused_linear(names, h, [nh * d, nkv * d, nkv * d]) if fuse else None
        self.qkv_proj = nnx.data(None) if qkv is None else qkv
        if qkv is None:
            self.q_proj, self.k_proj, self.v_proj = (
                w.linear(n, h, o) for n, o in zip(names, (nh * d, nkv * d, nkv * d))
            )
        else:
            self.q_proj = self.k_proj = self.v_proj = nnx.data(None)
        self.o_proj = w.linear(f"{prefix}.o_proj", nh * d, h)
        has_qk_norm = f"{prefix}.q_norm.weight" in w
        self.q_norm = w.norm(f"{prefix}.q_norm.weight", d, cfg.rms_norm_eps) if has_qk_norm else nnx.data(None)
        self.k_norm = w.norm(f"{prefix}.k_norm.weight", d, cfg.rms_norm_eps) if has_qk_norm else nnx.data(None)
        # gpt-oss: one learned sink logit per query head (`jquant.models.attention_sinks`).
        has_sinks = f"{prefix}.sinks" in w
        self.sinks = nnx.Param(w.get(f"{prefix}.sinks", (nh,))) if has_sinks else nnx.data(None)
        # How a decode step (one query per row, with a cache) attends: "xla" (below), "pallas" or
        # "pallas-interpret" (`jquant.pallas.decode_attention`; `LlamaForCausalLM.set_decode_attention`).
        self.decode_attention = "xla"

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        positions: jax.Array,
        kv: tuple[jax.Array, ...] | LayerKV | None,
        start: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, ...] | LayerKV | None]:
        """One attention block.

        Args:
            x: [B, T, hidden].
            cos, sin: [B, T, head_dim] rotary tables of the T query positions.
            positions: int32 [B, T] positions of the queries.
            kv: this layer's cache buffers ([B, S, kv_heads, head_dim] each; a quantized cache
                adds f32 [kv_heads] k / v scales, `jquant.models.kv_quant.write_layer`), or a
                `LayerKV` (this layer of a stacked cache, inside the layer scan), or None (no
                cache: attend within ``x`` only).
            start: int32 scalar, cache slot of the first query (= cache length before this call), or
                int32 [B]: one per row (a ragged batch; the cache slot of a key is its position).

        Returns:
            [B, T, hidden] and the updated buffers, in the form ``kv`` came in (None without a cache).
        """
        b, t, _ = x.shape
        nq, nkv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.qkv_proj is not None:
            qkv = self.qkv_proj(x)
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # Qwen3: RMSNorm over head_dim before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_scale = v_scale = None  # per-KV-head multipliers of a quantized cache's codes
        if kv is None:
            keys, values, kpos = k, v, positions  # [B, S = T]
        else:
            if isinstance(kv, LayerKV):  # write this layer's new slots in place in the stack
                bufs, keys, values, k_scale, v_scale = write_layer(kv.buffers, k, v, start, kv.index)
                kv = LayerKV(bufs, kv.index)
            else:
                kv, keys, values, k_scale, v_scale = write_layer(kv, k, v, start)
            kpos = jnp.arange(keys.shape[1], dtype=jnp.int32)[None]  # slot = position; later slots masked as future
        g = self.num_heads // self.num_kv_heads
        qg = q.reshape(b, t, self.num_kv_heads, g, self.head_dim)
        if self.decode_attention != "xla" and t == 1 and kv is not None:
            from jquant.pallas.decode_attention import pallas_decode_attention

            out = pallas_decode_attention(
                qg[:, 0],
                keys,
                values,
                positions[:, 0],
                window=self.window,
                k_scale=k_scale,
                v_scale=v_scale,
                sinks=None if self.sinks is None else self.sinks[...],
                interpret=self.decode_attention == "pallas-interpret",
            )
            out = self.o_proj(out.astype(x.dtype).reshape(b, t, self.num_heads * self.head_dim))
            return out, kv
        # per row: a ragged batch (`jquant.models.generate`) has each row at its own position
        allowed = kpos[:, None, :] <= positions[:, :, None]  # [B, T, S]
        if self.window is not None:  # Mistral / Qwen2 sliding window: key within the last `window` positions
            allowed &= positions[:, :, None] - kpos[:, None, :] < self.window
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(q.dtype), preferred_element_type=jnp.float32)
        scores = scores * (self.head_dim**-0.5)
        if k_scale is not None:  # q . (code * s) = (q . code) * s: dequantized inside attention
            scores = scores * k_scale[None, :, None, None, None]
        scores = jnp.where(allowed[:, None, None], scores, _NEG_INF)
        probs = softmax_with_sinks(scores, None if self.sinks is None else self.sinks[...]).astype(q.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(q.dtype), preferred_element_type=jnp.float32)
        if v_scale is not None:
            out = out * v_scale[None, None, :, None, None]
        out = self.o_proj(out.astype(x.dtype).reshape(b, t, self.num_heads * self.head_dim))
        return out, kv


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: DecoderConfig, w: Weights, prefix: str, *, fuse: bool = True):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.intermediate_size = i
        names = [f"{prefix}.gate_proj", f"{prefix}.up_proj"]
        gate_up = w.fused_linear(names, h, [i, i]) if fuse else None
        self.gate_up_proj = nnx.data(None) if gate_up is None else gate_up
        if gate_up is None:
            self.gate_proj, self.up_proj = (w.linear(n, h, i) for n in names)
        else:
            self.gate_proj = self.up_proj = nnx.data(None)
        self.down_proj = w.linear(f"{prefix}.down_proj", i, h)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gate_up_proj is not None:
            gu = self.gate_up_proj(x)
            gate, up = gu[..., : self.intermediate_size], gu[..., self.intermediate_size :]
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(jax.nn.silu(gate) * up)


class DecoderLayer(nnx.Module):
    """Pre-norm attention + MLP block; ``mlp`` replaces the SwiGLU MLP (MoE layers, `jquant.models.mixtral`)."""

    def __init__(self, cfg: DecoderConfig, w: Weights, layer: int, *, fuse: bool = True, mlp: nnx.Module | None = None):
        p = f"model.layers.{layer}"
        self.input_layernorm = w.norm(f"{p}.input_layernorm.weight", cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, w, f"{p}.self_attn", layer, fuse=fuse)
        self.post_attention_layernorm = w.norm(
            f"{p}.post_attention_layernorm.weight", cfg.hidden_size, cfg.rms_norm_eps
        )
        self.mlp = MLP(cfg, w, f"{p}.mlp", fuse=fuse) if mlp is None else mlp

    def __call__(self, x, cos, sin, positions, kv, start):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, positions, kv, start)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed host array in its own anonymous memory map: page-aligned, so the CPU backend's
    ``device_put`` adopts it without a copy (`jquant.nn.weights.stack_to_device`), and handed back to
    the system as soon as it is freed (glibc keeps freed heap chunks; `jquant.convert.gguf._own_mapping`)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), np.uint8)[:nbytes].view(dtype).reshape(shape)


def _build_stacked(build: Callable[[int], nnx.Module], n: int) -> tuple[nnx.Module | None, list[nnx.Module]]:
    """Builds layers ``build(0) .. build(n - 1)`` and stacks them as they come.

    Returns ``(stacked, [])``: one module of the layers' class whose every array has a leading layer
    axis, when all layers have the same graph and the same array shapes / dtypes; else
    ``(None, layers)``, the layers one by one (those already stacked as views of the stack).

    Each layer's host arrays (quantized weights, `Weights.defer_quantized`: the checkpoint's own
    arrays, or the concatenation of q / k / v and of gate / up) are copied into their preallocated,
    64-byte-aligned [L, ...] host stack as soon as the layer is built, and the layer is dropped
    before the next one is built; the stacks then reach the device without a copy on the CPU (one
    copy elsewhere). So at most one layer's fused concatenations exist at a time: stacking after
    building every layer held all of them too, 0.36 GB on the 1B-class Q4_0 GGUF
    (bench/results/cpu/decode_1b_q4_0.md). Device leaves (norms) are stacked with ``jnp.stack``.
    """

    def leaves_of(layer):
        g, s = nnx.split(layer)
        return g, jax.tree.structure(s), jax.tree.leaves(s)

    g0, treedef, leaves = leaves_of(build(0))
    sig = [(a.shape, a.dtype, isinstance(a, np.ndarray)) for a in leaves]
    stacks = [_aligned_empty((n, *a.shape), a.dtype) if host else [None] * n for a, (_, _, host) in zip(leaves, sig)]
    for i in range(n):
        if i:
            layer = build(i)
            g, t, leaves = leaves_of(layer)
            if g != g0 or t != treedef or [(a.shape, a.dtype, isinstance(a, np.ndarray)) for a in leaves] != sig:
                done = [nnx.merge(g0, jax.tree.unflatten(treedef, [s[k] for s in stacks])) for k in range(i)]
                return None, [*done, layer, *(build(k) for k in range(i + 1, n))]
            del layer
        for s, a in zip(stacks, leaves):
            s[i] = a
        leaves = None  # the layer's own copies go before the next layer is built
    out = [jax.device_put(s) if host else jnp.stack(s) for s, (_, _, host) in zip(stacks, sig)]
    return nnx.merge(g0, jax.tree.unflatten(treedef, out)), []


class LlamaForCausalLM(nnx.Module):
    """A Llama-family causal LM whose linear weights may be quantized in any canonical form.

    Build it with `jquant.models.from_checkpoint`. Call it as ``model(input_ids)`` for logits
    [B, T, vocab], or with a `KVCache` for incremental decoding.

    On the CPU, when every decoder layer has the same structure (same quantization types and
    shapes, same attention window), the layers are stored stacked (``stacked_layers``: one
    `DecoderLayer` whose arrays have a leading layer axis) and run under ``jax.lax.scan``: one layer
    is compiled instead of ``num_hidden_layers``, and the CPU kernels read each layer of the stack
    in place. Checkpoints that mix types across layers (llama.cpp's Q4_K_M, GPTQModel dynamic
    overrides) keep the unrolled ``layers`` list. On a GPU the layers stay unrolled by default: XLA
    copies a layer's weights out of the stack before each of its own fused GEMMs (only custom calls
    get the slice in place), so scanned decode of the Llama-3-8B shape runs 2.6x slower in bf16
    and 1.3x slower in FP8 (H200, bench/results/nvidia_h200/decode_e2e_forms.md), for a compile
    time 1.7-3.8x shorter.

    Args:
        cfg: the decoder geometry.
        w: the checkpoint's tensors (HF names), already bound to the compute dtype.
        scan_layers: True / False to force the stacked / unrolled form; None: stacked when possible
            on the CPU, unrolled elsewhere (`jquant.ops.device.default_platform`).
        fuse_projections: run q/k/v and gate/up as one stacked matmul each where their weights
            stack losslessly (`jquant.core.concat`); the checkpoint's tensors are unchanged.
    """

    def __init__(
        self, cfg: DecoderConfig, w: Weights, *, scan_layers: bool | None = None, fuse_projections: bool = True
    ):
        self.config = cfg
        self.dtype = w.dtype
        if scan_layers is None and default_platform() != "cpu":
            scan_layers = False
        # Where init_cache puts the KV buffers: None (default device), or split by heads over a mesh
        # (set by `jquant.parallel.shard`).
        self.cache_sharding = None
        # `jquant.models.kv_quant.KVQuant` for a quantized KV cache (set by from_checkpoint); None: model dtype.
        self.kv_quant = None
        self.embed_tokens = w.embed("model.embed_tokens.weight", cfg.vocab_size, cfg.hidden_size)
        # quantized layer weights stay on the host until they are stacked (or moved) below
        w.defer_quantized = True
        try:
            build = lambda i: self.decoder_layer(cfg, w, i, fuse=fuse_projections)  # noqa: E731
            if scan_layers is False:
                stacked, layers = None, [build(i) for i in range(cfg.num_hidden_layers)]
            else:
                stacked, layers = _build_stacked(build, cfg.num_hidden_layers)
        finally:
            w.defer_quantized = False
        if scan_layers and stacked is None:
            raise ConfigError("scan_layers=True but the decoder layers differ in structure or weight types")
        self.layers: nnx.List | None
        self.stacked_layers: DecoderLayer | None
        if stacked is not None:
            self.layers, self.stacked_layers = nnx.data(None), stacked
        else:
            for layer in layers:
                nnx.update(layer, to_device_tree(nnx.state(layer)))
            self.layers, self.stacked_layers = nnx.List(layers), nnx.data(None)
        del layers
        self.norm = w.norm("model.norm.weight", cfg.hidden_size, cfg.rms_norm_eps)
        if "lm_head.weight" in w:
            self.lm_head = w.linear("lm_head", cfg.hidden_size, cfg.vocab_size)
        elif cfg.tie_word_embeddings:
            self.lm_head = nnx.data(None)  # tied: logits = embed_tokens.attend(h)
        else:
            raise ConfigError("no lm_head.weight and tie_word_embeddings is false", tensor="lm_head.weight")

    @staticmethod
    def decoder_layer(cfg: DecoderConfig, w: Weights, layer: int, *, fuse: bool) -> DecoderLayer:
        """Decoder layer ``layer`` (subclasses swap its MLP: `jquant.models.mixtral`)."""
        return DecoderLayer(cfg, w, layer, fuse=fuse)

    def set_decode_attention(self, kind: str) -> None:
        """How decode steps attend over the cache: ``"xla"`` (the default: masked dots over every
        slot), ``"pallas"`` (on a GPU: one kernel per layer reading only the visible slots, cache
        codes dequantized in registers, `jquant.pallas.decode_attention`) or
        ``"pallas-interpret"`` (that kernel in the Pallas interpreter: CPU tests).

        Raises:
            ConfigError: unknown ``kind``, ``"pallas"`` off a GPU, or shapes / dtypes the kernel
                does not take.
        """
        if kind not in ("xla", "pallas", "pallas-interpret"):
            raise ConfigError(f"decode attention {kind!r}: expected 'xla', 'pallas' or 'pallas-interpret'")
        if kind == "pallas" and default_platform() != "gpu":
            raise ConfigError(f"decode attention 'pallas' runs on a GPU, not {default_platform()}")
        if kind != "xla":
            from jquant.pallas.decode_attention import why_not

            cfg = self.config
            q = jax.ShapeDtypeStruct((1, cfg.num_key_value_heads, 1, cfg.head_dim), self.dtype)
            code = self.kv_quant.code_dtype if self.kv_quant is not None else self.dtype
            why = why_not(q, jax.ShapeDtypeStruct((1, 1, cfg.num_key_value_heads, cfg.head_dim), code))
            if why:
                raise ConfigError(f"decode attention {kind!r}: {why}")
        layers = [self.stacked_layers] if self.stacked_layers is not None else list(self.layers)
        for layer in layers:
            layer.self_attn.decode_attention = kind

    def rope_tables(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin [B, T, head_dim] for int32 positions [B, T] (gpt-oss overrides it for YaRN)."""
        inv_freq = inv_frequencies(self.config.head_dim, self.config.rope_parameters)
        return rope_cos_sin(positions, inv_freq, self.dtype)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.config
        return KVCache.create(
            c.num_hidden_layers,
            batch,
            max_len,
            c.num_key_value_heads,
            c.head_dim,
            self.dtype,
            sharding=self.cache_sharding,
            quant=self.kv_quant,
            stacked=self.stacked_layers is not None,
        )

    def hidden_states(self, input_ids: jax.Array, cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        """The final-normed hidden states [B, T, hidden] (and the extended cache, if one is given).

        Args:
            input_ids: int32 [B, T].
            cache: None for a forward from position 0; else the `KVCache` to extend: the T tokens
                take positions ``cache.length ...`` (the caller keeps them within ``max_len``); a
                per-row ``length`` [B] puts each row at its own position (ragged batches).
        """
        b, t = input_ids.shape
        start = jnp.zeros((), jnp.int32) if cache is None else cache.length
        positions = jnp.broadcast_to(jnp.reshape(start, (-1, 1)) + jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = self.rope_tables(positions)
        x = self.embed_tokens(input_ids).astype(self.dtype)
        if self.stacked_layers is not None:
            # The linear weights stay whole (closed over) and each layer's QuantLinear gets
            # LayerOf(stack, i): a backend that reads stacked weights in place (kernels_cpu) then
            # needs no per-layer copy of them; any other gets the slice ``stack[i]``.
            graphdef, weights, rest = split_layer_weights(self.stacked_layers)

            # The stacked cache rides in the carry: each layer writes its new slots into it in place
            # (`LayerKV`); as scan input / output it would be sliced per layer and rebuilt.
            # The layer index rides in the carry too (i -> i + 1): XLA then sees a slice at the
            # loop's induction variable and hands a custom call (the CUDA kernels) its layer of the
            # stack in place. An index read from an ``arange`` scanned as input hides that, and
            # every layer's weights were copied before each call (4.4 of 7.4 ms per decode step of
            # the 8B-shaped W4A16 model on H200: bench/results/nvidia_h200/decode_e2e_forms.md).
            def body(carry, state):
                h, bufs, i = carry
                layer = nnx.merge(graphdef, at_layer(weights, i), state)
                h, kv = layer(h, cos, sin, positions, None if bufs is None else LayerKV(bufs, i), start)
                return (h, None if kv is None else kv.buffers, i + 1), None

            # a per-layer cache (made by hand for a scanned model) is stacked once and stays so
            kvs = None if cache is None else cache.stacked()
            if cache is not None and not cache.is_stacked:
                cache = dataclasses.replace(cache, **dict(zip(("k", "v", "k_scale", "v_scale"), kvs)))
            (x, kvs, _), _ = jax.lax.scan(body, (x, kvs, jnp.zeros((), jnp.int32)), rest)
        else:
            kvs = []
            for i, layer in enumerate(self.layers):
                kv = None if cache is None else cache.layer(i)
                x, kv = layer(x, cos, sin, positions, kv, start)
                kvs.append(kv)
        new_cache = None if cache is None else cache.with_layers(kvs, start + t)
        return self.norm(x), new_cache

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits [..., vocab] of normed hidden states [..., hidden]."""
        out = self.embed_tokens.attend(h) if self.lm_head is None else self.lm_head(h)
        return out.astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
        """Logits of the next token at each position.

        Args:
            input_ids: int32 [B, T].
            cache: None for a full forward from position 0; else the `KVCache` to extend.

        Returns:
            float32 logits [B, T, vocab]; with a cache, ``(logits, new_cache)``.
        """
        h, new_cache = self.hidden_states(input_ids, cache)
        logits = self.logits(h)
        return logits if cache is None else (logits, new_cache)
