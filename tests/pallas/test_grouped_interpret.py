"""The grouped (MoE) Pallas kernel (`jquant.pallas.grouped_triton`) in interpret mode on CPU.

Expert stacks of every covered code type: GPTQ uint4b8 with act-order (each expert its own
permutation), AWQ uint4 with uint8 zeros, GGUF Q4_K (float mins) and gpt-oss-style MXFP4 converted
from random blocks by the real converter, NVFP4 (e4m3 scales and ``scale2``), fp8 e4m3 per-channel,
per-tensor and in 128x128 blocks. Routings: one token's top-2 copies, rows past
``sum(group_sizes)``, an expert with more rows than one tile, and empty experts. Each output is
checked against the XLA reference (``grouped_qmatmul(..., implementation="xla_reference")`` in f32)
and, per expert group, against the numpy spec, with the sqrt(K)-scaled tolerance of
`tests.pallas.helpers.assert_close`; outputs go into NaN-poisoned buffers, rows past the total
must be exactly zero. Also: the tile schedule, the dispatcher's choice and refusals.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401  (registers pallas_triton_grouped)
from jquant.core import dequantize
from jquant.core.experts import stack_experts
from jquant.ops import grouped_qmatmul
from jquant.ops.grouped import GROUPED_BACKENDS, explain_grouped, grouped_implementation, register_grouped_backend
from jquant.pallas.grouped_triton import (
    CAPS,
    GROUPED_MAX_M,
    PallasGrouped,
    grouped_triton_qmatmul,
    num_tiles,
    tile_schedule,
    why_not,
)
from jquant.pallas.wxa16_triton import WXA16Config
from tests.ops.qmatmul_suite import QCase, make_qarray
from tests.pallas.helpers import assert_close
from tests.pallas.test_wxa16_interpret import gguf

E = 8


def _synth(n, k, seed, **kw):
    return make_qarray(QCase(m=1, n=n, k=k, seed=seed, **kw))


# id -> expert factory (seed -> one expert's canonical QArray)
EXPERTS = {
    "gptq-uint4b8-g32-actorder": lambda s: _synth(40, 192, s, qtype="uint4b8", block=(1, 32), perm=True),
    "awq-uint4-zero-g64": lambda s: _synth(33, 256, s, qtype="uint4", block=(1, 64), zero="int"),
    "gguf-q4_k": lambda s: gguf("Q4_K", 24, 256, seed=s),
    "gguf-mxfp4": lambda s: gguf("MXFP4", 24, 160, seed=s),
    "nvfp4": lambda s: _synth(24, 128, s, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),
    "fp8-channel": lambda s: _synth(40, 160, s, qtype="fp8_e4m3", block="channel", scale_dtype="float32"),
    "fp8-tensor": lambda s: _synth(24, 128, s, qtype="fp8_e4m3", block="tensor", scale_dtype="float32"),
    "fp8-block128": lambda s: _synth(130, 256, s, qtype="fp8_e4m3", block=(128, 128), scale_dtype="float32"),
}

# (group_sizes over E = 8, M): one token's top-2; rows past the total; one expert with 20 rows (two
# 16-row tiles) next to single rows; every expert one row.
ROUTINGS = [
    ([0, 0, 1, 0, 0, 1, 0, 0], 2),
    ([1, 0, 0, 0, 0, 0, 0, 1], 3),
    ([2, 20, 0, 0, 3, 0, 1, 0], 27),
    ([1, 1, 1, 1, 1, 1, 1, 1], 8),
]

DECODE = WXA16Config(bm=16, bn=32, bk=128, split_k=2)  # tl.dot tiles, split-K partials
GEMV = WXA16Config(bm=1, bn=32, bk=128, split_k=1, gemv=True)  # one row per tile, f32 products


def stack(wid):
    ws = [EXPERTS[wid](s) for s in range(E)]
    return ws, stack_experts(ws)


def check_grouped(y, x, ws, groups, w, *, what=""):
    """``y`` against the XLA reference (sqrt(K) tolerance) and each group against the numpy spec;
    rows past ``sum(groups)`` exactly zero."""
    y = np.asarray(jnp.asarray(y, jnp.float32), np.float64)
    xf = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    assert np.isfinite(y).all(), f"{what}: unwritten or NaN outputs at {np.argwhere(~np.isfinite(y))[:5].tolist()}"
    ref = np.asarray(
        grouped_qmatmul(jnp.asarray(xf, jnp.float32), w, jnp.asarray(groups, jnp.int32), implementation="xla_reference")
    )
    k = xf.shape[1]
    wd = np.stack([np.asarray(dequantize(e), np.float64) for e in ws])
    tol = 2.0**-7 * np.abs(ref) + 2.0**-5 * np.sqrt(k) * np.sqrt((xf**2).mean()) * np.sqrt((wd**2).mean())
    bad = np.abs(y - ref) > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} outside the XLA reference's tolerance, worst {np.abs(y - ref).max()}"
    )
    start = 0
    for e, g in enumerate(groups):
        if g:
            assert_close(y[start : start + g], xf[start : start + g], ws[e], what=f"{what} expert {e}")
        start += g
    assert not y[start:].any(), f"{what}: rows past sum(group_sizes) must be zero"


@pytest.mark.parametrize("cfg", [DECODE, GEMV], ids=["decode", "gemv"])
@pytest.mark.parametrize("wid", sorted(EXPERTS))
def test_interpret_matches_reference(wid, cfg):
    ws, s = stack(wid)
    w = jax.device_put(s)
    k = s.shape[1]
    if cfg.gemv is False and wid == "fp8-block128":
        cfg = dataclasses.replace(cfg, bk=64)  # K = 256: a step inside each 128-column scale block, two steps a split
    for groups, m in ROUTINGS if not cfg.gemv else ROUTINGS[:2] + ROUTINGS[3:]:  # GEMV: tiles of one row
        rng = np.random.default_rng(m)
        x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
        y = grouped_triton_qmatmul(x, w, jnp.asarray(groups, jnp.int32), cfg=cfg, interpret=True, poison=True)
        assert y.shape == (m, s.shape[0]) and y.dtype == jnp.bfloat16
        check_grouped(y, x, ws, groups, w, what=f"{wid} {groups}")


def test_f16_activations_and_heuristic_config():
    ws, s = stack("awq-uint4-zero-g64")
    w = jax.device_put(s)
    groups, m = ROUTINGS[2]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((m, s.shape[1])), jnp.float16)
    y = grouped_triton_qmatmul(x, w, jnp.asarray(groups, jnp.int32), interpret=True, poison=True)
    assert y.dtype == jnp.float16
    check_grouped(y, x, ws, groups, w, what="f16 heuristic")


@pytest.mark.parametrize("bm", [1, 4, 16])
def test_tile_schedule_covers_every_row_once(bm):
    rng = np.random.default_rng(bm)
    e, m = 8, 40
    schedule = jax.jit(tile_schedule, static_argnums=(1, 2))
    for _ in range(30):
        groups = rng.integers(0, 9, e) * rng.integers(0, 2, e)  # many empty experts
        while groups.sum() > m:
            groups[rng.integers(0, e)] //= 2
        ex, r0, r1 = (np.asarray(a) for a in schedule(jnp.asarray(groups, jnp.int32), m, bm))
        assert ex.shape == (num_tiles(m, e, bm),)
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]])
        owner = np.full(m, -1)
        for t in range(len(ex)):
            if ex[t] < 0:
                assert r0[t] == r1[t] == 0
                continue
            lo, hi = starts[ex[t]], starts[ex[t]] + groups[ex[t]]
            assert lo <= r0[t] < r1[t] <= hi and r1[t] - r0[t] <= bm, (groups, t, ex[t], r0[t], r1[t])
            assert (owner[r0[t] : r1[t]] == -1).all(), "a row in two tiles"
            owner[r0[t] : r1[t]] = ex[t]
        np.testing.assert_array_equal(owner[: groups.sum()], np.repeat(np.arange(e), groups))
        assert (owner[groups.sum() :] == -1).all()  # rows past the total (when there are any)


@pytest.fixture
def interpret_backend():
    b = register_grouped_backend(PallasGrouped(interpret=True, config=DECODE, name="pallas_triton_grouped_interpret"))
    yield b
    GROUPED_BACKENDS.pop(b.name, None)


def test_forced_through_grouped_qmatmul(interpret_backend):
    ws, s = stack("gguf-mxfp4")
    w = jax.device_put(s)
    groups, m = ROUTINGS[0]
    x = jnp.asarray(np.random.default_rng(9).standard_normal((m, s.shape[1])), jnp.bfloat16)
    gs = jnp.asarray(groups, jnp.int32)
    f = jax.jit(grouped_qmatmul, static_argnames="implementation")
    y = f(x, w, gs, implementation=interpret_backend.name)
    direct = grouped_triton_qmatmul(x, w, gs, cfg=DECODE, interpret=True)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(direct, np.float32))
    check_grouped(y, x, ws, groups, w, what="forced")
    # A forced kernel that declines is an error, not a silent fallback: f32 activations, M past the range.
    with pytest.raises(ValueError, match="activation dtype float32"):
        grouped_qmatmul(x.astype(jnp.float32), w, gs, implementation=interpret_backend.name)
    big = jnp.zeros((GROUPED_MAX_M + 1, s.shape[1]), jnp.bfloat16)
    with pytest.raises(ValueError, match="outside 1..64"):
        grouped_qmatmul(big, w, gs, implementation=interpret_backend.name)


def test_dispatcher_choice_and_explain():
    _, s = stack("fp8-block128")
    w = jax.device_put(s)
    k = s.shape[1]
    xb = jnp.zeros((2, k), jnp.bfloat16)
    assert grouped_implementation(xb, w, platform="gpu") == "pallas_triton_grouped"
    assert grouped_implementation(jnp.zeros((GROUPED_MAX_M, k), jnp.bfloat16), w, platform="gpu") == (
        "pallas_triton_grouped"
    )
    text = explain_grouped(xb, w, platform="gpu")
    assert "pallas_triton_grouped" in text and "only the experts that have rows" in text
    # Past the kernel's range, with f32 activations, or off GPU: the XLA paths, and explain says why.
    big = jnp.zeros((GROUPED_MAX_M + 1, k), jnp.bfloat16)
    assert grouped_implementation(big, w, platform="gpu") == "xla_dequant_ragged_dot"
    assert "M=65 outside 1..64" in explain_grouped(big, w, platform="gpu")
    assert grouped_implementation(xb.astype(jnp.float32), w, platform="gpu") == "xla_routed_reference"
    assert grouped_implementation(xb, w, platform="cpu") == "xla_routed_reference"
    # A code type the kernel does not read (NF4 tables): declined with the reason.
    nf4 = jax.device_put(stack_experts([_synth(24, 128, e, qtype="nf4", block=(1, 64)) for e in range(E)]))
    assert grouped_implementation(xb[:, :128], nf4, platform="gpu") == "xla_routed_dequant"
    assert "qtype nf4" in explain_grouped(xb[:, :128], nf4, platform="gpu")
    assert "not a QArray" in why_not(xb, jnp.zeros((E, 24, k), jnp.bfloat16))


def test_why_not_large_stacks_and_caps():
    sds = jax.ShapeDtypeStruct
    ok = stack_experts([_synth(24, 128, e, qtype="uint4b8", block=(1, 32)) for e in range(2)])
    assert why_not(jnp.zeros((1, 128), jnp.bfloat16), ok) == ""

    # DeepSeek-V3-sized 4-bit experts: 256 x [4096, 7168] codes are 3.8e9 bytes, which Pallas addresses
    # with int32 offsets (up to 2^32 bytes) that wrap past 2^31: declined. Past 2^32 bytes it uses int64.
    def codes(e, n, k):
        return dataclasses.replace(
            ok,
            data=sds((e, n, k // 2), np.uint8),
            scale=sds((e, n, k // 32), np.float16),
            shape=(n, k),
            block=(1, 32),
        )

    x = sds((1, 7168), jnp.bfloat16)
    assert "int32 offsets" in why_not(x, codes(256, 4096, 7168))
    assert why_not(x, codes(320, 4096, 7168)) == ""  # 4.7e9 bytes: int64 offsets
    assert why_not(x, codes(128, 4096, 7168)) == ""  # 1.9e9 bytes
    assert {"uint4", "fp4_e2m1", "fp8_e4m3"} == set(CAPS.codes) and CAPS.m_max == GROUPED_MAX_M
