"""GGUF architectures: metadata -> HF-style config, GGUF tensor names -> HF names, Q/K row order.

Supported: ``llama`` (also SmolLM, Mistral and Mixtral), ``qwen2`` and ``qwen3``, and the MoE
``qwen2moe`` / ``qwen3moe`` / ``gpt-oss``.

MoE (llama.cpp ``convert_hf_to_gguf.py Qwen2MoeModel`` / ``Qwen3MoeModel``): the router is
``ffn_gate_inp``, the experts are 3-D ``ffn_{gate,up,down}_exps`` (ggml ne [K, N, E]: numpy / HF
[E, N, K], each expert's rows contiguous), Qwen2-MoE's shared expert ``ffn_{gate,up,down}_shexp``
with its sigmoid gate ``ffn_gate_inp_shexp``. They map to transformers-5 style fused names
(``mlp.experts.gate_proj``...) which `jquant.formats.gguf.GGUF` splits per expert, losslessly.
The expert counts and widths come from ``{arch}.expert_count`` / ``expert_used_count`` /
``expert_feed_forward_length`` / ``expert_shared_feed_forward_length``; layers that keep a dense
``ffn_gate`` are the config's ``mlp_only_layers``. ``norm_topk_prob`` follows llama.cpp's graphs
(``llama-model.cpp``: qwen2moe does not renormalize the top-k weights, qwen3moe does).

Mixtral: llama.cpp writes it as ``general.architecture = "llama"`` (``convert_hf_to_gguf.py``:
``MixtralForCausalLM`` is registered on ``LlamaModel``, whose ``modify_tensors`` stacks
``block_sparse_moe.experts.{e}.w1/w2/w3`` into ``ffn_gate_exps`` / ``ffn_down_exps`` /
``ffn_up_exps`` and permutes Q/K like any llama) plus ``llama.expert_count`` /
``llama.expert_used_count``; the expert width is ``llama.feed_forward_length`` (HF
``intermediate_size``; no ``expert_feed_forward_length`` is written). A ``llama`` file with
``llama.expert_count`` is therefore `MIXTRAL` (HF ``MixtralForCausalLM``, module ``block_sparse_moe``,
experts ``w1`` / ``w3`` / ``w2``); llama.cpp's graph always renormalizes Mixtral's top-k weights,
as transformers does.

gpt-oss (``convert_hf_to_gguf.py GptOssModel``, `GPT_OSS`): MXFP4 experts repacked to GGML's
MXFP4 blocks, gate and up *split* out of HF's interleaved ``gate_up_proj`` into ``ffn_gate_exps`` /
``ffn_up_exps`` (rows ``0::2`` / ``1::2``, biases likewise), ``ffn_down_exps``, expert biases as 2-D
``ffn_*_exps.bias`` [E, N], the biased router ``ffn_gate_inp`` (HF ``mlp.router``), per-head
``attn_sinks.weight`` (HF parameter ``self_attn.sinks``) and ``post_attention_norm`` (HF
``post_attention_layernorm``). jquant re-interleaves gate and up per expert into HF's
``experts.{e}.gate_up_proj`` (a row gather of the concatenated blocks: lossless). Config: the
expert width is ``expert_feed_forward_length``; layers alternate sliding / full attention starting
with sliding (llama.cpp ``set_swa_pattern(2)``, GptOssConfig's default ``layer_types``), window
``attention.sliding_window``; YaRN from ``rope.scaling.*`` (``yarn_beta_fast`` / ``_slow`` when
written, else HF's 32 / 1). GGUF has no ``truncate`` flag; ggml's ``ggml_rope_yarn_corr_dims``
floors / ceils the correction range, which is HF's ``truncate=True`` (the default jquant keeps),
although the HF release's config says ``truncate: false``. The SwiGLU limit 7.0 and alpha 1.702
are constants of llama.cpp's graph (no metadata key), as in GptOssConfig.

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
    "MIXTRAL",
    "GPT_OSS",
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
        moe_module: the HF module of a layer's router and experts (``block_sparse_moe`` for Mixtral).
        expert_projs: the experts' HF (gate, up, down) projection names.
        router: the router's HF module name under ``moe_module``.
        block_names: (GGUF name, HF name) overrides of the per-block name table.
        gate_up_interleaved: gate and up are one HF ``gate_up_proj`` with interleaved rows (gpt-oss);
            GGUF's ``ffn_gate_exps`` / ``ffn_up_exps`` then map to ``experts.gate_up_proj.{gate,up}_<leaf>``
            and `jquant.formats.gguf.GGUF.convert_experts` interleaves them.
    """

    arch: str
    hf_class: str
    model_type: str
    permuted_qk: bool
    head_dim_key: str | None
    moe_module: str = "mlp"
    expert_projs: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    router: str = "gate"
    block_names: tuple[tuple[str, str], ...] = ()
    gate_up_interleaved: bool = False


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", "LlamaForCausalLM", "llama", True, "rope.dimension_count"),
    "qwen2": ArchSpec("qwen2", "Qwen2ForCausalLM", "qwen2", False, None),
    "qwen3": ArchSpec("qwen3", "Qwen3ForCausalLM", "qwen3", False, "attention.key_length"),
    "qwen2moe": ArchSpec("qwen2moe", "Qwen2MoeForCausalLM", "qwen2_moe", False, None),
    "qwen3moe": ArchSpec("qwen3moe", "Qwen3MoeForCausalLM", "qwen3_moe", False, "attention.key_length"),
    "gpt-oss": ArchSpec(
        "gpt-oss",
        "GptOssForCausalLM",
        "gpt_oss",
        False,
        "attention.key_length",
        expert_projs=("gate_up_proj", "gate_up_proj", "down_proj"),
        router="router",
        block_names=(("post_attention_norm", "post_attention_layernorm"), ("attn_sinks", "self_attn.sinks")),
        gate_up_interleaved=True,
    ),
}
GPT_OSS = ARCHS["gpt-oss"]
# A ``llama`` file with ``llama.expert_count`` (see the module docstring).
MIXTRAL = ArchSpec(
    "llama", "MixtralForCausalLM", "mixtral", True, "rope.dimension_count", "block_sparse_moe", ("w1", "w3", "w2")
)


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
    if arch == "llama" and "llama.expert_count" in metadata:
        return MIXTRAL
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
    if spec is MIXTRAL:  # MixtralConfig: the expert width is intermediate_size, every layer sparse
        cfg["num_local_experts"] = _num(metadata, f"{a}.expert_count", file)
        cfg["num_experts_per_tok"] = _num(metadata, f"{a}.expert_used_count", file)
        cfg["sliding_window"] = None  # llama.cpp runs Mixtral GGUFs without one (no such metadata key)
    elif spec is GPT_OSS:  # GptOssConfig (see the module docstring)
        n_layers = cfg["num_hidden_layers"]
        cfg["num_local_experts"] = _num(metadata, f"{a}.expert_count", file)
        cfg["num_experts_per_tok"] = _num(metadata, f"{a}.expert_used_count", file)
        ffn = cfg["intermediate_size"]
        cfg["intermediate_size"] = _num(metadata, f"{a}.expert_feed_forward_length", file, default=ffn)
        cfg["sliding_window"] = _num(metadata, f"{a}.attention.sliding_window", file)
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        cfg["swiglu_limit"], cfg["swiglu_alpha"] = 7.0, 1.702
        if cfg["rope_scaling"] is not None:
            for key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
                if f"{a}.rope.scaling.{key}" in metadata:
                    cfg["rope_scaling"][hf_key] = _num(metadata, f"{a}.rope.scaling.{key}", file, float)
    elif f"{a}.expert_count" in metadata:
        n_layers = cfg["num_hidden_layers"]
        cfg["num_experts"] = _num(metadata, f"{a}.expert_count", file)
        cfg["num_experts_per_tok"] = _num(metadata, f"{a}.expert_used_count", file)
        cfg["moe_intermediate_size"] = _num(metadata, f"{a}.expert_feed_forward_length", file)
        cfg["norm_topk_prob"] = spec.model_type == "qwen3_moe"
        cfg["decoder_sparse_step"] = 1
        cfg["mlp_only_layers"] = [i for i in range(n_layers) if f"blk.{i}.ffn_gate.weight" in tensor_names]
        if f"{a}.expert_shared_feed_forward_length" in metadata:
            cfg["shared_expert_intermediate_size"] = _num(metadata, f"{a}.expert_shared_feed_forward_length", file)
    if spec.arch == "llama":
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


# The MoE entries of `_BLOCK` whose module / projection names follow `ArchSpec.moe_module` / ``expert_projs``.
# None: the router; else the index into ``expert_projs``.
_MOE = {"ffn_gate_inp": None, "ffn_gate_exps": 0, "ffn_up_exps": 1, "ffn_down_exps": 2}


def hf_name(gguf_name: str, *, file: Any = None, spec: ArchSpec | None = None) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``.

    Args:
        gguf_name: the GGUF tensor name.
        file: for error messages.
        spec: the architecture; its ``moe_module`` / ``expert_projs`` name the router and the fused
            experts (``blk.0.ffn_gate_exps.weight`` -> ``model.layers.0.block_sparse_moe.experts.w1.weight``
            for `MIXTRAL`). None: the Qwen-MoE names (``mlp.gate``, ``mlp.experts.gate_proj``...).

    Raises:
        UnsupportedFormatError: a tensor name with no HF counterpart (e.g. fused ``attn_qkv``).
    """
    m = _BLK_RE.fullmatch(gguf_name)
    if m and spec is not None and m.group(2) in _MOE:
        j, leaf = _MOE[m.group(2)], m.group(3)
        if j is None:
            return f"model.layers.{m.group(1)}.{spec.moe_module}.{spec.router}.{leaf}"
        if spec.gate_up_interleaved and j < 2:  # one HF module, two GGUF halves (interleaved at convert)
            leaf = f"{('gate', 'up')[j]}_{leaf}"
        return f"model.layers.{m.group(1)}.{spec.moe_module}.experts.{spec.expert_projs[j]}.{leaf}"
    if m and spec is not None and m.group(2) in dict(spec.block_names):
        hf = dict(spec.block_names)[m.group(2)]
        if m.group(2) == "attn_sinks":  # a bare parameter in HF (GptOssAttention.sinks), ``.weight`` in GGUF
            return f"model.layers.{m.group(1)}.{hf}"
        return f"model.layers.{m.group(1)}.{hf}.{m.group(3)}"
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
