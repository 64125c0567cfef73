"""The CUDA W4A16 decode kernel on a real GPU (skipped on CPU CI).

Random data, M at the n8 tile edges (1, 7, 8, 9, 16), odd N (a partial 128-row block), K at split
and group edges; the sqrt(K)-scaled tolerance of `tests.pallas.helpers.assert_close`. Every launch
config the kernel compiles (stages x warps, forced K splits) is checked, then the public
``qmatmul`` entry is checked to pick this backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels_cuda
from jquant.ops import qmatmul
from jquant.ops.qmatmul import select
from kernels_cuda.w4a16 import DecodeConfig, tile_codes, w4a16_decode
from tests.pallas.helpers import assert_close, make_weight

pytestmark = pytest.mark.gpu

WEIGHTS = [
    ("w4g128", dict(group=128)),
    ("w4g32-zero", dict(group=32, zero=True)),
    ("w4g64-actorder", dict(group=64, perm=True)),
    ("w4-perchannel", dict(group=-1)),
    ("w4g128-f32scale", dict(group=128, scale_dtype=np.float32)),
    ("w4g128-zero-bf16scale", dict(group=128, zero=True, scale_dtype=jnp.bfloat16)),
]


def _dev(w):
    return jax.tree_util.tree_map(jnp.asarray, w)


def _check(y, x, w, what):
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=what)


@pytest.mark.parametrize("m", [1, 7, 8, 9, 16])
@pytest.mark.parametrize("wid, wkw", WEIGHTS, ids=[w[0] for w in WEIGHTS])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_matches_spec(m, wid, wkw, dt):
    rng = np.random.default_rng(m * 100 + len(wid))
    n, k = 1003, 2176  # odd N; K = 17 steps of 128 (not a multiple of any split)
    w = make_weight(rng, n, k, bits=4, **wkw)
    x = jnp.asarray(rng.standard_normal((m, k)), dt)
    y = jax.jit(functools.partial(w4a16_decode, poison=True))(x, _dev(w))
    _check(y, x, w, f"{wid} m={m}")
    t = tile_codes(jnp.asarray(w.data), *w.shape)
    y2 = jax.jit(functools.partial(w4a16_decode, tiled=t))(x, _dev(w))
    np.testing.assert_array_equal(np.asarray(y2.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))


@pytest.mark.parametrize("stages", [4, 8])
@pytest.mark.parametrize("warps", [1, 4, 8])
@pytest.mark.parametrize("k_split", [128, 384, 1024])
def test_launch_configs(stages, warps, k_split):
    rng = np.random.default_rng(stages * 10 + warps)
    w = make_weight(rng, 777, 4096 + 128, bits=4, group=32)
    for m in (3, 12):
        x = jnp.asarray(rng.standard_normal((m, w.shape[1])), jnp.bfloat16)
        cfg = DecodeConfig(k_split=k_split, stages=stages, warps=warps)
        y = jax.jit(functools.partial(w4a16_decode, cfg=cfg, poison=True))(x, _dev(w))
        _check(y, x, w, f"{cfg} m={m}")


@pytest.mark.parametrize("kslices", [2, 4, 8])
@pytest.mark.parametrize("k_split", [384, 4224])
@pytest.mark.parametrize("wid, wkw", WEIGHTS[:3], ids=[w[0] for w in WEIGHTS[:3]])
def test_in_block_k_slices(kslices, k_split, wid, wkw):
    # K = 33 steps: slices of unequal length, and (k_split 384, 8 slices) slices with no steps;
    # k_split 4224 is one split, written directly in x's dtype.
    rng = np.random.default_rng(kslices * 7 + k_split)
    w = make_weight(rng, 777, 4224, bits=4, **wkw)
    for m in (1, 9) if k_split == 384 else (1, 5):  # (one split of 33 steps stages x for M <= 8 only)
        x = jnp.asarray(rng.standard_normal((m, w.shape[1])), jnp.bfloat16)
        cfg = DecodeConfig(k_split=k_split, kslices=kslices, direct=True)
        y = jax.jit(functools.partial(w4a16_decode, cfg=cfg, poison=True))(x, _dev(w))
        assert y.dtype == jnp.bfloat16
        _check(y, x, w, f"{wid} {cfg} m={m}")
        ref = jax.jit(functools.partial(w4a16_decode, cfg=DecodeConfig(k_split=k_split)))(x, _dev(w))
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32), rtol=2e-2, atol=2e-2)
    t = tile_codes(jnp.asarray(w.data), *w.shape)
    y2 = jax.jit(functools.partial(w4a16_decode, cfg=cfg, tiled=t))(x, _dev(w))
    np.testing.assert_array_equal(np.asarray(y2, np.float32), np.asarray(y, np.float32))


def test_dispatcher_picks_it():
    rng = np.random.default_rng(0)
    w = _dev(make_weight(rng, 4096, 4096, bits=4, group=128))
    x = jnp.asarray(rng.standard_normal((2, 4096)), jnp.bfloat16)
    assert select(x, w, platform="gpu").backend.name == "cuda_w4a16_decode"
    assert kernels_cuda.W4A16DecodeBackend.name == "cuda_w4a16_decode"
    y = jax.jit(qmatmul)(x, w)
    y2 = jax.jit(w4a16_decode)(x, w)
    np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), np.asarray(y2.astype(jnp.float32)))
