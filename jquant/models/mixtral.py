"""Mixture-of-experts decoders (Mixtral, Qwen2-MoE, Qwen3-MoE): the Llama-family decoder with routed experts.

Attention, norms and the LM head are `jquant.models.llama`'s; a sparse layer's MLP is a
`SparseMoeBlock`, mirroring transformers' ``MixtralSparseMoeBlock`` / ``Qwen2MoeSparseMoeBlock`` /
``Qwen3MoeSparseMoeBlock``:

    probs = softmax(x @ gate.T) in f32;  top-k of probs;  renormalize to sum 1 (Mixtral always,
    Qwen2/3-MoE when ``norm_topk_prob``);  out = sum_k p_k * down_e(silu(gate_e(x)) * up_e(x))
    Qwen2-MoE only:  out += sigmoid(x @ shared_expert_gate.T) * shared_expert(x)   (a SwiGLU MLP)

The checkpoint's per-expert weights (HF names, quantized or dense) are stacked at load into one
expert-stacked weight per projection (`jquant.core.experts`: a `QArray` whose arrays carry a
leading expert axis), and each projection runs as one `jquant.ops.grouped_qmatmul` over the
token copies sorted by expert. gate and up stack along N into one weight where every expert's pair
concatenates losslessly (as `jquant.models.llama.MLP` does). Everything else is data: the names per
model type below, the widths and routing settings in `DecoderConfig`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jquant.core.concat import concat_rows, why_not_concat
from jquant.core.errors import FormatError, UnsupportedFormatError
from jquant.core.experts import stack_experts
from jquant.models.config import DecoderConfig
from jquant.models.llama import MLP, DecoderLayer, LlamaForCausalLM
from jquant.nn import QParam, Weights, to_device
from jquant.ops import grouped_qmatmul

__all__ = ["MOE_NAMES", "SparseMoeBlock", "MoeForCausalLM", "route", "run_experts"]

# Per model type: the sparse block's module name in a layer, and its experts' gate / up / down names.
MOE_NAMES = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}


def route(logits: jax.Array, top_k: int, rule: str, norm_topk_prob: bool) -> tuple[jax.Array, jax.Array]:
    """Top-k expert choice and weights of each token.

    Args:
        logits: [M, E] router logits.
        top_k: experts per token.
        rule: ``"softmax_topk"`` (HF Mixtral / Qwen-MoE routers: softmax over all E in f32, top-k
            of the probabilities, renormalized when ``norm_topk_prob``) or ``"topk_softmax"``
            (``GptOssTopKRouter``: top-k of the logits, softmax over those k).
        norm_topk_prob: see ``rule``.

    Returns:
        float32 weights [M, k] and int32 expert ids [M, k].
    """
    logits = logits.astype(jnp.float32)
    if rule == "topk_softmax":
        top_l, top_e = jax.lax.top_k(logits, top_k)
        return jax.nn.softmax(top_l, axis=-1), top_e
    top_p, top_e = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)
    if norm_topk_prob:
        top_p = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    return top_p, top_e


def run_experts(xf: jax.Array, top_p: jax.Array, top_e: jax.Array, num_experts: int, expert_fn) -> jax.Array:
    """``sum_k top_p[m, k] * expert_{top_e[m, k]}(xf[m])`` for every token m, as grouped matmuls.

    Args:
        xf: [M, hidden] tokens.
        top_p: float32 [M, k] routing weights; top_e: int32 [M, k] expert ids.
        num_experts: E.
        expert_fn: ``(xs [M*k, hidden] sorted by expert, group_sizes int32 [E], ids int32 [M*k])
            -> [M*k, hidden]``, each row through its expert (``ids``: the expert of each row, for
            per-expert biases).

    Returns:
        [M, hidden] in ``xf``'s dtype (weighted in f32 and summed per token, as transformers
        multiplies by f32 weights and ``index_add``s into the hidden dtype).
    """
    m, h = xf.shape
    k = top_e.shape[-1]
    # One row per (token, choice), sorted by expert: the layout grouped_qmatmul reads.
    flat_e = top_e.reshape(-1)
    order = jnp.argsort(flat_e, stable=True)
    token = order // k
    group_sizes = jnp.bincount(flat_e, length=num_experts).astype(jnp.int32)
    y = expert_fn(xf[token], group_sizes, flat_e[order])
    y = y.astype(jnp.float32) * top_p.reshape(-1)[order][:, None]
    return jnp.zeros((m, h), jnp.float32).at[token].add(y).astype(xf.dtype)


def _stacked_experts(w: Weights, prefix: str, proj: str, e: int, shape: tuple[int, int], *, fuse_with: str = ""):
    """The E experts' ``<prefix>.experts.{j}.<proj>.weight`` stacked on device (each with its
    ``fuse_with`` partner appended along N), or None when ``fuse_with`` is given and some expert's
    pair does not concatenate losslessly.

    Raises:
        FormatError: an expert's tensor missing or of the wrong shape, or experts that do not stack.
        UnsupportedFormatError: experts with an input-activation recipe (W8A8).
    """
    tensors = []
    for j in range(e):
        pair = []
        for name in (proj, fuse_with) if fuse_with else (proj,):
            n = f"{prefix}.experts.{j}.{name}"
            if f"{n}.input_quant" in w:
                raise UnsupportedFormatError(
                    "experts with quantized activations (W8A8) are not supported yet", file=w.source, tensor=n
                )
            t = w.raw(f"{n}.weight")
            if tuple(t.shape) != shape:
                raise FormatError(f"shape {tuple(t.shape)}, expected {shape}", file=w.source, tensor=f"{n}.weight")
            pair.append(t)
        if len(pair) == 2 and why_not_concat(pair):
            return None
        tensors.append(concat_rows(pair) if len(pair) == 2 else pair[0])
    stacked = stack_experts(tensors, name=f"{prefix}.experts.*.{proj}.weight")
    place = getattr(w, "place_experts", None)  # jquant.parallel.ShardedWeights: E split over its mesh
    return to_device(stacked, w.dtype) if place is None else place(stacked, f"{prefix}.experts.*.{proj}.weight")


class SparseMoeBlock(nnx.Module):
    """Top-k routed SwiGLU experts (HF ``MixtralSparseMoeBlock`` / ``Qwen2MoeSparseMoeBlock`` /
    ``Qwen3MoeSparseMoeBlock``), with Qwen2-MoE's gated shared expert when the config has one.

    Args:
        cfg: the decoder config (``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
            ``norm_topk_prob``, ``shared_expert_intermediate_size``).
        w: the checkpoint's tensors.
        prefix: the block's HF name, e.g. ``model.layers.0.block_sparse_moe``.
        proj_names: the experts' (gate, up, down) projection names (``w1, w3, w2`` for Mixtral).
        fuse: stack gate and up along N (one grouped matmul) where they concatenate losslessly.
    """

    def __init__(self, cfg: DecoderConfig, w: Weights, prefix: str, proj_names: tuple[str, str, str], *, fuse=True):
        h, i, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        self.num_experts, self.top_k, self.intermediate_size = e, cfg.num_experts_per_tok, i
        self.norm_topk_prob = cfg.norm_topk_prob
        # None on one device; a `jquant.parallel.ExpertParallel` (static) when the experts are split
        # over a mesh (set by `jquant.parallel.ShardedWeights` / `jquant.parallel.shard`).
        self.expert_parallel = getattr(w, "expert_parallel", None)
        self.gate = w.linear(f"{prefix}.gate", h, e)  # the router
        g, u, d = proj_names
        gate_up = _stacked_experts(w, prefix, g, e, (i, h), fuse_with=u) if fuse else None
        if gate_up is not None:
            self.gate_up_proj, self.gate_proj, self.up_proj = QParam(gate_up), nnx.data(None), nnx.data(None)
        else:
            self.gate_up_proj = nnx.data(None)
            self.gate_proj = QParam(_stacked_experts(w, prefix, g, e, (i, h)))
            self.up_proj = QParam(_stacked_experts(w, prefix, u, e, (i, h)))
        self.down_proj = QParam(_stacked_experts(w, prefix, d, e, (h, i)))
        if cfg.shared_expert_intermediate_size:  # Qwen2-MoE: Qwen2MoeMLP + a sigmoid gate [1, hidden]
            shared_cfg = dataclasses.replace(cfg, intermediate_size=cfg.shared_expert_intermediate_size)
            self.shared_expert = MLP(shared_cfg, w, f"{prefix}.shared_expert", fuse=fuse)
            self.shared_expert_gate = w.linear(f"{prefix}.shared_expert_gate", h, 1)
        else:
            self.shared_expert = self.shared_expert_gate = nnx.data(None)

    def _experts(self, xs: jax.Array, group_sizes: jax.Array, ids: jax.Array) -> jax.Array:
        mm = grouped_qmatmul if self.expert_parallel is None else self.expert_parallel.grouped_qmatmul
        if self.gate_up_proj is not None:
            gu = mm(xs, self.gate_up_proj.get_value(), group_sizes)
            gate, up = gu[:, : self.intermediate_size], gu[:, self.intermediate_size :]
        else:
            gate = mm(xs, self.gate_proj.get_value(), group_sizes)
            up = mm(xs, self.up_proj.get_value(), group_sizes)
        return mm(jax.nn.silu(gate) * up, self.down_proj.get_value(), group_sizes)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, hidden] -> [B, T, hidden]."""
        b, t, h = x.shape
        xf = x.reshape(b * t, h)
        top_p, top_e = route(self.gate(xf), self.top_k, "softmax_topk", self.norm_topk_prob)
        out = run_experts(xf, top_p, top_e, self.num_experts, self._experts)
        if self.shared_expert is not None:
            out = out + jax.nn.sigmoid(self.shared_expert_gate(xf)) * self.shared_expert(xf)
        return out.reshape(b, t, h)


class MoeForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` whose sparse layers (``cfg.moe_layers``) run a `SparseMoeBlock`.

    Mixtral (``model_type`` mixtral: every layer sparse), Qwen2-MoE (qwen2_moe: q/k/v biases, a
    shared expert) and Qwen3-MoE (qwen3_moe: q/k norms); Qwen's dense layers follow
    ``decoder_sparse_step`` / ``mlp_only_layers``. Built by `jquant.models.from_checkpoint`.
    Layers stack under ``lax.scan`` as in the dense model (the expert stacks gain a leading layer axis).
    """

    @staticmethod
    def decoder_layer(cfg: DecoderConfig, w: Weights, layer: int, *, fuse: bool) -> DecoderLayer:
        module, projs = MOE_NAMES[cfg.model_type]
        p = f"model.layers.{layer}.{module}"
        if cfg.moe_layers[layer]:
            mlp = SparseMoeBlock(cfg, w, p, projs, fuse=fuse)
        else:
            mlp = MLP(cfg, w, p, fuse=fuse)
        return DecoderLayer(cfg, w, layer, fuse=fuse, mlp=mlp)
