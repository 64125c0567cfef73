"""The decode kernel on a real GPU for every 4-bit code kind (skipped on CPU CI).

Weights from the real converters (`tests.kernels_cuda.decode_cases`): GGUF Q4_0 / Q4_1 / Q4_K /
Q3_K / IQ4_NL / IQ4_XS / MXFP4 / NVFP4, NF4, bnb FP4, NVFP4 with its second scale, float zeros with
scales on the sums, 16-column groups. M at the n8 tile edges; outputs written into NaN-poisoned
buffers; the sqrt(K)-scaled tolerance of `tests.pallas.helpers.assert_close`; the tiled code layout
bit-identical to the canonical one; the public ``qmatmul`` routes here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.ops import qmatmul
from jquant.ops.qmatmul import select
from kernels_cuda.w4a16 import DecodeConfig, tile_codes, w4a16_decode
from kernels_cuda.w4a16_wgmma import WgmmaConfig, w4a16_wgmma
from kernels_cuda.w4a16_wgmma import why_not as wgmma_why_not
from tests.kernels_cuda.decode_cases import WEIGHTS
from tests.pallas.helpers import assert_close

pytestmark = pytest.mark.gpu


@functools.cache
def _weight(wid):
    w = WEIGHTS[wid][0]()
    return w, jax.tree_util.tree_map(jnp.asarray, w)


def _x(m, k, dt, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32), dt)


@pytest.mark.parametrize("m", [1, 8, 9, 16])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("wid", sorted(WEIGHTS))
def test_matches_spec(wid, dt, m):
    w, wd = _weight(wid)
    x = _x(m, w.shape[1], dt, m)
    y = jax.jit(functools.partial(w4a16_decode, poison=True))(x, wd)
    assert y.shape == (m, w.shape[0]) and y.dtype == dt
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=f"{wid} m={m}")
    if m == 9:  # the tiled layout reads the same codes
        t = tile_codes(jnp.asarray(w.data), *w.shape)
        y2 = jax.jit(functools.partial(w4a16_decode, tiled=t))(x, wd)
        np.testing.assert_array_equal(np.asarray(y2.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))


@pytest.mark.parametrize("k_split", [128, 384, 1152])
@pytest.mark.parametrize("wid", ["Q4_K", "MXFP4", "nvfp4-scale2", "uint4-g128-floatzero-acc"])
def test_launch_configs(wid, k_split):
    w, wd = _weight(wid)
    for warps in (4, 8):
        cfg = DecodeConfig(k_split=k_split, warps=warps)
        x = _x(5, w.shape[1], jnp.bfloat16, k_split)
        y = jax.jit(functools.partial(w4a16_decode, cfg=cfg, poison=True))(x, wd)
        assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=f"{wid} {cfg}")


@pytest.mark.parametrize("wid", sorted(WEIGHTS))
def test_dispatcher_routes_here(wid):
    w, wd = _weight(wid)
    x = _x(2, w.shape[1], jnp.bfloat16, 0)
    assert select(x, wd, platform="gpu").backend.name == "cuda_w4a16_decode"
    y = jax.jit(qmatmul)(x, wd)
    np.testing.assert_array_equal(
        np.asarray(y.astype(jnp.float32)), np.asarray(jax.jit(w4a16_decode)(x, wd).astype(jnp.float32))
    )


@pytest.mark.parametrize("m", [40, 64, 129, 1000])
@pytest.mark.parametrize("wid", sorted(WEIGHTS))
def test_wgmma_matches_spec(wid, m):
    """The wgmma (prefill) kernel on every kind it reads (Q3_K / g16 integer codes: declined)."""
    w, wd = _weight(wid)
    x = _x(m, w.shape[1], jnp.bfloat16, m + 1)
    why = wgmma_why_not(x, w)
    if why:
        assert "group size 16" in why, why
        pytest.skip(why)
    y = jax.jit(functools.partial(w4a16_wgmma, poison=True))(x, wd)
    assert y.shape == (m, w.shape[0]) and y.dtype == x.dtype
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=f"wgmma {wid} m={m}")
    if m == 129:  # f16 activations, and each block height with a split K
        xh = x.astype(jnp.float16)
        for bm in (64, 128, 256):
            y = jax.jit(functools.partial(w4a16_wgmma, cfg=WgmmaConfig(bm=bm, k_split=1024), poison=True))(xh, wd)
            assert_close(
                np.asarray(y.astype(jnp.float32)), np.asarray(xh.astype(jnp.float32)), w, what=f"{wid} bm={bm}"
            )
