"""The general weight-only kernel lowered for CUDA on the CPU host (Pallas -> Triton IR), every variant.

Interpret mode accepts what the Triton lowering rejects (non-power-of-two blocks, mixed-dtype dots,
unsupported gathers or bitcasts); lowering with ``lowering_platforms=("cuda",)`` catches those
without a GPU. Covers the heuristic configs of every code type for every BENCH.md shape at every
M the backend is routed (1..127), and each value / scale / zero / scale-row variant with bf16 and
f16 activations, the M = 1 GEMV and the poisoned output of the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bench.shapes import M_VALUES, SHAPES
from jquant.core.qarray import QArray
from jquant.core.qtypes import get_qtype
from jquant.pallas.wxa16 import PREFILL_MAX_M, config_for, layout_of, wxa16_qmatmul
from jquant.pallas.wxa16_triton import WXA16Config

F16, F32, BF16 = np.float16, np.float32, ml_dtypes.bfloat16
E8M0, E4M3, E5M2 = ml_dtypes.float8_e8m0fnu, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2

# id -> (qtype, block (bk = -1: per-channel, bn = -1: per-tensor), scale dtype, zero dtype, scale2); the source in the comment
KINDS = {
    "q4_k": ("uint4", (1, 32), F32, F32, False),  # GGUF Q4_K / Q4_1 (float mins)
    "q3_k": ("uint3b4", (1, 16), F32, None, False),  # GGUF Q3_K
    "q6_k": ("uint6b32", (1, 16), F32, None, False),  # GGUF Q6_K (bytes)
    "q2_k": ("uint2", (1, 16), F32, F32, False),  # GGUF Q2_K
    "q5_1": ("uint5", (1, 32), F16, F16, False),  # GGUF Q5_1 (f16 float zero)
    "q8_0": ("int8", (1, 32), F16, None, False),  # GGUF Q8_0
    "gptq2": ("uint2", (1, 64), F16, np.uint8, False),  # GPTQ 2-bit asym
    "awq": ("uint4", (1, 128), F16, np.uint8, False),  # AWQ / GPTQ asym
    "w8-channel": ("uint8b128", (1, -1), BF16, None, False),  # GPTQ 8-bit per-channel
    "nf4": ("nf4", (1, 64), F32, None, False),  # bitsandbytes NF4
    "bnb_fp4": ("bnb_fp4", (1, 64), BF16, None, False),
    "iq4nl": ("iq4nl", (1, 32), F16, None, False),  # GGUF IQ4_NL / IQ4_XS
    "mxfp4": ("fp4_e2m1", (1, 32), E8M0, None, False),  # OCP MXFP4
    "nvfp4": ("fp4_e2m1", (1, 16), E4M3, None, True),  # ModelOpt / CT NVFP4 weights
    "fp8-channel": ("fp8_e4m3", (1, -1), F32, None, False),  # W8A16 per-channel
    "fp8-tensor": ("fp8_e4m3", (-1, -1), F32, None, False),  # W8A16 per-tensor
    "fp8-block": ("fp8_e4m3", (128, 128), F32, None, False),  # FP8 128x128 blocks
    "e5m2-floatzero-bf16": ("fp8_e5m2", (1, 64), E5M2, BF16, False),
    "uint1": ("uint1", (1, 128), F16, None, False),
}


def weight(kind: str, n: int, k: int, perm: bool = False) -> QArray:
    """A QArray of ShapeDtypeStructs (lowering reads shapes and dtypes only)."""
    qn, (bn, bk), sdt, zdt, s2 = KINDS[kind]
    q = get_qtype(qn)
    bn, bk = (n if bn == -1 else bn), (k if bk == -1 else bk)
    sshape = (-(-n // bn), -(-k // bk))
    sds = jax.ShapeDtypeStruct
    return QArray(
        data=sds((n, k // q.codes_per_byte), q.storage_dtype),
        scale=sds(sshape, sdt),
        zero=None if zdt is None else sds(sshape, zdt),
        perm=sds((k,), np.int32) if perm else None,
        scale2=sds((1, 1), np.float32) if s2 else None,
        qtype=q,
        shape=(n, k),
        block=(bn, bk),
    )


def lower(x, w, cfg=None, poison=False):
    fn = jax.jit(lambda x, w: wxa16_qmatmul(x, w, cfg=cfg, poison=poison))
    text = fn.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and "jquant_wxa16" in text


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_heuristic_configs_lower_for_every_bench_shape(kind):
    seen = set()
    for s in SHAPES:
        w = weight(kind, s.n, s.k)
        for m in sorted({*M_VALUES, 127}):
            if m > PREFILL_MAX_M:
                continue
            cfg = config_for(m, w)
            key = (cfg, s.k % cfg.bk == 0, layout_of(w).n_srows == 1)
            if key in seen:  # lowering depends on the config, K edges and the scale rows, not N or M
                continue
            seen.add(key)
            lower(jax.ShapeDtypeStruct((m, s.k), jnp.bfloat16), w)
    assert len(seen) >= 2


@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_variant_lowers_at_edges(kind, dt):
    """Odd N, K not a multiple of the step, split-K remainders, act-order, decode and prefill tiles."""
    n, k = 1000, 4096 + 128
    w = weight(kind, n, k, perm=kind in ("awq", "nf4"))
    for m in (1, 7, 100):
        lower(jax.ShapeDtypeStruct((m, k), dt), w)


@pytest.mark.parametrize("kind", ["nf4", "q4_k", "fp8-channel", "fp8-block", "nvfp4", "q2_k"])
def test_gemv_and_poison_lower(kind):
    n, k = 333, 2048
    w = weight(kind, n, k)
    planes = w.qtype.codes_per_byte
    x1 = jax.ShapeDtypeStruct((1, k), jnp.bfloat16)
    lower(x1, w, cfg=WXA16Config(bm=1, bn=64, bk=128 * planes, split_k=4, gemv=True))
    lower(x1, w, cfg=config_for(1, w), poison=True)
    lower(jax.ShapeDtypeStruct((127, k), jnp.bfloat16), w, cfg=config_for(127, w), poison=True)
