"""The CUDA W4A16 GEMM kernel on a real GPU (skipped on CPU CI).

Random data; M at the edges of the 32 / 64 / 128-row block tiles and past the dispatcher's range
(the kernel takes any M); odd N (a partial 128-row block); K = 17 steps of 128 (no split divides
it); every weight variant of the decode tests; the sqrt(K)-scaled tolerance of
`tests.pallas.helpers.assert_close`. Every launch config (block height x ring depth x K split) is
checked, then the dispatcher's choice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_cuda
from jquant.ops import qmatmul
from jquant.ops.device import current_device
from jquant.ops.qmatmul import select
from kernels_cuda.w4a16_gemm import MAX_M, TILES, GemmConfig, w4a16_gemm
from kernels_cuda.w4a16_wgmma import MIN_M as WGMMA_MIN_M
from tests.kernels_cuda.test_w4a16_gpu import WEIGHTS, _check, _dev
from tests.pallas.helpers import make_weight

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("m", [17, 33, 64, 100, 127, 128, 129, 256, 1024])
@pytest.mark.parametrize("wid, wkw", WEIGHTS, ids=[w[0] for w in WEIGHTS])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_matches_spec(m, wid, wkw, dt):
    rng = np.random.default_rng(m * 100 + len(wid))
    n, k = 1003, 2176
    w = make_weight(rng, n, k, bits=4, **wkw)
    x = jnp.asarray(rng.standard_normal((m, k)), dt)
    y = jax.jit(functools.partial(w4a16_gemm, poison=True))(x, _dev(w))
    assert y.shape == (m, n) and y.dtype == dt
    _check(y, x, w, f"{wid} m={m}")


@pytest.mark.parametrize("bm, wm", sorted(TILES))
@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize("k_split", [128, 640, 4352])
def test_launch_configs(bm, wm, stages, k_split):
    rng = np.random.default_rng(bm + wm + stages * 7 + k_split)
    w = make_weight(rng, 777, 4096 + 256, bits=4, group=64, zero=True)
    cfg = GemmConfig(bm=bm, wm=wm, k_split=k_split, stages=stages)
    for m in (20, 130):
        x = jnp.asarray(rng.standard_normal((m, w.shape[1])), jnp.bfloat16)
        y = jax.jit(functools.partial(w4a16_gemm, cfg=cfg, poison=True))(x, _dev(w))
        _check(y, x, w, f"{cfg} m={m}")


def test_batched_leading_dims():
    rng = np.random.default_rng(3)
    w = make_weight(rng, 512, 1024, bits=4, group=128)
    x = jnp.asarray(rng.standard_normal((3, 11, 1024)), jnp.bfloat16)
    y = jax.jit(functools.partial(w4a16_gemm, poison=True))(x, _dev(w))
    assert y.shape == (3, 11, 512)
    _check(y.reshape(33, 512), x.reshape(33, 1024), w, "leading dims")


def test_dispatcher_picks_it():
    rng = np.random.default_rng(0)
    w = _dev(make_weight(rng, 4096, 4096, bits=4, group=128))
    # on sm_90 the wgmma kernel takes over from WGMMA_MIN_M
    top = MAX_M if current_device().cc != (9, 0) else WGMMA_MIN_M - 1
    for m, expect in ((16, "cuda_w4a16_decode"), (17, "cuda_w4a16_gemm"), (top, "cuda_w4a16_gemm")):
        x = jnp.asarray(rng.standard_normal((m, 4096)), jnp.bfloat16)
        assert select(x, w, platform="gpu").backend.name == expect, m
    assert select(jnp.zeros((top + 1, 4096), jnp.bfloat16), w, platform="gpu").backend.name != "cuda_w4a16_gemm"
    assert kernels_cuda.W4A16GemmBackend.name == "cuda_w4a16_gemm"
    x = jnp.asarray(rng.standard_normal((33, 4096)), jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(qmatmul)(x, w).astype(jnp.float32)),
        np.asarray(jax.jit(w4a16_gemm)(x, w).astype(jnp.float32)),
    )
