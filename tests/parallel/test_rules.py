"""Sharding rules on one device: per-field specs, lossless re-blocking, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jquant
from jquant.core import QArray, int_type, pack_codes
from jquant.parallel import LLAMA_RULES, Layout, ShardingError, field_specs, fit


def _int4(n=256, k=512, g=128, *, zero=False, perm=False, lead=(), seed=0) -> QArray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(*lead, n, k))
    return QArray(
        data=pack_codes(codes, 4),
        scale=rng.uniform(0.5, 2, size=(*lead, n, k // g)).astype(np.float16),
        zero=rng.integers(0, 16, size=(*lead, n, k // g)).astype(np.uint8) if zero else None,
        perm=np.stack([rng.permutation(k).astype(np.int32) for _ in range(int(np.prod(lead or (1,))))]).reshape(
            *lead, k
        )
        if perm
        else None,
        qtype=int_type(4, signed=False),
        shape=(n, k),
        block=(1, g),
    )


def test_rules_by_hf_name_and_module_path():
    r = LLAMA_RULES
    assert r.layout_of("model.layers.0.self_attn.q_proj.weight") is Layout.COLUMN
    assert r.layout_of("model.layers.3.mlp.down_proj.bias") is Layout.ROW
    assert r.layout_of("stacked_layers.self_attn.o_proj") is Layout.ROW
    assert r.layout_of("model.layers.0.block_sparse_moe.experts.2.w1.weight") is Layout.COLUMN
    assert r.layout_of("model.layers.0.block_sparse_moe.experts.2.w2.weight") is Layout.ROW
    assert r.layout_of("model.layers.0.block_sparse_moe.gate.weight") is Layout.REPLICATED  # the router
    assert r.layout_of("model.embed_tokens.weight") is Layout.REPLICATED
    assert r.layout_of("lm_head.weight") is Layout.COLUMN


def test_field_specs_follow_one_layout_with_leading_axes():
    w = _int4(zero=True, perm=True, lead=(3,))  # a layer-stacked weight
    col, row = field_specs(w, Layout.COLUMN), field_specs(w, Layout.ROW)
    assert (col.data, col.scale, col.zero, col.perm) == (P(None, "tp", None),) * 3 + (P(None, None),)
    assert (row.data, row.scale, row.zero, row.perm) == (P(None, None, "tp"),) * 3 + (P(None, "tp"),)
    ex = field_specs(_int4(lead=(2, 4)), Layout.EXPERT)  # [L, E, ...]: E split
    assert ex.data == P(None, "tp", None, None) and ex.scale == P(None, "tp", None, None)
    per_channel = field_specs(_int4(g=512), Layout.ROW)  # one scale column: kept whole
    assert per_channel.scale == P(None, None) and per_channel.data == P(None, "tp")


@pytest.mark.parametrize("layout,tp", [(Layout.ROW, 8), (Layout.ROW, 16), (Layout.COLUMN, 4)])
def test_fit_reblocks_losslessly(layout, tp):
    w = _int4(zero=True, perm=True)
    f = fit(w, layout, tp, name="x")
    if layout is Layout.ROW:
        assert f.block == (1, 512 // tp) and f.scale.shape == (256, tp)
    else:
        assert f is w  # per-row scales: any N split is on a block edge
    f.validate("x")
    np.testing.assert_array_equal(jquant.dequantize(f), jquant.dequantize(w))


def test_fit_refuses_misaligned_splits_naming_the_tensor():
    w = _int4(n=96, k=384)
    with pytest.raises(ShardingError, match="N=96 is not divisible by 64") as e:
        fit(w, Layout.COLUMN, 64, name="model.layers.0.mlp.up_proj.weight")
    assert "up_proj" in str(e.value)
    with pytest.raises(ShardingError, match="neither divides nor is a multiple"):
        fit(_int4(n=64, k=384, g=128), Layout.ROW, 4, name="o")  # 96 columns a device vs groups of 128
    with pytest.raises(ShardingError, match="whole number of bytes"):
        fit(_int4(n=8, k=8, g=8), Layout.ROW, 8, name="o")  # 1 column of 4-bit codes a device
    with pytest.raises(ShardingError, match="experts"):
        fit(_int4(lead=(3,)), Layout.EXPERT, 2, name="experts")
