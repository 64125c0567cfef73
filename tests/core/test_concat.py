"""Stacking QArrays along N (q/k/v, gate/up): bit-exact, and refused where it would not be lossless."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jquant.core import dequantize
from jquant.core.concat import concat_rows, why_not_concat
from tests.ops.qmatmul_suite import QCase, make_qarray

STACKABLE = [
    QCase("uint4b8", (1, 128), 1, 48, 256),
    QCase("uint4", (1, 32), 1, 40, 256, zero="int"),
    QCase("uint4", (1, 64), 1, 24, 256, zero="float", scale_dtype="bfloat16"),
    QCase("int8", "channel", 1, 16, 128, scale_dtype="float32"),
    QCase("nf4", (1, 64), 1, 32, 128, scale_dtype="float32"),
    QCase("fp8_e4m3", "channel", 1, 8, 64, scale_dtype="float32"),
]


@pytest.mark.parametrize("case", STACKABLE, ids=str)
def test_stacked_dequantizes_to_the_stacked_pieces(case):
    ws = [make_qarray(dataclasses.replace(case, n=case.n + 8 * i, seed=i)) for i in range(3)]
    if case.block == "channel":  # per-channel blocks are (1, K) for every piece
        assert len({w.block for w in ws}) == 1
    assert why_not_concat(ws) == ""
    cat = concat_rows(ws).validate("stacked")
    assert cat.shape == (sum(w.shape[0] for w in ws), case.k)
    np.testing.assert_array_equal(dequantize(cat), np.concatenate([dequantize(w) for w in ws]))


def test_same_act_order_permutation_stacks_and_different_ones_do_not():
    case = QCase("uint4", (1, 32), 1, 16, 128, zero="int", perm=True)
    a, b = make_qarray(case), make_qarray(dataclasses.replace(case, seed=1))
    assert "permutations differ" in why_not_concat([a, b])
    b_same = dataclasses.replace(b, perm=a.perm)
    np.testing.assert_array_equal(
        dequantize(concat_rows([a, b_same])), np.concatenate([dequantize(a), dequantize(b_same)])
    )


@pytest.mark.parametrize(
    "other, reason",
    [
        (QCase("uint8b128", (1, 128), 1, 16, 256), "code types differ"),
        (QCase("uint4b8", (1, 64), 1, 16, 256), "blocks"),
        (QCase("uint4b8", (1, 128), 1, 16, 256, scale_dtype="bfloat16"), "scale dtypes differ"),
        (QCase("uint4b8", (1, 128), 1, 16, 256, scale2=True), "scale2"),
    ],
)
def test_refuses_what_does_not_stack(other, reason):
    a = make_qarray(QCase("uint4b8", (1, 128), 1, 16, 256))
    assert reason in why_not_concat([a, make_qarray(other)])
    with pytest.raises(ValueError, match=reason):
        concat_rows([a, make_qarray(other)])


def test_per_tensor_scales_do_not_stack():
    a = make_qarray(QCase("fp8_e4m3", "tensor", 1, 16, 64, scale_dtype="float32"))
    b = make_qarray(QCase("fp8_e4m3", "tensor", 1, 16, 64, scale_dtype="float32", seed=1))
    assert "one scale row per weight row" in why_not_concat([a, b])


def test_dense_weights_stack():
    a, b = np.ones((3, 8), np.float32), np.zeros((5, 8), np.float32)
    assert why_not_concat([a, b]) == ""
    assert concat_rows([a, b]).shape == (8, 8)
    assert "differ" in why_not_concat([a, np.zeros((5, 9), np.float32)])
