"""The Hopper wgmma W4A16 kernel on a real sm_90 GPU (skipped on CPU CI and on other GPUs).

Random data; M at the edges of the 64 / 128 / 256-row blocks, below and past the dispatcher's
range (the kernel takes any M); odd N (a partial 128-row block); K = 17 steps of 128; every weight
variant of the decode tests; poisoned outputs; the sqrt(K)-scaled tolerance of
`tests.pallas.helpers.assert_close`. Both variants (x by TMA or by cp.async) x every block height x K split are checked, then the
dispatcher.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.ops import qmatmul
from jquant.ops.device import current_device, num_sms
from jquant.ops.qmatmul import select
from kernels_cuda.w4a16_wgmma import MIN_M, STAGES, VARIANTS, WgmmaConfig, w4a16_wgmma, wgmma_config
from tests.kernels_cuda.test_w4a16_gpu import WEIGHTS, _check, _dev
from tests.pallas.helpers import make_weight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(current_device().cc != (9, 0), reason="wgmma (sm_90a) needs an H100/H200"),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("m", [1, 64, 129, 200, 256, 257, 1024])
@pytest.mark.parametrize("wid, wkw", WEIGHTS, ids=[w[0] for w in WEIGHTS])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_matches_spec(m, wid, wkw, dt, variant):
    rng = np.random.default_rng(m * 100 + len(wid))
    n, k = 1003, 2176
    w = make_weight(rng, n, k, bits=4, **wkw)
    x = jnp.asarray(rng.standard_normal((m, k)), dt)
    cfg = dataclasses.replace(wgmma_config(m, n, k, num_sms=num_sms()), variant=variant)
    y = jax.jit(functools.partial(w4a16_wgmma, cfg=cfg, poison=True))(x, _dev(w))
    assert y.shape == (m, n) and y.dtype == dt
    _check(y, x, w, f"{wid} m={m}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bm", sorted(STAGES))
@pytest.mark.parametrize("k_split", [128, 640, 4352])
def test_launch_configs(bm, k_split, variant):
    rng = np.random.default_rng(bm + k_split)
    w = make_weight(rng, 777, 4096 + 256, bits=4, group=64, zero=True)
    cfg = WgmmaConfig(bm=bm, k_split=k_split, variant=variant)
    for m in (20, 300):
        x = jnp.asarray(rng.standard_normal((m, w.shape[1])), jnp.bfloat16)
        y = jax.jit(functools.partial(w4a16_wgmma, cfg=cfg, poison=True))(x, _dev(w))
        _check(y, x, w, f"{cfg} m={m}")


def test_dispatcher_picks_it():
    rng = np.random.default_rng(0)
    w = _dev(make_weight(rng, 4096, 4096, bits=4, group=128))
    assert select(jnp.zeros((MIN_M - 1, 4096), jnp.bfloat16), w, platform="gpu").backend.name != "cuda_w4a16_wgmma"
    assert select(jnp.zeros((8192, 4096), jnp.bfloat16), w, platform="gpu").backend.name == "cuda_w4a16_wgmma"
    x = jnp.asarray(rng.standard_normal((MIN_M, 4096)), jnp.bfloat16)
    assert select(x, w, platform="gpu").backend.name == "cuda_w4a16_wgmma"
    np.testing.assert_array_equal(
        np.asarray(jax.jit(qmatmul)(x, w).astype(jnp.float32)),
        np.asarray(jax.jit(w4a16_wgmma)(x, w).astype(jnp.float32)),
    )


def test_model_prefill_matches_the_reference_path(monkeypatch):
    """A 2-layer Llama-3-8B-shaped W4A16 model, jitted, layers under lax.scan: a 64-token prefill
    whose every linear layer runs on this kernel gives the logits of the exact XLA reference path."""
    from flax import nnx

    from bench.decode_e2e import build_model, make_config, select_backends

    cfg = make_config("llama3-8b", layers=2)
    assert set(select_backends(cfg, 64).values()) == {"cuda_w4a16_wgmma"}
    model = build_model(cfg, "w4a16")
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 64)), jnp.int32)

    def prefill():  # a new function per call, so that each jit traces (and dispatches) afresh
        def f(state, ids):
            h, _ = nnx.merge(graphdef, state).hidden_states(ids)
            return nnx.merge(graphdef, state).logits(h[:, -8:]).astype(jnp.float32)

        return jax.jit(f)

    got = np.asarray(prefill()(state, ids))
    monkeypatch.setenv("JQUANT_KERNELS", "xla_reference")
    want = np.asarray(prefill()(state, ids))
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    # err > 0: the two runs did take different paths (the kernel rounds each weight to bf16 once)
    assert np.isfinite(got).all() and 0 < err < 2e-2, err
    print(f"model prefill: rel. L2 error vs the reference path {err:.2e}")
