"""jquant.models: Flax NNX causal LMs built from a converted `Checkpoint`, and generation.

>>> ckpt = jquant.convert("SmolLM2-135M-Instruct.Q4_1.gguf")
>>> model = jquant.models.from_checkpoint(ckpt)       # weights stay quantized on device
>>> logits = model(jnp.asarray([[1, 2, 3]]))          # [1, 3, vocab] float32
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp

from jquant.convert.checkpoint import Checkpoint
from jquant.models.config import SUPPORTED_MODEL_TYPES, DecoderConfig
from jquant.models.generate import Generator, SamplingConfig, generate
from jquant.models.gpt_oss import GptOssForCausalLM
from jquant.models.kv_cache import KVCache
from jquant.models.kv_quant import KV_CACHE_DTYPES, kv_quant_from_metadata
from jquant.models.llama import LlamaForCausalLM
from jquant.models.mixtral import MoeForCausalLM
from jquant.nn.weights import Weights

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "KV_CACHE_DTYPES",
    "DecoderConfig",
    "Generator",
    "GptOssForCausalLM",
    "KVCache",
    "LlamaForCausalLM",
    "MoeForCausalLM",
    "SamplingConfig",
    "default_dtype",
    "from_checkpoint",
    "generate",
]


def default_dtype():
    """float32 on CPU (XLA:CPU has no fast bf16 matmul), bfloat16 on accelerators (where computations
    are placed now: `jquant.ops.device.default_platform`)."""
    from jquant.ops.device import default_platform

    return jnp.float32 if default_platform() == "cpu" else jnp.bfloat16


def from_checkpoint(
    ckpt: Checkpoint,
    *,
    dtype=None,
    strict: bool = False,
    scan_layers: bool | None = None,
    fuse_projections: bool = True,
    mesh=None,
    rules=None,
    quantize=None,
    kv_cache_dtype: str = "auto",
    kv_cache_scales: str | float = "auto",
) -> LlamaForCausalLM:
    """The Flax model for ``ckpt``'s architecture, with its weights on the default device.

    `LlamaForCausalLM` for the dense Llama family; `MoeForCausalLM` for Mixtral and
    Qwen2/3-MoE; `GptOssForCausalLM` for gpt-oss.

    Quantized weights move to the device as `QArray` pytrees (codes stay packed); float tensors are
    cast to ``dtype``. Nothing is dequantized whole: matmuls and embedding lookups go through
    `jquant.ops`.

    Args:
        ckpt: from `jquant.convert`.
        dtype: activation / float-weight dtype (default: `default_dtype`).
        strict: raise if the checkpoint holds tensors the model does not use (default: warn; extra
            tensors such as KV-cache scales may be legitimate).
        scan_layers: run identical decoder layers under ``lax.scan`` (None: on the CPU whenever
            they are identical in structure, unrolled on a GPU; see `LlamaForCausalLM`).
        fuse_projections: q/k/v and gate/up (experts' too) as one stacked matmul each where their
            weights stack losslessly (same code type and scale layout, same act-order permutation).
        mesh: a ``jax.sharding.Mesh`` to split the model over (tensor / expert parallel,
            `jquant.parallel`): each weight is placed directly on its shards while loading, the
            KV cache is split by heads. None: one device.
        rules: with ``mesh``, the `jquant.parallel.Rules` (default ``LLAMA_RULES``).
        quantize: a `jquant.quantize` scheme name (``"fp8"``, ``"w4a16-g128"``...) or `Scheme`:
            quantize ``ckpt``'s float linear weights online, one at a time as the model loads
            (`jquant.quantize.QuantizedWeights`), so the whole float model is never held.
        kv_cache_dtype: ``"auto"`` (the model dtype), ``"fp8_e4m3"``, ``"fp8_e5m2"`` or ``"int8"``:
            the KV cache holds codes and attention dequantizes them inside (`jquant.models.kv_quant`).
        kv_cache_scales: ``"auto"`` (the checkpoint's ``metadata["kv_cache"]`` scales when they are
            for ``kv_cache_dtype``, else computed on the first prefill), ``"checkpoint"``,
            ``"prefill"``, or a float used for every layer and head.

    Raises:
        UnsupportedFormatError / ConfigError: an architecture or config outside the Llama family.
        FormatError: a tensor missing or of the wrong shape, named.
    """
    cfg = DecoderConfig.from_hf(ckpt.config)
    weights = ckpt.weights
    if quantize is not None:
        from jquant.quantize import QuantizedWeights

        weights = QuantizedWeights(ckpt.weights, quantize, file=ckpt.metadata.get("source"))
    if mesh is None:
        w = Weights(weights, dtype or default_dtype(), source=ckpt.metadata.get("source"))
    else:
        from jquant.parallel import LLAMA_RULES, ShardedWeights

        rules = rules or LLAMA_RULES
        w = ShardedWeights(
            weights, dtype or default_dtype(), mesh=mesh, rules=rules, source=ckpt.metadata.get("source")
        )
    model_cls = MoeForCausalLM if cfg.num_experts else LlamaForCausalLM  # mixtral, qwen2_moe, qwen3_moe
    if cfg.model_type == "gpt_oss":
        model_cls = GptOssForCausalLM
    model = model_cls(cfg, w, scan_layers=scan_layers, fuse_projections=fuse_projections)
    model.kv_quant = kv_quant_from_metadata(
        kv_cache_dtype,
        ckpt.metadata.get("kv_cache"),
        cfg.num_hidden_layers,
        cfg.num_key_value_heads,
        scales=kv_cache_scales,
    )
    if mesh is not None:  # stacked layers re-placed with their layer axis; KV cache split by heads
        from jquant.parallel import shard

        shard(model, mesh, rules)
    # Rotary tables recomputed by HF are sometimes saved; everything else must be used.
    left = [n for n in w.unused() if not n.endswith("rotary_emb.inv_freq")]
    if left:
        msg = f"{len(left)} checkpoint tensors not used by {cfg.model_type}: {left[:8]}"
        if strict:
            from jquant.core.errors import FormatError

            raise FormatError(msg, file=ckpt.metadata.get("source"), tensor=left[0])
        warnings.warn(msg, stacklevel=2)
    return model
