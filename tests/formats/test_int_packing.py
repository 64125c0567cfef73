"""GPTQ / AWQ word unpacking against independent, straightforward re-implementations (no producers)."""

from __future__ import annotations

import numpy as np
import pytest

from jquant.core.dequant import dequantize
from jquant.core.errors import FormatError
from jquant.formats._int_packed import (
    AWQ_ORDER,
    int_qarray,
    perm_from_g_idx,
    unpack_awq,
    unpack_gptq_qweight,
    unpack_gptq_qzeros,
)


def _naive_stream(words_col: np.ndarray, bits: int, count: int) -> list[int]:
    """Code i = bits [i*b, (i+1)*b) of word0 || word1 || ... (word0 lowest), one bit at a time."""
    stream = 0
    for j, w in enumerate(words_col.tolist()):
        stream |= (w & 0xFFFFFFFF) << (32 * j)
    return [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


def _autogptq_3bit_rows(qweight: np.ndarray) -> np.ndarray:
    """AutoGPTQ's own 3-bit unpack (shifts + two fix-ups), formats.md 1.3, as a third opinion."""
    q = qweight.astype(np.int64) & 0xFFFFFFFF
    r, n = q.shape
    w = q.reshape(r // 3, 3, 1, n)
    wf = np.array(
        [[0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0], [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
         [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0]]
    )  # fmt: skip
    w = (w >> wf[None, :, :, None]) & 7
    w[:, 0, 10] = (w[:, 0, 10] & 3) | ((w[:, 1, 0] << 2) & 4)
    w[:, 1, 11] = (w[:, 1, 11] & 1) | ((w[:, 2, 0] << 1) & 6)
    w &= 7
    return np.concatenate([w[:, 0, :11], w[:, 1, 1:12], w[:, 2, 1:11]], axis=1).reshape(-1, n)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_qweight_random_words(bits):
    rng = np.random.default_rng(bits)
    k, n = 64, 5
    words = rng.integers(-(2**31), 2**31, size=(k * bits // 32, n), dtype=np.int64).astype(np.int32)
    got = unpack_gptq_qweight(words, bits)
    assert got.shape == (k, n) and got.dtype == np.uint8
    want = np.array([_naive_stream(words[:, c], bits, k) for c in range(n)]).T
    np.testing.assert_array_equal(got, want)
    if bits == 3:
        np.testing.assert_array_equal(got, _autogptq_3bit_rows(words))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("v1", [False, True])
def test_gptq_qzeros_random_words(bits, v1):
    rng = np.random.default_rng(10 + bits)
    n, groups = 64, 3
    words = rng.integers(-(2**31), 2**31, size=(groups, n * bits // 32), dtype=np.int64).astype(np.int32)
    got = unpack_gptq_qzeros(words, bits, n, v1=v1)
    raw = np.array([_naive_stream(words[g], bits, n) for g in range(groups)])
    want = (raw + 1) % (1 << bits) if v1 else raw
    np.testing.assert_array_equal(got, want)


def test_gptq_worked_examples():
    # formats.md 1.3 (verified there): 4-bit codes 1..8 -> 0x87654321; 3-bit codes k mod 8 -> 3 words.
    w4 = np.array([[np.uint32(0x87654321).view(np.int32)]])
    np.testing.assert_array_equal(unpack_gptq_qweight(w4, 4)[:, 0], np.arange(1, 9))
    w3 = np.array([0x88FAC688, 0xC688FAC6, 0xFAC688FA], dtype=np.uint32).view(np.int32)[:, None]
    np.testing.assert_array_equal(unpack_gptq_qweight(w3, 3)[:, 0], np.arange(32) % 8)
    # v1 symmetric 4-bit zeros 0x77777777 decode to 8; v1 asymmetric zero 0 is stored as all ones.
    np.testing.assert_array_equal(unpack_gptq_qzeros(np.array([[0x77777777]], np.int32), 4, 8, v1=True), [[8] * 8])
    np.testing.assert_array_equal(unpack_gptq_qzeros(np.array([[-1]], np.int32), 4, 8, v1=True), [[0] * 8])


def test_awq_random_words_and_worked_example():
    rng = np.random.default_rng(3)
    words = rng.integers(-(2**31), 2**31, size=(6, 4), dtype=np.int64).astype(np.int32)
    got = unpack_awq(words)
    want = np.zeros((6, 32), np.uint8)
    for r in range(6):
        for c in range(4):
            u = int(words[r, c]) & 0xFFFFFFFF
            for i in range(8):  # nibble i of word c holds column 8c + ORDER[i] (WQLinear_GEMM.from_linear)
                want[r, 8 * c + AWQ_ORDER[i]] = (u >> (4 * i)) & 0xF
    np.testing.assert_array_equal(got, want)
    # formats.md 2.3 (verified there): columns whose code equals their index pack to 0x75316420.
    np.testing.assert_array_equal(unpack_awq(np.array([[0x75316420]], np.int32))[0], np.arange(8))


def _err(p):
    return FormatError(p, tensor="m.g_idx")


def test_perm_from_g_idx():
    k, g = 8, 2
    assert perm_from_g_idx(np.arange(k) // g, g, 4, _err) is None
    # formats.md 1.5 worked example: g_idx = [0, 1, 0, 1] for K=4, G=2.
    np.testing.assert_array_equal(perm_from_g_idx(np.array([0, 1, 0, 1]), 2, 2, _err), [0, 2, 1, 3])
    with pytest.raises(FormatError, match="value 5 at input channel 3 is outside"):
        perm_from_g_idx(np.array([0, 1, 0, 5]), 2, 2, _err)
    with pytest.raises(FormatError, match="group 0 has 3 input channels but group_size gives 2"):
        perm_from_g_idx(np.array([0, 0, 0, 1]), 2, 2, _err)


def test_int_qarray_dequant_matches_gather_formula():
    """Act-order regrouping: dequantize(QArray) == scales[g_idx] * (q - z[g_idx]) in original column order."""
    rng = np.random.default_rng(0)
    k, n, g = 64, 16, 16
    g_idx = rng.permutation(np.arange(k) // g)
    codes = rng.integers(0, 16, size=(k, n)).astype(np.uint8)
    scales = rng.standard_normal((k // g, n)).astype(np.float16)
    zeros = rng.integers(0, 16, size=(k // g, n)).astype(np.uint8)
    q = int_qarray(codes, scales, zeros, bits=4, group_size=g, perm=perm_from_g_idx(g_idx, g, k // g, _err))
    q.validate("t")
    want = (scales.astype(np.float32)[g_idx] * (codes.astype(np.float32) - zeros.astype(np.float32)[g_idx])).T
    np.testing.assert_array_equal(dequantize(q), want)
    # all zeros at the midpoint -> symmetric qtype, no zero array
    s = int_qarray(codes, scales, np.full_like(zeros, 8), bits=4, group_size=g, perm=None)
    assert s.qtype.name == "uint4b8" and s.zero is None
    np.testing.assert_array_equal(dequantize(s), (scales.astype(np.float32)[np.arange(k) // g] * (codes - 8.0)).T)
