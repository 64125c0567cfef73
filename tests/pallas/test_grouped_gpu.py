"""The grouped (MoE) Pallas kernel on a real GPU (skipped on CPU CI), every covered code type.

Expert stacks of 8 experts with odd N and K past the K step (GGUF Q4_K / MXFP4 converted from random
blocks by the real converter, the others random codes of the right qtype / block / scale dtype /
zero kind); routings from top-2 choices of ceil(M / 2) tokens (M in 1, 2, 16, 64: the routed
range), plus rows past ``sum(group_sizes)``. Outputs go into NaN-poisoned buffers and are checked against the
XLA reference and the numpy spec per expert with the sqrt(K)-scaled tolerance
(`tests.pallas.test_grouped_interpret.check_grouped`). The public ``grouped_qmatmul`` picks the
kernel on GPU and gives the direct call's result bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401  (registers pallas_triton_grouped)
from jquant.core.experts import stack_experts
from jquant.ops import grouped_qmatmul
from jquant.ops.grouped import grouped_implementation
from jquant.pallas.grouped_triton import grouped_triton_qmatmul
from jquant.pallas.wxa16_triton import WXA16Config
from tests.ops.qmatmul_suite import QCase, make_qarray
from tests.pallas.test_grouped_interpret import check_grouped
from tests.pallas.test_wxa16_interpret import gguf

pytestmark = pytest.mark.gpu

E = 8
N = 1003  # odd: the last N tile is partial
K = 2080  # one 32-column group past 2048: not a multiple of the K step
K_GGUF = 2304  # 9 Q4_K super-blocks


def _synth(n, k, seed, **kw):
    return make_qarray(QCase(m=1, n=n, k=k, seed=seed, **kw))


EXPERTS = {
    "gptq-uint4b8-g32-actorder": lambda s: _synth(N, K, s, qtype="uint4b8", block=(1, 32), perm=True),
    "gptq-uint4b8-g128": lambda s: _synth(N, 2048, s, qtype="uint4b8", block=(1, 128)),
    "awq-uint4-zero-g128": lambda s: _synth(N, 2048, s, qtype="uint4", block=(1, 128), zero="int"),
    "gguf-q4_k": lambda s: gguf("Q4_K", N, K_GGUF, seed=s),
    "gguf-mxfp4": lambda s: gguf("MXFP4", N, K, seed=s),
    "nvfp4": lambda s: _synth(N, K, s, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),
    "fp8-channel": lambda s: _synth(N, K, s, qtype="fp8_e4m3", block="channel", scale_dtype="float32"),
    "fp8-tensor": lambda s: _synth(N, K, s, qtype="fp8_e4m3", block="tensor", scale_dtype="float32"),
    "fp8-block128": lambda s: _synth(N, K, s, qtype="fp8_e4m3", block=(128, 128), scale_dtype="float32"),
}


@functools.cache
def _stack(wid):
    ws = [EXPERTS[wid](s) for s in range(E)]
    return ws, jax.device_put(stack_experts(ws))


def _routing(m: int, top_k: int, seed: int) -> list[int]:
    """group_sizes of M rows: ceil(M / top_k) tokens each choosing top_k distinct experts (the last
    token's surplus copies dropped), as a MoE layer sorts them."""
    rng = np.random.default_rng(seed)
    tokens = -(-m // top_k)
    ids = np.concatenate([rng.choice(E, top_k, replace=False) for _ in range(tokens)])[:m]
    return np.bincount(ids, minlength=E).tolist()


def _check(wid, m, dt=jnp.bfloat16, cfg=None, extra_rows=0):
    ws, w = _stack(wid)
    groups = _routing(m, 2, m)
    rng = np.random.default_rng(m + 17)
    x = jnp.asarray(rng.standard_normal((m + extra_rows, w.shape[1])), dt)
    gs = jnp.asarray(groups, jnp.int32)
    y = grouped_triton_qmatmul(x, w, gs, cfg=cfg, poison=True)
    assert y.dtype == dt and y.shape == (m + extra_rows, w.shape[0])
    check_grouped(y, x, ws, groups, w, what=f"{wid} m={m}")
    return x, w, gs, y


@pytest.mark.parametrize("m", [1, 2, 16, 64])
@pytest.mark.parametrize("wid", sorted(EXPERTS))
def test_gpu_matches_reference(wid, m):
    x, w, gs, y = _check(wid, m)
    if m in (2, 64):  # the public entry picks the kernel on GPU: the same kernel, bit for bit
        assert grouped_implementation(x, w) == "pallas_triton_grouped"
        y2 = jax.jit(grouped_qmatmul)(x, w, gs)
        np.testing.assert_array_equal(np.asarray(y2, np.float32), np.asarray(y, np.float32))


@pytest.mark.parametrize("wid", ["awq-uint4-zero-g128", "gguf-mxfp4", "fp8-block128"])
def test_gpu_f16_rows_past_total_and_gemv(wid):
    _check(wid, 9, jnp.float16, extra_rows=3)
    planes = _stack(wid)[1].qtype.codes_per_byte
    _check(wid, 2, cfg=WXA16Config(bm=1, bn=64, bk=128 * planes, split_k=4, gemv=True))
