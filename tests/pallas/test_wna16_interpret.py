"""The W4A16 / W8A16 Pallas kernel run in interpret mode on CPU against the numpy spec.

Shapes are small (interpret cost grows with grid steps) but straddle every edge the GPU meets:
M not a tile multiple, odd N, K not a multiple of the group or the K step, split-K remainders.
Every run writes into a NaN-poisoned output so an unwritten element fails.
"""

from __future__ import annotations

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401
from jquant.pallas import WNA16Backend, WNA16Config, decode_config, prefill_config, wna16_qmatmul
from tests.pallas.helpers import assert_close, make_weight

D = WNA16Config(bm=16, bn=32, bk=128, split_k=2)  # decode-like: split-K
P = WNA16Config(bm=32, bn=32, bk=64, split_k=1, scale_on_output=False)  # prefill-like: scaled weights

CASES = [
    # id, (m, n, k), weight kwargs, config, activation dtype
    ("w4g128-sym-split", (1, 80, 512), dict(bits=4, group=128), D, jnp.bfloat16),
    ("w4g32-sym", (5, 48, 256), dict(bits=4, group=32), D, jnp.bfloat16),
    ("w4g64-zero-f16", (7, 33, 320), dict(bits=4, group=64, zero=True), D, jnp.float16),
    ("w4-perchannel-kedge", (3, 40, 200), dict(bits=4, group=-1), D, jnp.bfloat16),
    ("w4g64-kedge-prefill", (33, 48, 224), dict(bits=4, group=64), P, jnp.bfloat16),
    (
        "w4g128-zero-prefill-scaleout",
        (40, 64, 256),
        dict(bits=4, group=128, zero=True),
        WNA16Config(bm=32, bn=32, bk=128, scale_on_output=True),
        jnp.float16,
    ),
    ("w4g32-actorder", (4, 32, 256), dict(bits=4, group=32, perm=True), D, jnp.bfloat16),
    ("w8g128-b128", (2, 48, 384), dict(bits=8, group=128), D, jnp.bfloat16),
    ("w8g64-zero-prefill", (20, 24, 192), dict(bits=8, group=64, zero=True), P, jnp.float16),
    ("w8-int8-perchannel", (9, 50, 160), dict(bits=8, group=-1, signed=True), P, jnp.bfloat16),
    ("w8g16-bf16-scales", (1, 16, 64), dict(bits=8, group=16, scale_dtype=jnp.bfloat16), D, jnp.bfloat16),
    ("w4g128-f32-scales", (2, 32, 128), dict(bits=4, group=128, scale_dtype=np.float32), D, jnp.bfloat16),
    # swap-AB (out^T = W x^T), whole-step loads with expanded scales, and the M=1 GEMV
    (
        "w4g32-swap-grouped",
        (5, 40, 320),
        dict(bits=4, group=32),
        WNA16Config(bm=16, bn=32, bk=128, split_k=2, swap_ab=True),
        jnp.bfloat16,
    ),
    (
        "w4g32-zero-swap-whole",
        (5, 40, 320),
        dict(bits=4, group=32, zero=True),
        WNA16Config(bm=16, bn=32, bk=128, split_k=2, scale_on_output=False, swap_ab=True),
        jnp.float16,
    ),
    (
        "w8-perchannel-swap-whole",
        (19, 40, 320),
        dict(bits=8, group=-1, signed=True),
        WNA16Config(bm=16, bn=32, bk=64, scale_on_output=False, swap_ab=True),
        jnp.bfloat16,
    ),
    (
        "w4g64-gemv",
        (1, 40, 320),
        dict(bits=4, group=64),
        WNA16Config(bm=1, bn=32, bk=128, split_k=2, scale_on_output=False, gemv=True),
        jnp.bfloat16,
    ),
    (
        "w8g128-zero-gemv",
        (1, 24, 384),
        dict(bits=8, group=128, zero=True),
        WNA16Config(bm=1, bn=16, bk=256, split_k=1, scale_on_output=False, gemv=True),
        jnp.float16,
    ),
    # the heuristic decode config (split_x, per-group scaling on the output), per-channel and act-order
    (
        "w4-perchannel-decode-heuristic",
        (3, 40, 1032),
        dict(bits=4, group=-1),
        decode_config(3, 40, 1032, bits=4),
        jnp.bfloat16,
    ),
    (
        "w4g32-zero-actorder-decode-heuristic",
        (9, 40, 2048),
        dict(bits=4, group=32, zero=True, perm=True),
        decode_config(9, 40, 2048, bits=4),
        jnp.float16,
    ),
    # the heuristic prefill configs: M <= 256 (split_x) and M > 256 (bm=256, swap-AB)
    (
        "w4g64-prefill-heuristic-small",
        (70, 40, 192),
        dict(bits=4, group=64),
        prefill_config(70, 40, 192, bits=4),
        jnp.bfloat16,
    ),
    (
        "w4g64-zero-prefill-heuristic-large",
        (260, 40, 192),
        dict(bits=4, group=64, zero=True),
        prefill_config(300, 40, 192, bits=4),
        jnp.float16,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_spec(case):
    name, (m, n, k), wkw, cfg, dt = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = make_weight(rng, n, k, **wkw)
    x = jnp.asarray(rng.standard_normal((m, k)), dt)
    y = wna16_qmatmul(x, w, cfg, interpret=True, poison=True)
    assert y.dtype == dt and y.shape == (m, n)
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=name)


def test_backend_call_3d_input_and_heuristic_configs():
    """The registered backend path (heuristic config, leading batch dims) in interpret mode."""
    rng = np.random.default_rng(1)
    w = make_weight(rng, 72, 256, bits=4, group=64)
    x = jnp.asarray(rng.standard_normal((2, 3, 256)), jnp.bfloat16)
    for mode in ("decode", "prefill"):
        b = WNA16Backend(mode, interpret=True)
        ok, why = b.supports(x, w)
        assert ok, why
        y = b(x, w)
        assert y.shape == (2, 3, 72)
        assert_close(
            np.asarray(y.astype(jnp.float32)).reshape(6, 72),
            np.asarray(x.astype(jnp.float32)).reshape(6, 256),
            w,
            what=mode,
        )


def test_poison_detects_unwritten_outputs():
    """The poison check itself can fail: a config whose grid misses rows leaves NaN behind."""
    from jquant.pallas import layout_of
    from jquant.pallas.wna16_triton import wna16_matmul

    rng = np.random.default_rng(2)
    w = make_weight(rng, 32, 128, bits=4, group=128)
    x = jnp.asarray(rng.standard_normal((20, 128)), jnp.bfloat16)
    y = wna16_matmul(x[:16], w.data, w.scale, lay=layout_of(w), cfg=D, interpret=True, poison=True)
    assert np.isfinite(np.asarray(y, np.float32)).all()
    full = jnp.full((20, 32), jnp.nan, jnp.bfloat16).at[:16].set(y)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(np.asarray(full.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w)
