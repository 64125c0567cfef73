"""The Pallas kernels on a real GPU (skipped on CPU CI): M across tile edges, odd N, K at group edges.

Random data; outputs written into NaN-poisoned buffers; tolerance scaled with sqrt(K)
(`tests.pallas.helpers.assert_close`); also run through the public ``jquant.ops.qmatmul``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401
from bench.shapes import M_TEST
from jquant.ops import qmatmul
from jquant.pallas import WNA16Backend, wna16_qmatmul
from tests.pallas.helpers import assert_close, make_weight

pytestmark = pytest.mark.gpu

WEIGHTS = [
    ("w4g128", dict(bits=4, group=128)),
    ("w4g32-zero", dict(bits=4, group=32, zero=True)),
    ("w4g64-actorder", dict(bits=4, group=64, perm=True)),
    ("w4-perchannel", dict(bits=4, group=-1)),
    ("w8g128", dict(bits=8, group=128)),
    ("w8-int8-perchannel", dict(bits=8, group=-1, signed=True)),
    ("w8g64-zero", dict(bits=8, group=64, zero=True)),
]


def _to_device(w):
    return jax.tree_util.tree_map(jnp.asarray, w)


@pytest.mark.parametrize("m", M_TEST)
@pytest.mark.parametrize("wid, wkw", WEIGHTS, ids=[w[0] for w in WEIGHTS])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_gpu_matches_spec(m, wid, wkw, dt):
    rng = np.random.default_rng(m * 1000 + len(wid))
    n, k = 1000 + 3, 2 * 1024 + 64  # odd N, K one group past a tile edge (64 | K, 128 and 256 do not)
    w = make_weight(rng, n, k, **wkw)
    x = rng.standard_normal((m, k)).astype(np.float32)
    xd = jnp.asarray(x, dt)
    wd = _to_device(w)
    mode = "decode" if m <= 64 else "prefill"
    b = WNA16Backend(mode)
    assert b.supports(xd, wd)[0]
    y = wna16_qmatmul(xd, wd, b.config_for(m, w), poison=True)
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(xd.astype(jnp.float32)), w, what=f"{wid} m={m}")
    y2 = jax.jit(functools.partial(qmatmul, implementation=b.name))(xd, wd)  # same kernel via the public entry
    np.testing.assert_array_equal(np.asarray(y2.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))
    y3 = jax.jit(qmatmul)(xd, wd)  # whatever the dispatcher picks (CUDA kernels, Pallas or two-stage)
    assert_close(np.asarray(y3.astype(jnp.float32)), np.asarray(xd.astype(jnp.float32)), w, what=f"auto m={m}")


@pytest.mark.parametrize("k", [4096 - 128, 4096, 4096 + 32])
def test_gpu_k_edges_decode_split(k):
    rng = np.random.default_rng(k)
    w = make_weight(rng, 777, k, bits=4, group=32)
    xd = jnp.asarray(rng.standard_normal((1, k)), jnp.bfloat16)
    y = wna16_qmatmul(xd, _to_device(w), WNA16Backend("decode").config_for(1, w), poison=True)
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(xd.astype(jnp.float32)), w, what=f"k={k}")
