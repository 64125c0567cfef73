"""Every weight-only format's model on the GPU against the CPU path (issue 15), and the fp8 KV cache
with a checkpoint's scales on the GPU (issue 18).

Real producers' checkpoints: tiny GGUF models covering every GGML type with a canonical form
(tests/fixtures/gguf_files.py, gguf-py's writer), llm-compressor NVFP4 / MXFP4 / W4A16 folders,
bitsandbytes NF4 / FP4 (transformers ``save_pretrained``). On the device machine, whose environment
has no producers, the cached files are carried and named by ``JQUANT_GPU_FIXTURES`` (CT schemes at
its top level, ``gguf/tiny-<setup>.gguf``, ``bnb/<variant>``).

On the GPU no quantized layer may route to the f32 reference. Logits of the bf16 model on the GPU
(the CUDA / Pallas kernels) are compared with the f32 CPU path (the spec); the bound is the spread
bf16 itself causes, measured in the same test as the bf16 CPU path against the same spec (these
random tiny models amplify rounding: bf16 against f32 on the CPU reaches max|diff|/std ~2.6 on
the GGUF llama mix): the GPU may add at most half of it again, and lose at most 5 of 48 argmaxes more.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.core.qarray import QArray
from jquant.models import Generator, from_checkpoint
from jquant.ops.qmatmul import select
from jquant.parity import compare_logits
from tests.models.test_w8a8_gpu import _folder

pytestmark = pytest.mark.gpu

IDS = np.random.default_rng(11).integers(3, 500, size=(2, 24)).astype(np.int32)
GGUF = ["llama", "mistral", "qwen2", "qwen3", "llama-all-q4_1"]
CT = ["NVFP4", "MXFP4", "W4A16"]
BNB = ["nf4", "fp4"]


def _root() -> Path | None:
    root = os.environ.get("JQUANT_GPU_FIXTURES")
    return Path(root) if root else None


def _gguf(setup: str) -> Path:
    root = _root()
    if root is not None:
        path = root / "gguf" / f"tiny-{setup}.gguf"
        if not path.exists():
            pytest.skip(f"no {path}")
        return path
    gguf_files = pytest.importorskip("tests.fixtures.gguf_files")
    if setup == "llama-all-q4_1":
        pytest.skip("carried fixture only")
    return gguf_files.tiny_gguf(setup)[0]


def _bnb(variant: str) -> Path:
    root = _root()
    folder = root / "bnb" / variant if root else pytest.importorskip("tests.fixtures.producers_bnb").bnb_dir() / variant
    if not folder.exists():
        pytest.skip(f"no {folder}")
    return folder


def _logits(ckpt, device, dtype) -> np.ndarray:
    with jax.default_device(device):
        return Generator(from_checkpoint(ckpt, dtype=dtype)).logits(IDS)


def _check(src: Path, what: str):
    ckpt = jquant.convert(src)
    routed = {}
    for name, w in ckpt.weights.items():
        if isinstance(w, QArray) and w.shape[1] % 16 == 0:
            act = ckpt.weights.get(name.rpartition(".")[0] + ".input_quant")
            for m in (2, IDS.size):
                r = select(jax.ShapeDtypeStruct((m, w.shape[1]), jnp.bfloat16), w, act, platform="gpu")
                routed[f"{w.qtype.name} g{w.block[1]} M={m}"] = r.backend.name
    assert routed and "xla_reference" not in routed.values(), routed
    gpu, cpu = jax.devices("gpu")[0], jax.devices("cpu")[0]
    spec = _logits(ckpt, cpu, jnp.float32)
    base = compare_logits(_logits(ckpt, cpu, jnp.bfloat16), spec)  # what bf16 alone costs
    cmp = compare_logits(_logits(ckpt, gpu, jnp.bfloat16), spec)
    print(f"\n{what}: GPU bf16 vs CPU f32 {cmp}; CPU bf16 vs CPU f32 {base}; routes {sorted(set(routed.items()))}")
    assert cmp.rel <= 1.5 * base.rel + 0.05, f"{what}: GPU {cmp} vs CPU bf16 {base}"
    assert cmp.top1_agreement >= base.top1_agreement - 5 / IDS.size, f"{what}: GPU {cmp} vs CPU bf16 {base}"


@pytest.mark.parametrize("setup", GGUF)
def test_gguf_model_on_gpu_matches_cpu_path(setup):
    _check(_gguf(setup), f"gguf {setup}")


@pytest.mark.parametrize("scheme", CT)
def test_compressed_tensors_model_on_gpu_matches_cpu_path(scheme):
    _check(_folder(scheme), f"compressed-tensors {scheme}")


@pytest.mark.parametrize("variant", BNB)
def test_bitsandbytes_model_on_gpu_matches_cpu_path(variant):
    _check(_bnb(variant), f"bitsandbytes {variant}")


def test_fp8_kv_cache_with_checkpoint_scales_on_gpu():
    """llm-compressor's FP8 folder carries per-tensor k_scale / v_scale: the fp8 cache on the GPU
    starts from them, and prefill + 8 decode steps match the CPU path with the same cache."""
    ckpt = jquant.convert(_folder("FP8"))
    out = {}
    for dev in (jax.devices("gpu")[0], jax.devices("cpu")[0]):
        with jax.default_device(dev):
            model = from_checkpoint(ckpt, dtype=jnp.float32, kv_cache_dtype="fp8_e4m3")
            assert model.kv_quant.source == "checkpoint"
            step = nnx.jit(lambda m, ids, c: m(ids, c))
            cache = model.init_cache(2, 64)
            assert cache.k[0].dtype == jnp.float8_e4m3fn
            logits, cache = step(model, jnp.asarray(IDS[:, :16]), cache)
            seq = [np.asarray(logits[:, -1])]
            for t in range(16, 24):
                logits, cache = step(model, jnp.asarray(IDS[:, t : t + 1]), cache)
                seq.append(np.asarray(logits[:, -1]))
            out[dev.platform] = np.stack(seq, 1)
    cmp = compare_logits(out["gpu"], out["cpu"])
    print(f"\nfp8 KV cache (checkpoint scales), GPU vs CPU: {cmp}")
    # the W8A8 FP8 weights' activation rounding ties dominate (tests/models/test_w8a8_gpu.py: 0.25)
    assert cmp.rel <= 0.25 and cmp.top1_agreement >= 0.85, cmp
