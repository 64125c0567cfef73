"""gpt-oss (OpenAI): the Llama-family decoder with attention sinks, YaRN rotary tables and biased experts.

Mirrors transformers 5.25 ``modeling_gpt_oss.py`` op for op:

* attention: q/k/v/o with biases (``attention_bias``), a learned sink logit per head
  (``self_attn.sinks``, `jquant.models.attention_sinks`), a sliding window on the layers that
  ``layer_types`` marks ``sliding_attention`` (every other layer by default), all handled by
  `jquant.models.llama.Attention` from the tensors present and `DecoderConfig.layer_windows`;
* rotary tables: YaRN (``rope_type: yarn``, GptOssConfig's default) as
  ``modeling_rope_utils._compute_yarn_parameters`` computes them, cos / sin scaled by its
  ``attention_factor`` (`yarn_parameters`);
* MLP (`GptOssMoeBlock`): a router with a bias, top-k of the *logits* and a softmax over those k,
  then per expert ``gate_up = x @ W_gu.T + b_gu`` whose even rows are the gate and odd rows the up
  projection (``gate_up[..., ::2]`` / ``[..., 1::2]``), the clamped SwiGLU
  ``(clip(up, -L, L) + 1) * g * sigmoid(alpha * g)`` with ``g = min(gate, L)``, ``L = swiglu_limit``
  (7.0), ``alpha = swiglu_alpha`` (1.702), and ``down = h @ W_d.T + b_d``.

Checkpoint names: ``model.layers.{i}.mlp.router.{weight,bias}`` and per expert
``model.layers.{i}.mlp.experts.{e}.gate_up_proj.{weight,bias}`` ([2I, hidden], rows interleaved
as stored) and ``...experts.{e}.down_proj.{weight,bias}`` ([hidden, I]), in HF linear orientation:
what `jquant.formats.mxfp4` makes of the MXFP4 release and `jquant.core.experts.split_fused_experts`
of the dense fused ``mlp.experts.gate_up_proj`` [E, hidden, 2I] tensors. Experts stack at load into
one expert-stacked weight per projection (`jquant.core.experts`), run by `jquant.ops.grouped_qmatmul`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jquant.core.errors import ConfigError, FormatError
from jquant.models.config import DecoderConfig
from jquant.models.llama import DecoderLayer, LlamaForCausalLM
from jquant.models.mixtral import _stacked_experts, route, run_experts
from jquant.nn import QParam, Weights, to_device
from jquant.ops import grouped_qmatmul

__all__ = ["GptOssMoeBlock", "GptOssForCausalLM", "yarn_parameters"]


@functools.lru_cache(maxsize=32)
def yarn_parameters(head_dim: int, rope_parameters: tuple) -> tuple[np.ndarray, float]:
    """float32 [head_dim // 2] YaRN inverse frequencies and the cos / sin scale (``attention_factor``).

    A port of transformers 5.25 ``modeling_rope_utils._compute_yarn_parameters`` (float32 tensors,
    Python-float correction range), including its quirk that ``truncate`` defaults to True.

    Args:
        head_dim: rotary dimension.
        rope_parameters: sorted (key, value) pairs of the HF ``rope_parameters`` dict.

    Raises:
        ConfigError: no ``factor`` or ``original_max_position_embeddings``.
    """
    p = dict(rope_parameters)
    for key in ("factor", "original_max_position_embeddings"):
        if p.get(key) is None:
            raise ConfigError(f"YaRN rope needs {key!r}", tensor=f"config.rope_parameters.{key}")
    base, factor = float(p.get("rope_theta", 10000.0)), float(p["factor"])
    old_ctx = float(p["original_max_position_embeddings"])
    attention_factor = p.get("attention_factor")
    if attention_factor is None:

        def mscale(scale, m=1.0):  # yarn_get_mscale
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, float(p["mscale"])) / mscale(factor, float(p["mscale_all_dim"]))
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = float(p.get("beta_fast") or 32), float(p.get("beta_slow") or 1)

    def correction_dim(rotations):
        return (head_dim * math.log(old_ctx / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # transformers' "prevent singularity"
    pos_freqs = np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    extrapolation = (np.float32(1.0) / pos_freqs).astype(np.float32)
    interpolation = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extra_factor = (np.float32(1) - ramp).astype(np.float32)
    inv = interpolation * (np.float32(1) - extra_factor) + extrapolation * extra_factor
    return inv.astype(np.float32), float(attention_factor)


class GptOssMoeBlock(nnx.Module):
    """``GptOssMLP``: biased router, top-k softmax, biased experts with the clamped SwiGLU (module docstring).

    Args:
        cfg: the decoder config (``num_experts``, ``num_experts_per_tok``, ``moe_intermediate_size``,
            ``swiglu_alpha``, ``swiglu_limit``).
        w: the checkpoint's tensors.
        prefix: ``model.layers.{i}.mlp``.
    """

    def __init__(self, cfg: DecoderConfig, w: Weights, prefix: str):
        h, i, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        self.num_experts, self.top_k = e, cfg.num_experts_per_tok
        self.alpha, self.limit = cfg.swiglu_alpha, cfg.swiglu_limit
        self.router = w.linear(f"{prefix}.router", h, e)
        self.gate_up_proj = QParam(_stacked_experts(w, prefix, "gate_up_proj", e, (2 * i, h)))
        self.gate_up_proj_bias = nnx.Param(self._biases(w, prefix, "gate_up_proj", e, 2 * i))
        self.down_proj = QParam(_stacked_experts(w, prefix, "down_proj", e, (h, i)))
        self.down_proj_bias = nnx.Param(self._biases(w, prefix, "down_proj", e, h))

    @staticmethod
    def _biases(w: Weights, prefix: str, proj: str, e: int, n: int) -> jax.Array:
        """[E, n] of the experts' ``<prefix>.experts.{j}.<proj>.bias``.

        Raises:
            FormatError: a bias missing or not of shape [n], naming it.
        """
        out = []
        for j in range(e):
            name = f"{prefix}.experts.{j}.{proj}.bias"
            b = np.asarray(w.raw(name))
            if b.shape != (n,):
                raise FormatError(f"shape {list(b.shape)}, expected [{n}]", file=w.source, tensor=name)
            out.append(b)
        return to_device(np.stack(out), w.dtype)

    def _experts(self, xs: jax.Array, group_sizes: jax.Array, ids: jax.Array) -> jax.Array:
        gu = grouped_qmatmul(xs, self.gate_up_proj.get_value(), group_sizes) + self.gate_up_proj_bias[...][ids]
        gate, up = gu[:, 0::2], gu[:, 1::2]  # GptOssExperts._apply_gate: interleaved rows
        gate = jnp.minimum(gate, self.limit)
        up = jnp.clip(up, -self.limit, self.limit)
        hidden = (up + 1) * (gate * jax.nn.sigmoid(gate * self.alpha))
        return grouped_qmatmul(hidden, self.down_proj.get_value(), group_sizes) + self.down_proj_bias[...][ids]

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, hidden] -> [B, T, hidden]."""
        b, t, h = x.shape
        xf = x.reshape(b * t, h)
        top_p, top_e = route(self.router(xf), self.top_k, "topk_softmax", False)
        return run_experts(xf, top_p, top_e, self.num_experts, self._experts).reshape(b, t, h)


class GptOssForCausalLM(LlamaForCausalLM):
    """gpt-oss: `LlamaForCausalLM` with `GptOssMoeBlock` MLPs and YaRN rotary tables (module docstring).

    Layers alternate sliding / full attention, so they do not stack under ``lax.scan`` (the window
    is static); they run unrolled.
    """

    @staticmethod
    def decoder_layer(cfg: DecoderConfig, w: Weights, layer: int, *, fuse: bool) -> DecoderLayer:
        mlp = GptOssMoeBlock(cfg, w, f"model.layers.{layer}.mlp")
        return DecoderLayer(cfg, w, layer, fuse=fuse, mlp=mlp)

    def rope_tables(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos, sin [B, T, head_dim]: YaRN frequencies, both scaled by ``attention_factor`` in f32."""
        if self.config.rope.get("rope_type") != "yarn":
            return super().rope_tables(positions)
        inv_freq, scale = yarn_parameters(self.config.head_dim, self.config.rope_parameters)
        freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
        emb = jnp.concatenate([freqs, freqs], axis=-1)  # gpt-oss rotates halves: the same as rotate_half
        return (jnp.cos(emb) * scale).astype(self.dtype), (jnp.sin(emb) * scale).astype(self.dtype)
