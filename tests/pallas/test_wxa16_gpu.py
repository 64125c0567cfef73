"""The general weight-only Pallas kernel on a real GPU (skipped on CPU CI), every code type.

M across the decode / prefill tiles (1, 7, 16, 64, 127), odd N, K straddling the K step and the
split-K chunks; GGUF weights converted from random blocks by the real converter, the others random
codes of the right qtype / block / scale dtype / zero kind. Outputs are written into NaN-poisoned
buffers; tolerance scaled with sqrt(K) (`tests.pallas.helpers.assert_close`). Also run through the
public ``jquant.ops.qmatmul`` forced to this backend (bit-identical to the direct call).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401
from jquant.ops import qmatmul
from jquant.ops.backend import BACKENDS, register_backend
from jquant.pallas.wxa16 import CAPS as WXA16_CAPS
from jquant.pallas.wxa16 import PallasWXA16, wxa16_qmatmul
from jquant.pallas.wxa16_triton import WXA16Config
from tests.pallas.helpers import assert_close
from tests.pallas.test_wxa16_interpret import gguf, synth

pytestmark = pytest.mark.gpu

N = 1003  # odd: the last N tile is partial
K_GGUF = 2304  # 9 super-blocks: not a multiple of the 512 / 1024-column steps, uneven split-K chunks
K = 2080  # one 32-column group past 2048

WEIGHTS = {
    "Q4_K": lambda: gguf("Q4_K", N, K_GGUF),
    "Q6_K": lambda: gguf("Q6_K", N, K_GGUF),
    "Q3_K": lambda: gguf("Q3_K", N, K_GGUF),
    "Q2_K": lambda: gguf("Q2_K", N, K_GGUF),
    "Q5_K": lambda: gguf("Q5_K", N, K_GGUF),
    "Q4_1": lambda: gguf("Q4_1", N, K),
    "Q8_0": lambda: gguf("Q8_0", N, K),
    "IQ4_XS": lambda: gguf("IQ4_XS", N, K_GGUF),
    "MXFP4": lambda: gguf("MXFP4", N, K),
    "nf4": lambda: synth(N, K, qtype="nf4", block=(1, 64), scale_dtype="float32"),
    "nvfp4": lambda: synth(N, K, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),
    "fp8-channel": lambda: synth(N, K, qtype="fp8_e4m3", block="channel", scale_dtype="float32"),
    "fp8-block128": lambda: synth(N, K, qtype="fp8_e4m3", block=(128, 128), scale_dtype="float32"),
    "gptq2-actorder": lambda: synth(N, K, qtype="uint2", block=(1, 64), zero="int", perm=True),
    "uint3b4-g128": lambda: synth(N, K, qtype="uint3b4", block=(1, 128)),
    "bnb_fp4": lambda: synth(N, K, qtype="bnb_fp4", block=(1, 64), scale_dtype="bfloat16"),
}


@functools.cache
def _weight(wid):
    w = WEIGHTS[wid]()
    return w, jax.tree_util.tree_map(jnp.asarray, w)


def _backend():
    if "pallas_triton_wxa16" not in BACKENDS:  # until jquant.pallas registers it
        register_backend(PallasWXA16())
    return BACKENDS["pallas_triton_wxa16"]


def _check(wid, m, dt, cfg=None):
    w, wd = _weight(wid)
    rng = np.random.default_rng(m * 1000 + len(wid))
    xd = jnp.asarray(rng.standard_normal((m, w.shape[1])).astype(np.float32), dt)
    y = wxa16_qmatmul(xd, wd, cfg=cfg, poison=True)
    assert y.dtype == dt and y.shape == (m, w.shape[0])
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(xd.astype(jnp.float32)), w, what=f"{wid} m={m}")
    return xd, wd, y


@pytest.mark.parametrize("m", [1, 7, 16, 64, 127])
@pytest.mark.parametrize("wid", sorted(WEIGHTS))
def test_gpu_matches_spec(wid, m):
    xd, wd, y = _check(wid, m, jnp.bfloat16)
    if m in (1, 127):  # the public entry, forced to this backend: the same kernel, bit for bit
        b = _backend()
        ok, why = b.supports(xd, wd)
        if wd.qtype.name in WXA16_CAPS.codes - b.caps.codes:  # NF4 / FP4 / IQ4 tables: not routed here
            assert not ok and "codes" in why, why
            return
        assert ok, why
        y2 = jax.jit(functools.partial(qmatmul, implementation=b.name))(xd, wd)
        np.testing.assert_array_equal(np.asarray(y2.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)))


@pytest.mark.parametrize("m", [1, 16, 100])
@pytest.mark.parametrize("wid", ["Q4_1", "nvfp4", "fp8-channel", "Q6_K"])
def test_gpu_f16_activations(wid, m):
    _check(wid, m, jnp.float16)


@pytest.mark.parametrize("wid", ["nf4", "fp8-channel", "Q4_K", "gptq2-actorder"])
def test_gpu_gemv_config(wid):
    planes = _weight(wid)[0].qtype.codes_per_byte
    _check(wid, 1, jnp.bfloat16, cfg=WXA16Config(bm=1, bn=64, bk=128 * planes, split_k=4, gemv=True))
