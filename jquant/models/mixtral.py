"""Mixture-of-experts decoders (Mixtral, Qwen3-MoE): the Llama-family decoder with routed experts.

Attention, norms and the LM head are `jquant.models.llama`'s; a sparse layer's MLP is a
`SparseMoeBlock`, mirroring transformers' ``MixtralSparseMoeBlock`` / ``Qwen3MoeSparseMoeBlock``:

    probs = softmax(x @ gate.T) in f32;  top-k of probs;  renormalize to sum 1 (Mixtral always,
    Qwen3-MoE when ``norm_topk_prob``);  out = sum_k p_k * down_e(silu(gate_e(x)) * up_e(x))

The checkpoint's per-expert weights (HF names, quantized or dense) are stacked at load into one
expert-stacked weight per projection (`jquant.core.experts`: a `QArray` whose arrays carry a
leading expert axis), and each projection runs as one `jquant.ops.grouped_qmatmul` over the
token copies sorted by expert. gate and up stack along N into one weight where every expert's pair
concatenates losslessly (as `jquant.models.llama.MLP` does). Everything else is data: the names per
model type below, the widths and routing settings in `DecoderConfig`.
"""

from __future__ import annotations

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

__all__ = ["MOE_NAMES", "SparseMoeBlock", "MoeForCausalLM"]

# Per model type: the sparse block's module name in a layer, and its experts' gate / up / down names.
MOE_NAMES = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}


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
    return to_device(stack_experts(tensors, name=f"{prefix}.experts.*.{proj}.weight"), w.dtype)


class SparseMoeBlock(nnx.Module):
    """Top-k routed SwiGLU experts (HF ``MixtralSparseMoeBlock`` / ``Qwen3MoeSparseMoeBlock``).

    Args:
        cfg: the decoder config (``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
            ``norm_topk_prob``).
        w: the checkpoint's tensors.
        prefix: the block's HF name, e.g. ``model.layers.0.block_sparse_moe``.
        proj_names: the experts' (gate, up, down) projection names (``w1, w3, w2`` for Mixtral).
        fuse: stack gate and up along N (one grouped matmul) where they concatenate losslessly.
    """

    def __init__(self, cfg: DecoderConfig, w: Weights, prefix: str, proj_names: tuple[str, str, str], *, fuse=True):
        h, i, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        self.num_experts, self.top_k, self.intermediate_size = e, cfg.num_experts_per_tok, i
        self.norm_topk_prob = cfg.norm_topk_prob
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

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, hidden] -> [B, T, hidden]."""
        b, t, h = x.shape
        xf = x.reshape(b * t, h)
        probs = jax.nn.softmax(self.gate(xf).astype(jnp.float32), axis=-1)  # [BT, E]
        top_p, top_e = jax.lax.top_k(probs, self.top_k)  # [BT, k]
        if self.norm_topk_prob:
            top_p = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
        # One row per (token, choice), sorted by expert: the layout grouped_qmatmul reads.
        flat_e = top_e.reshape(-1)
        order = jnp.argsort(flat_e, stable=True)
        token = order // self.top_k
        group_sizes = jnp.bincount(flat_e, length=self.num_experts).astype(jnp.int32)
        xs = xf[token]
        if self.gate_up_proj is not None:
            gu = grouped_qmatmul(xs, self.gate_up_proj.get_value(), group_sizes)
            gate, up = gu[:, : self.intermediate_size], gu[:, self.intermediate_size :]
        else:
            gate = grouped_qmatmul(xs, self.gate_proj.get_value(), group_sizes)
            up = grouped_qmatmul(xs, self.up_proj.get_value(), group_sizes)
        y = grouped_qmatmul(jax.nn.silu(gate) * up, self.down_proj.get_value(), group_sizes)  # [BT*k, hidden]
        # Weighted in f32 and summed per token (transformers: f32 weights, index_add into x's dtype).
        y = y.astype(jnp.float32) * top_p.reshape(-1)[order][:, None]
        out = jnp.zeros((b * t, h), jnp.float32).at[token].add(y)
        return out.astype(x.dtype).reshape(b, t, h)


class MoeForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` whose sparse layers (``cfg.moe_layers``) run a `SparseMoeBlock`.

    Mixtral (``model_type`` mixtral: every layer sparse) and Qwen3-MoE (qwen3_moe: q/k norms, dense
    layers per ``decoder_sparse_step`` / ``mlp_only_layers``). Built by `jquant.models.from_checkpoint`.
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
