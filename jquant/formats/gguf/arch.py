"""GGUF architectures: metadata -> HF-style config, GGUF tensor names -> HF names, Q/K row order.

Supported: ``llama`` (also SmolLM and Mistral), ``qwen2`` and ``qwen3``, and the MoE ``qwen2moe`` /
``qwen3moe``.

MoE (llama.cpp ``convert_hf_to_gguf.py Qwen2MoeModel`` / ``Qwen3MoeModel``): the router is
``ffn_gate_inp``, the experts are 3-D ``ffn_{gate,up,down}_exps`` (ggml ne [K, N, E]: numpy / HF
[E, N, K], each expert's rows contiguous), Qwen2-MoE's shared expert ``ffn_{gate,up,down}_shexp``
with its sigmoid gate ``ffn_gate_inp_shexp``. They map to transformers-5 style fused names
(``mlp.experts.gate_proj``...) which `jquant.formats.gguf.GGUF` splits per expert, losslessly.
The expert counts and widths come from ``{arch}.expert_count`` / ``expert_used_count`` /
``expert_feed_forward_length`` / ``expert_shared_feed_forward_length``; layers that keep a dense
``ffn_gate`` are the config's ``mlp_only_layers``. ``norm_topk_prob`` follows llama.cpp's graphs
(``llama-model.cpp``: qwen2moe does not renormalize the top-k weights, qwen3moe does).

Mistral: llama.cpp's converter writes Mistral-7B-style models with ``general.architecture =
"llama"`` (``convert_hf_to_gguf.py``: ``MistralForCausalLM`` is registered on ``LlamaModel``;
gguf-py 0.19 has no plain ``mistral`` arch, only the different ``mistral3`` / ``mistral4``), and
llama.cpp runs them as llama (no sliding window), so jquant maps them to ``LlamaForCausalLM``.
transformers 5.24 switches to ``model_type="mistral"`` only when ``general.name == "mistral"``
exactly (it tests ``"mistral" in [name]``), and then fails to load the weights with gguf 0.19
("Unknown gguf model_type: mistral"); jquant does not copy that quirk.

The config follows transformers' GGUF loader (``modeling_gguf_pytorch_utils.load_gguf_checkpoint``
with ``integrations/ggml.py GGUF_CONFIG_MAPPING``), including its quirks, so that a jquant
checkpoint and ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` build the same model:

* ``head_dim`` is ``{arch}.rope.dimension_count`` for llama; qwen2 uses hidden / heads; qwen3 uses
  ``attention.key_length`` when present (llama.cpp writes it from the HF ``head_dim``), else
  hidden / heads as llama.cpp does. (transformers ignores key_length for qwen3 and relies on
  ``Qwen3Config``'s default head_dim of 128, which real Qwen3 checkpoints happen to use.)
* ``tie_word_embeddings`` is true exactly when the file has no ``output.weight``.

llama.cpp's ``convert_hf_to_gguf.py LlamaModel.modify_tensors`` permutes the rows of ``attn_q`` /
``attn_k`` weights and biases (HF rotate-half RoPE -> GGML interleaved RoPE); `qk_row_order` gives
the row gather that undoes it (transformers ``LlamaTensorProcessor._reverse_permute_weights``).
Qwen2/Qwen3 use NEOX-style RoPE in llama.cpp and are written unpermuted (``Qwen2Model`` does not
override ``modify_tensors``), verified by the transformers-load tests.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jquant.core.errors import ConfigError, UnsupportedFormatError

__all__ = [
    "ArchSpec",
    "ARCHS",
    "arch_spec",
    "hf_config",
    "hf_name",
    "qk_row_order",
    "llama3_rope_scaling",
    "NON_WEIGHTS",
]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What differs between the supported architectures.

    Attributes:
        arch: ``general.architecture`` value.
        hf_class: ``architectures[0]`` of the HF config.
        model_type: HF ``model_type``.
        permuted_qk: whether llama.cpp permuted the Q/K rows (llama family).
        head_dim_key: metadata key (after the arch prefix) holding head_dim, or None for hidden / heads.
    """

    arch: str
    hf_class: str
    model_type: str
    permuted_qk: bool
    head_dim_key: str | None


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "LlamaForCausalLM", "llama", True, "rope.dimension_count"),
    "qwen2": ArchSpec("qwen2", "Qwen2ForCausalLM", "qwen2", False, None),
    "qwen3": ArchSpec("qwen3", "Qwen3ForCausalLM", "qwen3", False, "attention.key_length"),
    "qwen2moe": ArchSpec("qwen2moe", "Qwen2MoeForCausalLM", "qwen2_moe", False, None),
    "qwen3moe": ArchSpec("qwen3moe", "Qwen3MoeForCausalLM", "qwen3_moe", False, "attention.key_length"),
}


def arch_spec(metadata: Mapping[str, Any], *, file: Any = None) -> ArchSpec:
    """The spec for this file's ``general.architecture``.

    Raises:
        UnsupportedFormatError: an architecture jquant does not map (naming it).
    """
    arch = metadata.get("general.architecture")
    if arch is None:
        raise ConfigError("metadata has no general.architecture", file=file, tensor="general.architecture")
    if not isinstance(arch, str):
        raise ConfigError(f"expected a string, got {type(arch).__name__}", file=file, tensor="general.architecture")
    if arch not in ARCHS:
        raise UnsupportedFormatError(
            f"GGUF architecture {arch!r} is not supported; supported: {sorted(ARCHS)}",
            file=file,
            tensor="general.architecture",
        )
    return ARCHS[arch]


def _num(
    metadata: Mapping[str, Any], key: str, file: Any, kind: type = int, default: Any = None, *, positive: bool = True
) -> Any:
    """A numeric metadata value (``kind`` int or float), ``default`` if absent (None: required)."""
    if key not in metadata:
        if default is None:
            raise ConfigError("required metadata key is missing", file=file, tensor=key)
        return default
    v = metadata[key]
    ok = (
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (kind is float or float(v).is_integer())
    )
    if not ok or (positive and v <= 0) or v < 0:
        raise ConfigError(
            f"expected a finite {'positive' if positive else 'non-negative'} {kind.__name__}, got {v!r}",
            file=file,
            tensor=key,
        )
    return kind(v)


def _rope_scaling(metadata: Mapping[str, Any], arch: str, file: Any) -> dict[str, Any] | None:
    """``{arch}.rope.scaling.*`` -> HF rope_scaling (linear / yarn), or None.

    Llama-3.1-style scaling is not in the metadata: llama.cpp bakes it into a ``rope_freqs.weight``
    tensor of per-frequency divisors, which `llama3_rope_scaling` turns back into HF's dict.
    """
    kind = metadata.get(f"{arch}.rope.scaling.type")
    if kind is None or (isinstance(kind, str) and kind == "none"):
        return None
    if not isinstance(kind, str):
        raise ConfigError(
            f"expected a string, got {type(kind).__name__}", file=file, tensor=f"{arch}.rope.scaling.type"
        )
    out: dict[str, Any] = {"rope_type": kind}
    if f"{arch}.rope.scaling.factor" in metadata:
        out["factor"] = _num(metadata, f"{arch}.rope.scaling.factor", file, float)
    if f"{arch}.rope.scaling.original_context_length" in metadata:
        key = f"{arch}.rope.scaling.original_context_length"
        out["original_max_position_embeddings"] = _num(metadata, key, file)
    return out


def llama3_rope_factors(theta: float, head_dim: int, scaling: Mapping[str, float]) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as ``rope_freqs.weight`` for Llama-3.1 rope scaling.

    Port of ``convert_hf_to_gguf.py LlamaModel.generate_extra_tensors`` (float32 frequencies,
    float64 arithmetic as in Python's math).
    """
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    freqs = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(
        np.float32
    )
    out = []
    for f in freqs.astype(np.float64):
        wavelen = 2 * np.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def llama3_rope_scaling(rope_freqs: np.ndarray, theta: float, head_dim: int) -> dict[str, Any] | None:
    """Recovers HF's llama3 ``rope_scaling`` from llama.cpp's ``rope_freqs`` tensor, or None.

    The tensor is a function of (factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings); factor is its maximum, and the other three are searched
    among the values Llama 3.x releases use. A match must reproduce every entry to 1e-6 relative.
    """
    r = np.asarray(rope_freqs, dtype=np.float32).ravel()
    if r.shape != (head_dim // 2,) or not np.isfinite(r).all():
        return None
    factor = float(r.max())
    for old in (8192, 4096, 16384, 32768, 2048, 131072):
        for low in (1.0, 2.0, 0.5):
            for high in (4.0, 2.0, 8.0, 1.0 + low):
                if high <= low:
                    continue
                cand = {
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": old,
                }
                if np.allclose(llama3_rope_factors(theta, head_dim, cand), r, rtol=1e-6, atol=0):
                    return cand
    return None


def hf_config(metadata: Mapping[str, Any], tensor_names: Collection[str], *, file: Any = None) -> dict[str, Any]:
    """An HF-style config dict from GGUF metadata (what transformers' GGUF loader derives).

    Args:
        metadata: the file's key -> value metadata.
        tensor_names: GGUF tensor names in the file (``output.weight`` decides tied embeddings).
        file: for error messages.

    Raises:
        UnsupportedFormatError: unknown architecture.
        ConfigError: a required key missing.
    """
    spec = arch_spec(metadata, file=file)
    a = spec.arch
    heads = _num(metadata, f"{a}.attention.head_count", file)
    hidden = _num(metadata, f"{a}.embedding_length", file)
    kv_key = f"{a}.attention.head_count_kv"
    if isinstance(metadata.get(kv_key), np.ndarray):  # per-layer list (hybrid models); dense models repeat one
        values = set(metadata[kv_key].tolist())
        if len(values) != 1:
            raise UnsupportedFormatError(f"per-layer values {sorted(values)} differ", file=file, tensor=kv_key)
        kv_heads = _num({kv_key: values.pop()}, kv_key, file)
    else:
        kv_heads = _num(metadata, kv_key, file, default=heads)
    head_dim = _num(metadata, f"{a}.{spec.head_dim_key}", file, default=hidden // heads) if spec.head_dim_key else None
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = _num(metadata, f"{a}.vocab_size", file, default=len(tokens) if isinstance(tokens, list) and tokens else -1)
    cfg: dict[str, Any] = {
        "architectures": [spec.hf_class],
        "model_type": spec.model_type,
        "hidden_size": hidden,
        "intermediate_size": _num(metadata, f"{a}.feed_forward_length", file),
        "num_hidden_layers": _num(metadata, f"{a}.block_count", file),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim if head_dim is not None else hidden // heads,
        "rms_norm_eps": _num(metadata, f"{a}.attention.layer_norm_rms_epsilon", file, float, 1e-6),
        "rope_theta": _num(metadata, f"{a}.rope.freq_base", file, float, 10000.0),
        "rope_scaling": _rope_scaling(metadata, a, file),
        "max_position_embeddings": _num(metadata, f"{a}.context_length", file),
        "vocab_size": None if vocab == -1 else vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    if f"{a}.expert_count" in metadata:
        n_layers = cfg["num_hidden_layers"]
        cfg["num_experts"] = _num(metadata, f"{a}.expert_count", file)
        cfg["num_experts_per_tok"] = _num(metadata, f"{a}.expert_used_count", file)
        cfg["moe_intermediate_size"] = _num(metadata, f"{a}.expert_feed_forward_length", file)
        cfg["norm_topk_prob"] = spec.model_type == "qwen3_moe"
        cfg["decoder_sparse_step"] = 1
        cfg["mlp_only_layers"] = [i for i in range(n_layers) if f"blk.{i}.ffn_gate.weight" in tensor_names]
        if f"{a}.expert_shared_feed_forward_length" in metadata:
            cfg["shared_expert_intermediate_size"] = _num(metadata, f"{a}.expert_shared_feed_forward_length", file)
    if spec.model_type == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensor_names
    for key, cfg_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
        ("unknown_token_id", "unk_token_id"),
    ):
        if f"tokenizer.ggml.{key}" in metadata:
            cfg[cfg_key] = _num(metadata, f"tokenizer.ggml.{key}", file, positive=False)
    return cfg


# GGUF name -> HF name (gguf-py tensor_mapping.py, the names transformers' loader maps through it).
_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    # MoE: router, fused experts (split per expert by GGUF.convert_module), Qwen2-MoE shared expert
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_BLK_RE = re.compile(r"blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)")
_TOP_RE = re.compile(r"([a-z_]+)\.(weight|bias)")
# Tensors llama.cpp writes that are not HF parameters: rope_freqs (Llama-3.1 rope scaling divisors,
# folded into config["rope_scaling"] by `jquant.formats.gguf.GGUF.from_metadata`).
NON_WEIGHTS = frozenset({"rope_freqs.weight"})


def hf_name(gguf_name: str, *, file: Any = None) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``.

    Raises:
        UnsupportedFormatError: a tensor name with no HF counterpart (e.g. fused ``attn_qkv``).
    """
    m = _BLK_RE.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.fullmatch(gguf_name)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    raise UnsupportedFormatError("tensor name has no HF counterpart in jquant's mapping", file=file, tensor=gguf_name)


def qk_row_order(gguf_name: str, n_rows: int, config: Mapping[str, Any], spec: ArchSpec) -> np.ndarray | None:
    """Row gather undoing llama.cpp's Q/K permutation: ``w_hf = w_gguf[order]``, or None if not permuted.

    llama.cpp (``LlamaModel.permute``) maps HF row ``h * hd + half * hd/2 + i`` to GGUF row
    ``h * hd + 2 i + half``; the inverse reshapes rows to (heads, 2, hd/2) from (heads, hd/2, 2).
    """
    if not spec.permuted_qk:
        return None
    m = _BLK_RE.fullmatch(gguf_name)
    if not m or m.group(2) not in ("attn_q", "attn_k"):
        return None
    heads = config["num_attention_heads"] if m.group(2) == "attn_q" else config["num_key_value_heads"]
    if n_rows % (2 * heads):
        raise ConfigError(f"{n_rows} rows do not split into {heads} heads of an even size", tensor=gguf_name)
    return np.arange(n_rows).reshape(heads, n_rows // heads // 2, 2).swapaxes(1, 2).reshape(n_rows)
