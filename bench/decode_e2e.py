"""``python -m bench.decode_e2e``: end-to-end decode tokens/s of a Llama-3-8B-shaped model, W4A16 / FP8 vs bf16.

Every variant is the same jquant `LlamaForCausalLM` (Llama-3.1-8B geometry, llama3 rotary
scaling, untied lm_head) with random weights built on the device with ``jax.random`` (never
through host numpy):

* ``w4a16``: every linear layer of the decoder blocks (q/k/v/o, gate/up/down) is a 4-bit
  ``uint4b8`` group-128 `QArray` with fp16 scales (``bench.qmatmul.make_qarray``: GPTQ's layout);
  embeddings, norms and lm_head stay bf16, as in GPTQ checkpoints.
* ``fp8_dynamic`` (``--variants``; FP8_DYNAMIC checkpoints, e.g. llm-compressor's): every block
  linear is an fp8 e4m3 per-channel `QArray` with f32 scales (``bench.qmatmul_w8a8.make_weight``)
  and a dynamic per-token fp8 `ActQuant` under ``<module>.input_quant``; embeddings, norms and
  lm_head stay bf16.
* ``bf16``: every linear weight is a dense bf16 array (normal * 0.02); jquant runs it as an XLA
  dot with f32 accumulation.

What is measured: the jquant `Generator` (greedy, batch 1) generates ``--tokens`` tokens after a
random ``--prompt-len`` prompt. One full call compiles and warms up prefill and the decode step;
then ``--repeats`` timed calls stamp the host clock as each token reaches the host (the
Generator's ``on_token`` callback, which runs after the token was copied back, so the device
work of that step is done). Prefill ms = call start to the first token (cache allocation, prompt
upload, prefill and its sampled token). Decode tok/s = (tokens - 1) / (last stamp - first stamp):
the steady per-step cost as a user sees it, dispatch and the per-token device->host copy
included; compilation and prefill excluded. The median run is reported.

KV cache (``--kv-cache-dtype auto,fp8_e4m3``; default ``auto``, the model dtype): each weight
variant runs once per listed cache dtype (`jquant.models.kv_quant`: fp8 / int8 codes with
per-KV-head scales computed on the first prefill, as vLLM's ``calculate_kv_scales``), each with
its own Generator, and every row reports the cache's bytes for its ``max_len`` slots
(`jquant.models.kv_cache.cache_bytes`, batch 1), which the decode step's attention reads in full.
Long contexts: ``--prompt-len 4096`` / ``16384`` (the prompt is one prefill call; the ``small``
preset keeps its [heads, T, S] f32 attention scores near 9 GB at 16k).

Backends: the table names the qmatmul backend the dispatcher (`jquant.ops.qmatmul.select`)
picks for the decode linears (x [1, 1, K] bf16), cross-checked against the ``jquant_qmatmul_*``
named scopes in the lowered decode step. ``--backends a,b`` runs the w4a16 model once per
backend, each with ``JQUANT_KERNELS`` set to that backend first and the dispatcher's usual order
after it (so shapes it declines, e.g. M > 16 prefill for the CUDA decode kernel, still run), each
with its own Generator, hence its own compilation.

Writes ``decode_e2e.md`` and ``decode_e2e.json`` (card, versions, commit first) into ``--out``
(default ``bench/results/<card>/``) and prints the table last::

    python -m bench.decode_e2e [--preset llama3-8b|tiny] [--tokens 64] [--prompt-len 16]
        [--layers N] [--repeats 3] [--backends cuda_w4a16_decode,pallas_triton_wna16_decode]
        [--variants bf16,w4a16,fp8_dynamic] [--kv-cache-dtype auto,fp8_e4m3] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from bench.env import _log, card_slug, env_info

ROOT = Path(__file__).resolve().parents[1]

# HF config.json of meta-llama/Llama-3.1-8B (the fields the decoder reads).
LLAMA3_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

PRESETS: dict[str, dict] = {
    "llama3-8b": LLAMA3_8B,
    # GPU long-context KV-cache runs (4k / 16k prompts in minutes): Llama-3 structure (GQA 4:1,
    # head_dim 128, llama3 rope) at a quarter of the width and 4 layers; 8 query heads keep the
    # prefill's f32 attention scores [8, 16k, 16k] at ~9 GB. Per layer the bf16 KV cache at 16k
    # (17 MB) is about half the bf16 weights (30 MB), as the 8B model's is at 64k.
    "small": {
        **LLAMA3_8B,
        "vocab_size": 32768,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
    },
    # The README's default model (SmolLM2-135M-Instruct, its GGUF's shapes): hidden 576 is not a
    # multiple of the CUDA kernels' 128-column step, so its Q4_1 linears take the Pallas wxa16 path.
    "smollm2-135m": {
        **LLAMA3_8B,
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "rope_theta": 100000.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
    },
    # CPU tests: same structure (GQA, llama3 rope, untied head), every K a multiple of the group (128).
    "tiny": {
        **LLAMA3_8B,
        "vocab_size": 1024,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
}

# Weight-only variants of other code types (GGUF / bitsandbytes / OCP / NVIDIA layouts, issue 15):
# every block linear is a random weight of that `bench.qmatmul_wxa16.KINDS` kind.
WEIGHT_KINDS = ("q4_0", "q4_1", "q4_k", "nf4", "mxfp4", "nvfp4")
VARIANTS = ("bf16", "w4a16", "fp8_dynamic", *WEIGHT_KINDS)
DEFAULT_KV_CACHE_DTYPES = ("auto",)
DEFAULT_VARIANTS = ("bf16", "w4a16")
GROUP = 128
LINEARS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)
DENSE_BACKEND = "xla_dot_bf16"  # what jquant runs for a dense weight (jnp.einsum, f32 accumulation)


def make_config(preset: str = "llama3-8b", layers: int | None = None):
    """The `DecoderConfig` of a preset (``--layers`` overrides the layer count).

    Args:
        preset: a key of `PRESETS`.
        layers: number of decoder layers, or None for the preset's.

    Returns:
        The validated `DecoderConfig`.
    """
    from jquant.models.config import DecoderConfig

    hf = dict(PRESETS[preset])
    if layers is not None:
        hf["num_hidden_layers"] = int(layers)
    return DecoderConfig.from_hf(hf)


def linear_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(out, in) of each decoder-block linear layer by short name (``q_proj`` ...)."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    return {
        "q_proj": (nh * d, h),
        "k_proj": (nkv * d, h),
        "v_proj": (nkv * d, h),
        "o_proj": (h, nh * d),
        "gate_proj": (i, h),
        "up_proj": (i, h),
        "down_proj": (h, i),
    }


class RandomWeights(Mapping):
    """HF name -> random device tensor, made on access (nothing is kept: the model holds what it uses).

    Args:
        cfg: the decoder geometry.
        variant: ``"w4a16"`` (block linears as uint4b8 g128 QArrays), ``"fp8_dynamic"`` (fp8
            per-channel QArrays + per-token fp8 ``input_quant`` recipes) or ``"bf16"`` (all dense).
        seed: base PRNG seed; each tensor folds in its own index, so values do not depend on order.
    """

    def __init__(self, cfg, variant: str, seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.cfg, self.variant, self.seed = cfg, variant, seed
        h, v = cfg.hidden_size, cfg.vocab_size
        shapes = linear_shapes(cfg)
        spec: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("dense", (v, h))}
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}"
            spec[f"{p}.input_layernorm.weight"] = ("norm", (h,))
            spec[f"{p}.post_attention_layernorm.weight"] = ("norm", (h,))
            for block, name in LINEARS:
                kind = {"w4a16": "q4", "fp8_dynamic": "fp8"}.get(variant, "dense")
                kind = f"wx:{variant}" if variant in WEIGHT_KINDS else kind
                spec[f"{p}.{block}.{name}.weight"] = (kind, shapes[name])
                if kind == "fp8":
                    spec[f"{p}.{block}.{name}.input_quant"] = ("act", ())
        spec["model.norm.weight"] = ("norm", (h,))
        spec["lm_head.weight"] = ("dense", (v, h))  # bf16 in both variants, as in GPTQ checkpoints
        self._spec = spec
        self._index = {name: i for i, name in enumerate(spec)}

    def __getitem__(self, name: str):
        import jax
        import jax.numpy as jnp

        from bench.qmatmul import make_qarray

        kind, shape = self._spec[name]
        key = jax.random.fold_in(jax.random.key(self.seed), self._index[name])
        if kind == "q4":
            return make_qarray(key, shape[0], shape[1], bits=4, group=GROUP, zero=False)
        if kind.startswith("wx:"):
            from bench.qmatmul_wxa16 import KINDS, make_weight

            return make_weight(key, shape[0], shape[1], KINDS[kind[3:]])
        if kind in ("fp8", "act"):
            return fp8_linear(key, shape[0], shape[1]) if kind == "fp8" else fp8_linear_act()
        if kind == "norm":
            return jnp.ones(shape, jnp.bfloat16)
        return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(jnp.bfloat16)

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec)

    def __len__(self) -> int:
        return len(self._spec)

    def __contains__(self, name: object) -> bool:
        return name in self._spec


def fp8_linear(key, n: int, k: int):
    """A random fp8 e4m3 per-channel `QArray` [n, k] with f32 scales (FP8_DYNAMIC's weights)."""
    from bench.qmatmul_w8a8 import SCHEMES_BY_NAME, make_weight

    return make_weight(key, n, k, SCHEMES_BY_NAME["fp8_pc"])


def fp8_linear_act():
    """FP8_DYNAMIC's input-activation recipe: dynamic per-token fp8 e4m3."""
    from jquant.core.activation import fp8_act

    return fp8_act(dynamic=True, granularity="token")


def decode_weight(variant: str, n: int, k: int):
    """(weight as a ShapeDtypeStruct pytree, activation recipe or None) of one linear of ``variant``."""
    import jax

    from bench.qmatmul import make_qarray

    if variant == "fp8_dynamic":
        return jax.eval_shape(functools.partial(fp8_linear, n=n, k=k), jax.random.key(0)), fp8_linear_act()
    if variant in WEIGHT_KINDS:
        from bench.qmatmul_wxa16 import KINDS, make_weight

        return jax.eval_shape(functools.partial(make_weight, n=n, k=k, kind=KINDS[variant]), jax.random.key(0)), None
    make = functools.partial(make_qarray, n=n, k=k, bits=4, group=GROUP, zero=False)
    return jax.eval_shape(make, jax.random.key(0)), None


def device_weights(weights: Mapping, dtype):
    """A `jquant.nn.Weights` whose tensors are already device arrays (jax arrays / QArrays of them).

    `jquant.nn.weights.to_device` takes host numpy (``np.asarray`` would copy a jax array back to
    the host); this subclass keeps device tensors on the device and only casts dense floats.
    """
    import jax
    import jax.numpy as jnp

    from jquant.core.errors import FormatError
    from jquant.core.qarray import QArray
    from jquant.nn import Weights

    class DeviceWeights(Weights):
        def get(self, name, shape=None):
            w = self.raw(name)
            if shape is not None and tuple(w.shape) != tuple(shape):
                raise FormatError(f"shape {tuple(w.shape)}, expected {tuple(shape)}", file=self.source, tensor=name)
            if isinstance(w, QArray):
                return w
            if isinstance(w, jax.Array) and jnp.issubdtype(w.dtype, jnp.floating):
                return w.astype(dtype)
            return super().get(name, shape)

    return DeviceWeights(weights, dtype, source="random weights (bench.decode_e2e)")


def build_model(cfg, variant: str, seed: int = 0, scan_layers: bool | None = None, decode_attention: str = "xla"):
    """The jquant `LlamaForCausalLM` with random weights of ``variant``, bf16 compute.

    ``scan_layers``: the model's stacked-layers switch (None: the model's default);
    ``decode_attention``: `LlamaForCausalLM.set_decode_attention`.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jquant.models.llama import LlamaForCausalLM

    w = device_weights(RandomWeights(cfg, variant, seed), jnp.bfloat16)
    model = LlamaForCausalLM(cfg, w, scan_layers=scan_layers)
    model.set_decode_attention(decode_attention)
    if w.unused():
        raise RuntimeError(f"weights not used by the model: {w.unused()[:5]}")
    jax.block_until_ready(nnx.state(model))
    return model


def select_backends(cfg, m: int, variant: str = "w4a16") -> dict[str, str]:
    """Backend the dispatcher picks (now, under the current ``JQUANT_KERNELS``) per linear of ``variant``, for M=m rows."""
    import jax
    import jax.numpy as jnp

    from jquant.ops.qmatmul import select

    out = {}
    for name, (n, k) in linear_shapes(cfg).items():
        w, act = decode_weight(variant, n, k)
        x = jax.ShapeDtypeStruct((1, m, k), jnp.bfloat16)
        out[name] = select(x, w, act).backend.name
    return out


def select_skips(cfg, variant: str = "w4a16") -> list[str]:
    """The dispatcher's reasons for skipping backends on the decode q_proj (x [1, 1, hidden] bf16)."""
    import jax
    import jax.numpy as jnp

    from jquant.ops.qmatmul import select

    n, k = linear_shapes(cfg)["q_proj"]
    w, act = decode_weight(variant, n, k)
    return list(select(jax.ShapeDtypeStruct((1, 1, k), jnp.bfloat16), w, act).skipped)


def explain_decode(cfg, variant: str = "w4a16") -> str:
    """`jquant.ops.qmatmul.explain` for the decode q_proj (x [1, 1, hidden] bf16): who runs, who declined."""
    import jax
    import jax.numpy as jnp

    from jquant.ops.qmatmul import explain

    n, k = linear_shapes(cfg)["q_proj"]
    w, act = decode_weight(variant, n, k)
    return explain(jax.ShapeDtypeStruct((1, 1, k), jnp.bfloat16), w, act)


def summarize(names: Mapping[str, str]) -> str:
    """``a`` when every linear uses ``a``; else ``a (q_proj, ...) + b (...)``."""
    by: dict[str, list[str]] = {}
    for lin, b in names.items():
        by.setdefault(b, []).append(lin)
    if len(by) == 1:
        return next(iter(by))
    return " + ".join(f"{b} ({', '.join(lins)})" for b, lins in by.items())


def lowered_backends(gen, batch: int, max_len: int) -> list[str]:
    """qmatmul backends named in the lowered decode step (its ``jquant_qmatmul_<name>`` named scopes)."""
    import jax
    import jax.numpy as jnp

    from jquant.models.generate import SamplingConfig

    cache = gen.model.init_cache(batch, max_len)
    token = jnp.zeros((batch,), jnp.int32)
    keys = jax.random.split(jax.random.key(0), batch)  # one key per row (batched generation)
    lowered = gen._step.lower(gen.state, token, cache, keys, sampling=SamplingConfig())
    try:
        text = lowered.as_text(debug_info=True)
    except TypeError:  # a jax without the keyword
        text = lowered.as_text()
    return sorted(set(re.findall(r"jquant_qmatmul_(\w+?)(?:/|\"|$)", text)))


@contextlib.contextmanager
def forced_backend(name: str | None, platform: str) -> Iterator[None]:
    """``JQUANT_KERNELS`` = ``name`` first, then every other backend of ``platform`` in dispatcher order.

    None leaves the dispatcher alone (``JQUANT_KERNELS`` unset). The variable is read when a
    qmatmul is traced, so a Generator compiled inside this block keeps that choice.
    """
    from jquant.ops.backend import available_backends
    from jquant.ops.qmatmul import load_kernel_packages

    old = os.environ.pop("JQUANT_KERNELS", None)
    try:
        if name is not None:
            load_kernel_packages(platform)
            rest = [b.name for b in available_backends(platform) if b.name != name]
            os.environ["JQUANT_KERNELS"] = ",".join([name, *rest])
        yield
    finally:
        os.environ.pop("JQUANT_KERNELS", None)
        if old is not None:
            os.environ["JQUANT_KERNELS"] = old


def time_generate(gen, prompt: np.ndarray, tokens: int, repeats: int) -> dict:
    """Warm-up call, then ``repeats`` timed calls; the median-rate run's numbers.

    Returns:
        dict with ``decode_tok_s``, ``ms_per_token``, ``prefill_ms``, ``compile_s`` (first call),
        ``all_tok_s`` and ``tokens_out`` (the generated ids of the last run).
    """
    t0 = time.perf_counter()
    gen(prompt, max_new_tokens=tokens)  # compiles prefill + decode step
    compile_s = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        stamps: list[float] = []
        t0 = time.perf_counter()
        out = gen(prompt, max_new_tokens=tokens, on_token=lambda t, s=stamps: s.append(time.perf_counter()))
        if out.shape[1] != tokens or len(stamps) != tokens:
            raise RuntimeError(f"asked for {tokens} tokens, got {out.shape[1]}")
        decode_s = stamps[-1] - stamps[0]
        runs.append(
            dict(
                decode_tok_s=(tokens - 1) / decode_s,
                ms_per_token=1e3 * decode_s / (tokens - 1),
                prefill_ms=1e3 * (stamps[0] - t0),
                tokens_out=out,
            )
        )
    runs.sort(key=lambda r: r["decode_tok_s"])
    best = dict(runs[len(runs) // 2])
    best["all_tok_s"] = [round(r["decode_tok_s"], 2) for r in runs]
    best["prefill_ms_median"] = statistics.median(r["prefill_ms"] for r in runs)
    best["compile_s"] = compile_s
    return best


def run(
    preset: str = "llama3-8b",
    tokens: int = 64,
    prompt_len: int = 16,
    layers: int | None = None,
    backends: list[str] | None = None,
    repeats: int = 3,
    seed: int = 0,
    scan_layers: bool | None = None,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    kv_cache_dtypes: tuple[str, ...] = DEFAULT_KV_CACHE_DTYPES,
    decode_attention: str = "xla",
) -> dict:
    """Builds, runs and times each variant; returns the result dict written to JSON.

    Args:
        preset: `PRESETS` key.
        tokens: new tokens per generate call (>= 2: the decode rate needs two stamps).
        prompt_len: random prompt length.
        layers: decoder layer count override.
        backends: w4a16 rows, one per forced qmatmul backend (None: one row, the dispatcher's pick).
        repeats: timed generate calls per row (median reported).
        seed: weights / prompt seed.
        variants: `VARIANTS` to run (bf16 always runs first: the ratios' baseline).
        kv_cache_dtypes: `jquant.models.kv_quant.KV_CACHE_DTYPES` to run each variant with, in
            order (the first bf16 row is the ratios' baseline); scales from the first prefill.
        decode_attention: how every variant's decode steps attend ("xla" or "pallas").
    """
    import jax

    from jquant.models.generate import CACHE_BUCKET, PROMPT_BUCKET, Generator, model_bytes
    from jquant.models.kv_cache import cache_bytes
    from jquant.models.kv_quant import KV_CACHE_DTYPES, kv_quant_from_metadata
    from jquant.ops.qmatmul import load_kernel_packages

    if tokens < 2:
        raise ValueError("--tokens must be >= 2 (the decode rate is measured between the first and last token)")
    if not kv_cache_dtypes or set(kv_cache_dtypes) - set(KV_CACHE_DTYPES):
        raise ValueError(f"kv_cache_dtypes {kv_cache_dtypes} must be a non-empty subset of {KV_CACHE_DTYPES}")
    platform = jax.default_backend()
    kernel_packages = load_kernel_packages(platform)
    cfg = make_config(preset, layers)
    prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(1, prompt_len), dtype=np.int32)
    t_pad = -(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET
    max_len = -(-(t_pad + tokens) // CACHE_BUCKET) * CACHE_BUCKET
    rows = []
    variants = ("bf16", *(v for v in variants if v != "bf16"))
    for variant in variants:
        t0 = time.perf_counter()
        model = build_model(cfg, variant, seed, scan_layers, decode_attention)
        build_s = time.perf_counter() - t0
        held, _ = model_bytes(model)
        read = held - 2 * cfg.vocab_size * cfg.hidden_size  # a decode step reads every weight but the embedding
        _log(f"[{variant}] built in {build_s:.1f} s: {held / 1e9:.2f} GB of weights on {jax.devices()[0]}")
        forced = list(backends) if variant == "w4a16" and backends else [None]
        quant = variant != "bf16"
        for kv_dtype, name in ((kv, n) for kv in kv_cache_dtypes for n in forced):
            # "auto": the model dtype (None); else codes with per-head scales from the first prefill.
            model.kv_quant = kv_quant_from_metadata(kv_dtype, None, cfg.num_hidden_layers, cfg.num_key_value_heads)
            kv_bytes = cache_bytes(model, 1, max_len)
            with forced_backend(name, platform):
                gen = Generator(model)
                picked = select_backends(cfg, 1, variant) if quant else {}
                prefill_picked = select_backends(cfg, t_pad, variant) if quant else {}
                res = time_generate(gen, prompt, tokens, repeats)
                seq = np.concatenate([prompt, res["tokens_out"]], axis=1)
                logits = gen.logits(seq)
                in_hlo = lowered_backends(gen, 1, max_len) if quant else []
                skips = select_skips(cfg, variant) if quant else []
            if not np.isfinite(logits).all():
                raise FloatingPointError(f"{variant}: non-finite logits")
            label = DENSE_BACKEND if variant == "bf16" else summarize(picked)
            note = ""
            if name is not None and set(picked.values()) != {name}:
                why = "; ".join(s for s in skips if s.startswith(f"{name}:")) or "declined"
                note = f"requested {name}, which did not run ({why}); the dispatcher ran {label}"
                label = f"{label} (requested {name})"
                _log(f"[{variant}] WARNING {note}")
            if in_hlo and set(in_hlo) != set(picked.values()):
                note = (note + "; " if note else "") + f"lowered decode step names {sorted(in_hlo)}"
                _log(f"[{variant}] WARNING selected {label} but the lowered decode step names {sorted(in_hlo)}")
            ms_tok = res["ms_per_token"]
            row = dict(
                variant=variant,
                kv_cache_dtype=kv_dtype,
                kv_cache_bytes=kv_bytes,
                max_len=max_len,
                backend=label,
                requested=name,
                decode_tok_s=res["decode_tok_s"],
                ms_per_token=ms_tok,
                prefill_ms=res["prefill_ms"],
                prefill_ms_median=res["prefill_ms_median"],
                all_tok_s=res["all_tok_s"],
                compile_s=res["compile_s"],
                build_s=build_s,
                weight_bytes=held,
                read_bytes=read,
                weight_gb_s=read / (ms_tok * 1e-3) / 1e9,
                decode_backends=picked,
                prefill_backends=prefill_picked,
                lowered_decode_backends=in_hlo,
                tokens=int(res["tokens_out"].shape[1]),
                generated=res["tokens_out"][0].tolist(),
                logits_finite=True,
                logits_max_abs=float(np.abs(logits).max()),
                note=note,
            )
            rows.append(row)
            _log(
                f"[{_row_name(row)} | {label}] {row['decode_tok_s']:.1f} tok/s ({ms_tok:.2f} ms/token), prefill "
                f"{row['prefill_ms']:.1f} ms, compile {row['compile_s']:.1f} s, runs {row['all_tok_s']}, "
                f"KV cache ({kv_dtype}, {max_len} slots) {kv_bytes / 2**20:.1f} MiB"
            )
            del gen
        del model
        gc.collect()
    base = next(r["decode_tok_s"] for r in rows if r["variant"] == "bf16")
    for r in rows:
        r["ratio_vs_bf16"] = r["decode_tok_s"] / base
    explanation = ""
    with contextlib.suppress(Exception):
        explanation = "\n".join(explain_decode(cfg, v) for v in variants if v != "bf16")
    return dict(
        preset=preset,
        scan_layers={
            None: "auto (unrolled on a GPU, stacked under lax.scan on the CPU)",
            True: "stacked under lax.scan",
            False: "unrolled",
        }[scan_layers],
        decode_attention=decode_attention,
        config={
            k: getattr(cfg, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "tie_word_embeddings",
            )
        }
        | {"rope": cfg.rope},
        tokens=tokens,
        prompt_len=prompt_len,
        max_len=max_len,
        kv_cache_dtypes=list(kv_cache_dtypes),
        repeats=repeats,
        platform=platform,
        device=str(jax.devices()[0]),
        kernel_packages=kernel_packages,
        explain_decode=explanation,
        rows=rows,
    )


TABLE_HEAD = ("variant", "backend", "decode tok/s", "ms/token", "prefill ms", "ratio vs bf16")


def _row_name(r: dict) -> str:
    """The variant, with its KV-cache dtype when that is not the model dtype (``bf16 + kv fp8_e4m3``)."""
    kv = r.get("kv_cache_dtype", "auto")
    return r["variant"] if kv == "auto" else f"{r['variant']} + kv {kv}"


def table_lines(rows: list[dict]) -> list[str]:
    """The markdown table (variant | backend | decode tok/s | ms/token | prefill ms | ratio vs bf16), plus
    the KV cache's dtype and MiB when some row's cache is quantized (``--kv-cache-dtype``)."""
    kv = any(r.get("kv_cache_dtype", "auto") != "auto" for r in rows)
    head = TABLE_HEAD + (("KV cache", "KV cache MiB") if kv else ())
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        extra = f" {r['kv_cache_dtype']} | {r['kv_cache_bytes'] / 2**20:.1f} |" if kv else ""
        lines.append(
            f"| {_row_name(r)} | {r['backend']} | {r['decode_tok_s']:.1f} | {r['ms_per_token']:.2f} | "
            f"{r['prefill_ms']:.1f} | {r['ratio_vs_bf16']:.2f} |{extra}"
        )
    return lines


def write_report(out: str | os.PathLike, env: dict, result: dict) -> tuple[Path, Path]:
    """Writes ``decode_e2e.md`` and ``decode_e2e.json`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = result["config"]
    lines = [
        f"# End-to-end decode, {result['preset']} geometry (random weights, batch 1, greedy),"
        f" {' / '.join(r for r in dict.fromkeys(r['variant'] for r in result['rows']) if r != 'bf16')} vs bf16 in jquant",
        "",
        f"- card: {env['card']}; device: {result['device']}",
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, torch {env['torch']}, triton {env['triton']}, "
        f"python {env['python']}; commit {env['commit']}; {env['date_utc']} UTC",
        f"- model: vocab {c['vocab_size']}, hidden {c['hidden_size']}, intermediate {c['intermediate_size']}, "
        f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} kv heads, "
        f"head_dim {c['head_dim']}, rope {c['rope'].get('rope_type')}, untied lm_head; "
        f"layers {result.get('scan_layers', 'auto')}; decode attention {result.get('decode_attention', 'xla')}",
        "- w4a16: block linears uint4b8 g128, fp16 scales; fp8_dynamic: block linears fp8 e4m3 per-channel, f32"
        " scales, dynamic per-token fp8 activations; embeddings, norms, lm_head bf16 in both."
        " bf16: every weight bf16 (XLA dot, f32 accumulation).",
        f"- {result['prompt_len']}-token random prompt, {result['tokens']} new tokens, KV cache of"
        f" {result.get('max_len', '?')} slots ({', '.join(result.get('kv_cache_dtypes', ['auto']))}; fp8 / int8"
        " scales per KV head from the first prefill); warm-up call first, then"
        f" {result['repeats']} timed call(s), median-rate run reported. decode tok/s = (tokens - 1) / (last - first"
        " token on the host): per-step dispatch and device->host token copy included, compile and prefill"
        " excluded. prefill ms = call start to the first token.",
        f"- kernel packages: {result['kernel_packages']}",
        "",
        *table_lines(result["rows"]),
        "",
        "| variant | backend | weights GB | read per token GB | GB/s (read / ms per token) | runs tok/s"
        " | prefill backend | compile s | KV cache MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        pre = summarize(r["prefill_backends"]) if r["prefill_backends"] else DENSE_BACKEND
        lines.append(
            f"| {_row_name(r)} | {r['backend']} | {r['weight_bytes'] / 1e9:.3g} | {r['read_bytes'] / 1e9:.3g} | "
            f"{r['weight_gb_s']:.3g} | "
            f"{r['all_tok_s']} | {pre} | {r['compile_s']:.1f} | {r['kv_cache_bytes'] / 2**20:.1f} |"
        )
    notes = [f"- {_row_name(r)} [{r['backend']}]: {r['note']}" for r in result["rows"] if r["note"]]
    if notes:
        lines += ["", "Notes:", *notes]
    if result["explain_decode"]:
        lines += [
            "",
            "Dispatcher, decode q_proj (`jquant.ops.qmatmul.explain`):",
            "",
            "```",
            result["explain_decode"],
            "```",
        ]
    md = out / "decode_e2e.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / "decode_e2e.json"
    js.write_text(json.dumps({"env": env, **result}, indent=1, default=str) + "\n")
    return md, js


def default_out(env: dict) -> Path:
    """``bench/results/<card_slug>/`` on a GPU, ``bench/results/cpu/`` otherwise."""
    import jax

    slug = card_slug(env["card"]) if jax.default_backend() == "gpu" else "cpu"
    return ROOT / "bench" / "results" / slug


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per generate call")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--layers", type=int, default=None, help="override the decoder layer count")
    ap.add_argument("--repeats", type=int, default=3, help="timed generate calls per row (median reported)")
    ap.add_argument("--backends", default="", help="comma-separated qmatmul backends: one w4a16 row each")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument(
        "--kv-cache-dtype",
        default=",".join(DEFAULT_KV_CACHE_DTYPES),
        help="comma-separated KV-cache dtypes, each variant runs once per dtype: auto (the model dtype), "
        "fp8_e4m3, fp8_e5m2, int8 (scales per KV head from the first prefill)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scan",
        choices=("auto", "on", "off"),
        default="auto",
        help="layers stacked under lax.scan or unrolled (auto: the model default, stacked on the CPU, unrolled on a GPU)",
    )
    ap.add_argument(
        "--decode-attention",
        choices=("xla", "pallas"),
        default="xla",
        help="decode steps' attention: XLA over every cache slot, or the Pallas kernel over the visible ones",
    )
    ap.add_argument("--out", default=None, help="output folder (default bench/results/<card>/)")
    args = ap.parse_args(argv)
    env = env_info()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] or None
    scan = {"auto": None, "on": True, "off": False}[args.scan]
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(set(variants) - set(VARIANTS))} (one of {VARIANTS})")
    from jquant.models.kv_quant import KV_CACHE_DTYPES

    kv_dtypes = tuple(v.strip() for v in args.kv_cache_dtype.split(",") if v.strip())
    if not kv_dtypes or set(kv_dtypes) - set(KV_CACHE_DTYPES):
        ap.error(f"--kv-cache-dtype {args.kv_cache_dtype!r}: comma-separated, of {', '.join(KV_CACHE_DTYPES)}")
    result = run(
        args.preset,
        args.tokens,
        args.prompt_len,
        args.layers,
        backends,
        args.repeats,
        args.seed,
        scan,
        variants,
        kv_dtypes,
        args.decode_attention,
    )
    md, js = write_report(args.out or default_out(env), env, result)
    _log(f"wrote {md} and {js}")
    _log(f"\n{env['card']} | jax {env['jax']} | commit {env['commit'][:12]} | {result['preset']}")
    _log("\n".join(table_lines(result["rows"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
