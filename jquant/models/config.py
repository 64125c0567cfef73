"""`DecoderConfig`: the fields of an HF Llama-family ``config.json`` the decoder needs, validated."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jquant.core.errors import ConfigError, UnsupportedFormatError

__all__ = ["DecoderConfig", "SUPPORTED_MODEL_TYPES"]

# HF ``model_type``s whose decoder is the Llama block (pre-norm, rotary GQA attention, SwiGLU MLP).
# Differences are data, read from the config and the tensors present: q/k/v biases (Qwen2), q/k
# RMSNorm (Qwen3), explicit head_dim (Qwen3), sliding windows (Mistral), tied embeddings (SmolLM2).
# The MoE types (`jquant.models.mixtral`, `jquant.models.gpt_oss`) replace the MLP of their sparse
# layers by routed experts; gpt-oss adds attention sinks, YaRN rotary tables and biased experts.
SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2", "smollm3",
    "mixtral", "qwen3_moe", "qwen2_moe", "gpt_oss",
)  # fmt: skip

# Per MoE model type: (config key of the expert width, default of ``norm_topk_prob``; None: the
# architecture has no such key: Mixtral always renormalizes its top-k probabilities, gpt-oss takes
# the softmax of the top-k logits, which sums to 1 by construction).
_MOE = {
    "mixtral": ("intermediate_size", None),
    "qwen3_moe": ("moe_intermediate_size", False),
    "qwen2_moe": ("moe_intermediate_size", False),  # Qwen2MoeConfig.norm_topk_prob defaults to False
    "gpt_oss": ("intermediate_size", None),
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Llama-family decoder geometry.

    Attributes:
        rope_parameters: HF transformers-5 style settings as sorted (key, value) pairs, so the
            config stays hashable (``rope_type``, ``rope_theta``, and for
            ``llama3``: ``factor``, ``low_freq_factor``, ``high_freq_factor``,
            ``original_max_position_embeddings``; for ``linear``: ``factor``).
        layer_windows: per layer, the sliding-window size (None: full causal attention).
        num_experts: routed experts per MoE layer (0: a dense model).
        num_experts_per_tok: top-k of the router.
        moe_intermediate_size: one expert's MLP width.
        norm_topk_prob: renormalize the top-k router probabilities to sum to 1.
        moe_layers: per layer, whether its MLP is the routed experts (Qwen2/3-MoE's
            ``decoder_sparse_step`` / ``mlp_only_layers``); empty for dense models.
        router: ``"softmax_topk"`` (softmax over all experts, then top-k: Mixtral, Qwen-MoE) or
            ``"topk_softmax"`` (top-k logits, then their softmax: gpt-oss).
        shared_expert_intermediate_size: width of Qwen2-MoE's always-on shared expert (0: none).
        swiglu_alpha, swiglu_limit: gpt-oss' clamped SwiGLU (``swiglu_alpha`` / ``swiglu_limit``).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: tuple[tuple[str, Any], ...]
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_windows: tuple[int | None, ...]
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[bool, ...] = ()
    router: str = "softmax_topk"
    shared_expert_intermediate_size: int = 0
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0

    @property
    def rope(self) -> dict[str, Any]:
        return dict(self.rope_parameters)

    @property
    def num_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> DecoderConfig:
        """Reads an HF config dict (transformers 4 or 5 spelling of the rope settings).

        Raises:
            UnsupportedFormatError: a model type or activation outside the Llama family.
            ConfigError: missing or inconsistent fields.
        """
        mt = config.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedFormatError(
                f"model_type {mt!r} is not a Llama-family decoder jquant runs (supported: {SUPPORTED_MODEL_TYPES})",
                tensor="config.model_type",
            )
        act = config.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedFormatError(f"hidden_act {act!r}: only SwiGLU (silu) MLPs", tensor="config.hidden_act")

        def need(key):
            if config.get(key) is None:
                raise ConfigError(f"config has no {key!r}", tensor=f"config.{key}")
            return config[key]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        head_dim = config.get("head_dim") or hidden // heads
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
        rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
        if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedFormatError("partial_rotary_factor != 1", tensor="config.partial_rotary_factor")
        n_layers = int(need("num_hidden_layers"))
        window = config.get("sliding_window")
        if config.get("layer_types") is not None:
            layer_types = list(config["layer_types"])
            windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        elif window is not None and config.get("use_sliding_window", True):
            windows = (int(window),) * n_layers
        else:
            windows = (None,) * n_layers
        if len(windows) != n_layers:
            raise ConfigError(f"{len(windows)} layer_types for {n_layers} layers", tensor="config.layer_types")
        eos = config.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        moe = {}
        if mt in _MOE:
            width_key, norm_default = _MOE[mt]
            n_exp = int(config.get("num_local_experts") or need("num_experts"))
            top_k = int(need("num_experts_per_tok"))
            if not 0 < top_k <= n_exp:
                raise ConfigError(
                    f"num_experts_per_tok={top_k} must be in 1..{n_exp} (the experts)",
                    tensor="config.num_experts_per_tok",
                )
            step, dense_only = int(config.get("decoder_sparse_step") or 1), set(config.get("mlp_only_layers") or ())
            moe = dict(
                num_experts=n_exp,
                num_experts_per_tok=top_k,
                moe_intermediate_size=int(need(width_key)),
                norm_topk_prob=True if norm_default is None else bool(config.get("norm_topk_prob", norm_default)),
                moe_layers=tuple(i not in dense_only and (i + 1) % step == 0 for i in range(n_layers)),
                router="topk_softmax" if mt == "gpt_oss" else "softmax_topk",
                shared_expert_intermediate_size=int(config.get("shared_expert_intermediate_size") or 0)
                if mt == "qwen2_moe"
                else 0,
            )
            if mt == "gpt_oss":  # GptOssConfig defaults (configuration_gpt_oss.py)
                moe["swiglu_alpha"] = float(config.get("swiglu_alpha", 1.702))
                moe["swiglu_limit"] = float(config.get("swiglu_limit", 7.0))
        return cls(
            model_type=mt,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_parameters=tuple(sorted(rope.items())),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            layer_windows=windows,
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos,
            **moe,
        )
