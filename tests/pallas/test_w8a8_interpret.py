"""The W8A8 Pallas-Triton kernel in interpret mode (CPU) against the spec.

Spec: ``reference_qmatmul(fake_quantize(x, act), w)``, tolerance scaled with sqrt(K)
(`tests.pallas.helpers.assert_close`). Outputs are written into NaN-poisoned buffers, so a tile the
kernel fails to write fails the test. M straddles the 16 / 64 / 128 row tiles, N is odd, K sits at
block edges; fp8 per-tensor / per-channel / 128x128 blocks, int8 per-channel, uint8b128, static
activation scales, act-order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.pallas.w8a8 import config_for, layout_of, pallas_w8a8_qmatmul, why_not
from jquant.pallas.w8a8_triton import W8A8Config
from tests.ops.w8a8_cases import ACTS, WEIGHTS, WEIGHTS_BY_NAME, check_against_spec, make_w8, make_x, to_device

M_EDGES = (1, 7, 16, 127, 128, 129)


def _run(xs, w, act, cfg=None):
    """The kernel (interpret, poisoned) on several activations in one compilation."""
    f = functools.partial(pallas_w8a8_qmatmul, act=act, cfg=cfg, interpret=True, poison=True)
    return jax.jit(lambda xs, w: [f(x, w) for x in xs])(xs, to_device(w))


@pytest.mark.parametrize("wname, ms", [("fp8-block128", M_EDGES), ("int8-channel", (1, 129))])
def test_m_edges(wname, ms):
    case = WEIGHTS_BY_NAME[wname]
    rng = np.random.default_rng(11)
    n, k = 203, 384  # odd N (a partial 64- and 128-wide tile); K: 3 blocks, 1.5 decode steps of 256
    w = make_w8(rng, n, k, case)
    act = ACTS[case.act]
    xs = [make_x(rng, (m, k)) for m in ms]
    lay = layout_of(w, act)
    assert {config_for(m, lay).bm for m in ms} == {16, 64}  # decode and prefill tiles
    for x, y in zip(xs, _run(xs, w, act)):
        assert y.shape == (x.shape[0], n) and y.dtype == jnp.bfloat16
        check_against_spec(y, x, w, act, what=f"{wname} m={x.shape[0]}")


# Every kernel path once (scale2 and dynamic-vs-static per-tensor activations differ only outside
# the kernel: tests/ops/test_xla_w8a8.py covers them through the shared helpers).
KERNEL_CASES = [c for c in WEIGHTS if c.name not in ("fp8-tensor-dyn", "fp8-channel-scale2", "int8-channel")]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.name)
def test_every_weight_kind(case):
    rng = np.random.default_rng(len(case.name))
    n, k = 131, 256
    w = make_w8(rng, n, k, case)
    act = ACTS[case.act]
    x = make_x(rng, (2, 5, k))  # [B, T, K]
    assert why_not(x, w, act) == ""
    (y,) = _run([x], w, act)
    assert y.shape == (2, 5, n)
    check_against_spec(y, x, w, act, what=case.name)


@pytest.mark.parametrize("wname", ["fp8-block128-e8m0-token", "uint8b128-channel"])
def test_k_not_a_multiple_of_the_tiles(wname):
    """K = 320: a partial 128-column weight block / a partial 256-column decode step (masked)."""
    case = WEIGHTS_BY_NAME[wname]
    rng = np.random.default_rng(3)
    w = make_w8(rng, 97, 320, case)
    act = ACTS[case.act]
    xs = [make_x(rng, (m, 320)) for m in (5, 70)]
    for x, y in zip(xs, _run(xs, w, act)):
        check_against_spec(y, x, w, act, what=f"{wname} m={x.shape[0]}")


def test_split_k_nested_blocks_f16_and_expanded_scale_rows():
    """Explicit configs: split-K over 128-column blocks walked in 64-column dots (partials summed in
    XLA), f16 output, fp8 64-column activation groups, and an N tile (256) wider than the 128-row
    weight-scale blocks (scales expanded per row)."""
    rng = np.random.default_rng(4)
    case = WEIGHTS_BY_NAME["fp8-block128"]
    w = make_w8(rng, 300, 640, case)
    act = ACTS["fp8-group64"]
    x = make_x(rng, (19, 640), jnp.float16)
    cfgs = [
        W8A8Config(bm=16, bn=32, bk=32, split_k=3),  # kblk 64 = 2 dots; 10 blocks over 3 splits
        W8A8Config(bm=32, bn=256, bk=64, split_k=1),  # bn 256 > 128-row scale blocks
        W8A8Config(bm=128, bn=128, bk=64, num_warps=8, num_stages=3),  # the large-M prefill tile
    ]
    for cfg in cfgs:
        (y,) = _run([x], w, act, cfg)
        assert y.dtype == jnp.float16
        check_against_spec(y, x, w, act, what=str(cfg))
    c = WEIGHTS_BY_NAME["int8-channel-perm"]
    wi = make_w8(rng, 50, 512, c)
    xi = make_x(rng, (3, 512))
    (y,) = _run([xi], wi, ACTS[c.act], W8A8Config(bm=16, bn=16, bk=128, split_k=4))  # int32 partials per split
    check_against_spec(y, xi, wi, ACTS[c.act], what="int8 split 4")


def test_why_not_declines():
    rng = np.random.default_rng(5)
    w = make_w8(rng, 64, 256, WEIGHTS_BY_NAME["fp8-channel-bf16"])
    act = ACTS["fp8-token"]
    assert why_not(jnp.zeros((2, 256), jnp.bfloat16), w, act) == ""
    assert "float32" in why_not(jnp.zeros((2, 256), jnp.float32), w, act)
    from jquant.core.activation import fp8_act

    g16 = fp8_act(dynamic=True, granularity="group", group_size=16)
    assert "multiple of 32" in why_not(jnp.zeros((2, 256), jnp.bfloat16), w, g16)
    with pytest.raises(ValueError, match="multiple of 32"):
        pallas_w8a8_qmatmul(jnp.zeros((2, 256), jnp.bfloat16), w, g16, interpret=True)
