"""What a model needs, checked at convert time (numpy only): config numbers and the full set of tensors.

`check_config` refuses config numbers a model cannot run with: sizes that are not positive
integers, and ``rms_norm_eps`` / ``rope_theta`` / rope-scaling factors that are NaN, infinite,
zero or negative. It runs on every converted checkpoint (HF config.json, GGUF-derived config,
canonical folder).

`check_model` checks a converted Llama-family checkpoint against its config the way
`jquant.models.from_checkpoint` will read it: every decoder layer's full set of tensors present
(norms, q/k/v/o, gate/up/down; for Mixtral / Qwen2-MoE / Qwen3-MoE / gpt-oss the router and every expert's
gate/up/down in sparse layers), no layer beyond ``num_hidden_layers``, the embedding, final norm
and ``lm_head`` (unless tied), and every shape consistent with the config. A checkpoint that holds
the token embedding claims to be a whole model and is checked by `jquant.convert`
unless ``check_model=False`` (a bag of weights without one, as unit tests write, is not).

This module imports numpy only (`jquant.models.config.DecoderConfig` needs no JAX either, but its
package does); `SUPPORTED_MODEL_TYPES` mirrors it and a test keeps the two equal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError

__all__ = ["check_config", "check_model", "claims_whole_model", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2", "smollm3",
    "mixtral", "qwen3_moe", "qwen2_moe", "gpt_oss",
)  # fmt: skip

# MoE model types (mirrors `jquant.models.mixtral.MOE_NAMES` and `DecoderConfig.from_hf`): the sparse
# block's module name, its experts' (gate, up, down) names, and the config key of the expert width.
_MOE = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2"), "intermediate_size"),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj"), "moe_intermediate_size"),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj"), "moe_intermediate_size"),
}

# Config keys that, when present, must be positive integers / finite positive numbers.
_POSITIVE_INTS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
)
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta", "layer_norm_eps", "partial_rotary_factor")
_ROPE_FLOATS = ("factor", "low_freq_factor", "high_freq_factor", "rope_theta", "beta_fast", "beta_slow")
_ROPE_INTS = ("original_max_position_embeddings",)
_MAX_LAYERS = 100_000  # far beyond any model; keeps a hostile num_hidden_layers from looping for hours

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_config(config: Any, *, file: Any = None) -> None:
    """Refuses config numbers no model can run with (only keys that are present are checked).

    Raises:
        ConfigError: naming ``config.<key>``: not a positive integer / finite positive number.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config is a {type(config).__name__}, not a JSON object", file=file)
    for key in _POSITIVE_INTS:
        v = config.get(key)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{key}={v!r} must be a positive integer", file=file, tensor=f"config.{key}")
    if isinstance(config.get("num_hidden_layers"), int) and config["num_hidden_layers"] > _MAX_LAYERS:
        raise ConfigError(
            f"num_hidden_layers={config['num_hidden_layers']} exceeds jquant's limit of {_MAX_LAYERS}",
            file=file,
            tensor="config.num_hidden_layers",
        )
    for key in _POSITIVE_FLOATS:
        v = config.get(key)
        if v is None:
            continue
        if not _is_num(v) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{key}={v!r} must be a finite positive number", file=file, tensor=f"config.{key}")
    mt = config.get("model_type")
    if mt is not None and not isinstance(mt, str):
        raise ConfigError(f"model_type={mt!r} must be a string", file=file, tensor="config.model_type")
    for rkey in ("rope_scaling", "rope_parameters"):
        rope = config.get(rkey)
        if rope is None:
            continue
        if not isinstance(rope, Mapping):
            raise ConfigError(f"{rkey} must be an object, got {rope!r}", file=file, tensor=f"config.{rkey}")
        for key in _ROPE_FLOATS:
            v = rope.get(key)
            if v is not None and (not _is_num(v) or not math.isfinite(v) or v <= 0):
                raise ConfigError(
                    f"{key}={v!r} must be a finite positive number", file=file, tensor=f"config.{rkey}.{key}"
                )
        for key in _ROPE_INTS:
            v = rope.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"{key}={v!r} must be a positive integer", file=file, tensor=f"config.{rkey}.{key}")


def claims_whole_model(weights: Mapping[str, Any]) -> bool:
    """Whether the checkpoint holds the token embedding (then it claims to be a whole model)."""
    return "model.embed_tokens.weight" in weights


def _need(config: Mapping[str, Any], key: str, file: Any) -> int:
    v = config.get(key)
    if v is None:
        raise ConfigError(f"config has no {key!r}, which the model needs", file=file, tensor=f"config.{key}")
    return v


def _sparse_layer(config: Mapping[str, Any], i: int) -> bool:
    """Whether layer ``i`` of a MoE model has routed experts (Qwen3-MoE: ``decoder_sparse_step`` / ``mlp_only_layers``)."""
    step = config.get("decoder_sparse_step") or 1
    return i not in (config.get("mlp_only_layers") or ()) and (i + 1) % step == 0


def check_model(config: Mapping[str, Any], weights: Mapping[str, Any], *, file: Any = None) -> None:
    """Checks a converted Llama-family checkpoint against its config (see the module docstring).

    Args:
        config: the HF-style config (already through `check_config`).
        weights: HF name -> `QArray` / array / `ActQuant` (anything with ``.shape``).
        file: named in errors (the config file or GGUF file).

    Raises:
        UnsupportedFormatError: a ``model_type`` jquant does not run.
        ConfigError: a size the model needs is missing or inconsistent (heads vs kv heads).
        FormatError: a tensor missing, of the wrong shape, or a layer beyond ``num_hidden_layers``.
    """
    check_config(config, file=file)
    mt = config.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedFormatError(
            f"model_type {mt!r} is not a Llama-family decoder jquant runs (supported: {', '.join(SUPPORTED_MODEL_TYPES)});"
            " jquant.convert(..., check_model=False) / jquant convert --weights-only converts the weights anyway",
            file=file,
            tensor="config.model_type",
        )
    hidden, heads = _need(config, "hidden_size", file), _need(config, "num_attention_heads", file)
    inter, layers = _need(config, "intermediate_size", file), _need(config, "num_hidden_layers", file)
    vocab = _need(config, "vocab_size", file)
    kv = config.get("num_key_value_heads") or heads
    if heads % kv:
        raise ConfigError(
            f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}",
            file=file,
            tensor="config.num_key_value_heads",
        )
    if config.get("head_dim") is None and hidden % heads:
        raise ConfigError(
            f"hidden_size={hidden} does not split into {heads} heads and there is no head_dim",
            file=file,
            tensor="config.head_dim",
        )
    d = config.get("head_dim") or hidden // heads

    def shape_of(name: str) -> tuple[int, ...] | None:
        w = weights.get(name)
        return None if w is None else tuple(int(s) for s in w.shape)

    def expect(name: str, shape: tuple[int, ...], why: str) -> None:
        got = shape_of(name)
        if got is None:
            raise FormatError(f"tensor missing from the checkpoint ({why})", file=file, tensor=name)
        if got != shape:
            raise FormatError(f"shape {list(got)} but the config needs {list(shape)} ({why})", file=file, tensor=name)

    def maybe(name: str, shape: tuple[int, ...], why: str) -> None:
        if name in weights:
            expect(name, shape, why)

    expect("model.embed_tokens.weight", (vocab, hidden), "vocab_size x hidden_size")
    expect("model.norm.weight", (hidden,), "hidden_size")
    if "lm_head.weight" in weights or not config.get("tie_word_embeddings", False):
        expect("lm_head.weight", (vocab, hidden), "vocab_size x hidden_size; tie_word_embeddings is false")
    for i in range(layers):
        p = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            expect(f"{p}.{norm}.weight", (hidden,), "hidden_size")
        for proj, n in (("q", heads * d), ("k", kv * d), ("v", kv * d)):
            why = f"{'num_attention_heads' if proj == 'q' else 'num_key_value_heads'} x head_dim, hidden_size"
            expect(f"{p}.self_attn.{proj}_proj.weight", (n, hidden), why)
            maybe(f"{p}.self_attn.{proj}_proj.bias", (n,), why)
        expect(f"{p}.self_attn.o_proj.weight", (hidden, heads * d), "hidden_size, num_attention_heads x head_dim")
        maybe(f"{p}.self_attn.o_proj.bias", (hidden,), "hidden_size")
        if f"{p}.self_attn.q_norm.weight" in weights or f"{p}.self_attn.k_norm.weight" in weights:
            for qk in ("q", "k"):
                expect(f"{p}.self_attn.{qk}_norm.weight", (d,), "head_dim; q_norm and k_norm come together")
        if mt == "gpt_oss":  # jquant.models.gpt_oss: biased router, fused gate_up per expert, biases
            n_exp, width = _need(config, "num_local_experts", file), inter
            expect(f"{p}.self_attn.sinks", (heads,), "num_attention_heads (attention sinks)")
            expect(f"{p}.mlp.router.weight", (n_exp, hidden), "num_local_experts x hidden_size (the router)")
            expect(f"{p}.mlp.router.bias", (n_exp,), "num_local_experts")
            for j in range(n_exp):
                e = f"{p}.mlp.experts.{j}"
                expect(f"{e}.gate_up_proj.weight", (2 * width, hidden), "2 x intermediate_size, hidden_size")
                expect(f"{e}.gate_up_proj.bias", (2 * width,), "2 x intermediate_size")
                expect(f"{e}.down_proj.weight", (hidden, width), "hidden_size, intermediate_size")
                expect(f"{e}.down_proj.bias", (hidden,), "hidden_size")
            continue
        if mt == "qwen2_moe" and _sparse_layer(config, i):  # the shared expert beside the routed ones
            shared = _need(config, "shared_expert_intermediate_size", file)
            for proj, shape in (("gate", (shared, hidden)), ("up", (shared, hidden)), ("down", (hidden, shared))):
                expect(f"{p}.mlp.shared_expert.{proj}_proj.weight", shape, "shared_expert_intermediate_size")
            expect(f"{p}.mlp.shared_expert_gate.weight", (1, hidden), "1 x hidden_size")
        if mt in _MOE and _sparse_layer(config, i):
            module, (g, u, dn), width_key = _MOE[mt]
            n_exp, width = (
                config.get("num_local_experts") or _need(config, "num_experts", file),
                _need(config, width_key, file),
            )
            expect(f"{p}.{module}.gate.weight", (n_exp, hidden), "num_experts x hidden_size (the router)")
            for j in range(n_exp):
                for proj, shape in ((g, (width, hidden)), (u, (width, hidden)), (dn, (hidden, width))):
                    expect(f"{p}.{module}.experts.{j}.{proj}.weight", shape, f"{width_key}, hidden_size")
            continue
        for proj, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)), ("down", (hidden, inter))):
            expect(f"{p}.mlp.{proj}_proj.weight", shape, "intermediate_size, hidden_size")
            maybe(f"{p}.mlp.{proj}_proj.bias", shape[:1], "intermediate_size, hidden_size")
    for name in weights:
        m = _LAYER_RE.match(name)
        if m and int(m.group(1)) >= layers:
            raise FormatError(
                f"layer {int(m.group(1))} is present but num_hidden_layers is {layers}", file=file, tensor=name
            )
