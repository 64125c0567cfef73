"""The grouped (MoE) Pallas kernel lowered for CUDA on the CPU host (Pallas -> Triton IR).

Interpret mode accepts what the Triton lowering rejects (non-power-of-two blocks, mixed-dtype
dots, unsupported gathers or scalar loads); ``lowering_platforms=("cuda",)`` catches those without
a GPU. Covers every code type of `jquant.pallas.grouped_triton.CAPS` on the MoE shapes of the
supported families (Mixtral-8x7B, Qwen3-30B-A3B, gpt-oss-20b) at every M the dispatcher routes
here, the heuristic configs, the GEMV config, act-order, f16 activations and the poisoned output
of the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.qarray import QArray
from jquant.core.qtypes import get_qtype
from jquant.pallas.grouped_triton import GROUPED_MAX_M, config_for, grouped_triton_qmatmul, why_not
from jquant.pallas.wxa16_triton import WXA16Config
from tests.pallas.test_wxa16_lowering import BF16, E4M3, E8M0, F16, F32

# id -> (qtype, block (-1: whole axis), scale dtype, zero dtype, scale2)
KINDS = {
    "gptq": ("uint4b8", (1, 128), F16, None, False),  # GPTQModel MoE experts
    "awq": ("uint4", (1, 128), F16, np.uint8, False),  # AWQ / GPTQ asym
    "q4_k": ("uint4", (1, 32), F32, F32, False),  # GGUF ffn_*_exps Q4_K (float mins)
    "mxfp4": ("fp4_e2m1", (1, 32), E8M0, None, False),  # gpt-oss
    "nvfp4": ("fp4_e2m1", (1, 16), E4M3, None, True),  # ModelOpt / compressed-tensors NVFP4
    "fp8-channel": ("fp8_e4m3", (1, -1), F32, None, False),  # compressed-tensors FP8 dynamic
    "fp8-tensor": ("fp8_e4m3", (-1, -1), F32, None, False),
    "fp8-block": ("fp8_e4m3", (128, 128), BF16, None, False),  # DeepSeek / Qwen3 FP8 128x128
}

# (E, N, K) per projection: Mixtral-8x7B w1 / w2, Qwen3-30B-A3B gate / down, gpt-oss-20b gate_up / down.
SHAPES = [(8, 14336, 4096), (8, 4096, 14336), (128, 768, 2048), (128, 2048, 768), (32, 5760, 2880), (32, 2880, 2880)]


def experts(kind: str, e: int, n: int, k: int, perm: bool = False) -> QArray:
    """An expert-stacked QArray of ShapeDtypeStructs (lowering reads shapes and dtypes only)."""
    qn, (bn, bk), sdt, zdt, s2 = KINDS[kind]
    q = get_qtype(qn)
    bn, bk = (n if bn == -1 else bn), (k if bk == -1 else bk)
    sshape = (e, -(-n // bn), -(-k // bk))
    sds = jax.ShapeDtypeStruct
    return QArray(
        data=sds((e, n, k // q.codes_per_byte), q.storage_dtype),
        scale=sds(sshape, sdt),
        zero=None if zdt is None else sds(sshape, zdt),
        perm=sds((e, k), np.int32) if perm else None,
        scale2=sds((e, 1, 1), np.float32) if s2 else None,
        qtype=q,
        shape=(n, k),
        block=(bn, bk),
    )


def lower(x, w, cfg=None, poison=False):
    assert why_not(x, w) == "", why_not(x, w)
    fn = jax.jit(lambda x, w, g: grouped_triton_qmatmul(x, w, g, cfg=cfg, poison=poison))
    g = jax.ShapeDtypeStruct((w.data.shape[0],), jnp.int32)
    text = fn.trace(x, w, g).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and "jquant_grouped" in text


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_heuristic_configs_lower_for_moe_shapes(kind):
    seen = set()
    for e, n, k in SHAPES:
        w = experts(kind, e, n, k)
        for m in (1, 2, 8, 17, GROUPED_MAX_M):
            cfg = config_for(m, w)
            key = (cfg, k % cfg.bk == 0)
            if key in seen:  # lowering depends on the config and the K edge, not on E, N or M
                continue
            seen.add(key)
            lower(jax.ShapeDtypeStruct((m, k), jnp.bfloat16), w)
    assert seen


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_edges_f16_gemv_and_poison_lower(kind):
    """Odd N, K not a multiple of the step, act-order, f16, the one-row GEMV tiles, poisoned outputs."""
    e, n, k = 8, 1000, 2048 + 128
    w = experts(kind, e, n, k, perm=kind in ("gptq", "awq"))
    planes = w.qtype.codes_per_byte
    lower(jax.ShapeDtypeStruct((3, k), jnp.float16), w)
    lower(
        jax.ShapeDtypeStruct((1, k), jnp.bfloat16),
        w,
        cfg=WXA16Config(bm=1, bn=64, bk=128 * planes, split_k=4, gemv=True),
    )
    lower(jax.ShapeDtypeStruct((40, k), jnp.bfloat16), w, cfg=config_for(40, w), poison=True)
