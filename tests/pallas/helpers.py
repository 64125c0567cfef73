"""Shared helpers of the Pallas kernel tests: random canonical QArrays and the sqrt(K) tolerance."""

from __future__ import annotations

import numpy as np

from jquant.core.dequant import dequantize
from jquant.core.packing import pack_codes
from jquant.core.qarray import QArray, block_for
from jquant.core.qtypes import int_type


def make_weight(rng, n, k, *, bits=4, group=128, zero=False, signed=False, perm=False, scale_dtype=np.float16):
    """A random canonical QArray (numpy): uint4b8 / uint4+zero / uint8b128 / uint8+zero / int8."""
    block = block_for(n, k, group_size=group)
    ng = -(-k // block[1])
    if signed:
        qt = int_type(8, signed=True)
        codes = rng.integers(-128, 128, (n, k), dtype=np.int8)
        data = codes
    else:
        qt = int_type(bits) if zero else int_type(bits, bias=1 << (bits - 1))
        codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        data = pack_codes(codes, 4) if bits == 4 else codes
    scale = (rng.random((n, ng)) * 0.02 + 0.002).astype(scale_dtype)
    z = rng.integers(0, 1 << bits, (n, ng), dtype=np.uint8) if zero else None
    p = rng.permutation(k).astype(np.int32) if perm else None
    return QArray(data=data, scale=scale, zero=z, perm=p, qtype=qt, shape=(n, k), block=block).validate("test")


def reference(x, w: QArray) -> np.ndarray:
    """float64 ``x @ dequantize(w).T`` from the numpy spec (x as the kernel sees it)."""
    return np.asarray(x, np.float64) @ dequantize(w).astype(np.float64).T


def assert_close(y, x, w: QArray, *, what=""):
    """|y - ref| <= 2^-7 |ref| + 2^-5 sqrt(K) rms(x) rms(W) elementwise (bf16 output and weights).

    The first term is the bf16/f16 rounding of the output, the second the rounding of K products
    (weights rounded to the activation dtype when scaled before the dot) growing like sqrt(K):
    bf16 rounding has a relative std of about 2^-7/sqrt(12), so 2^-5 is ~14 sigma of it, while a
    wrong code, scale or index moves an output by O(sqrt(K) rms(x) rms(W)). NaN anywhere fails.
    """
    xf = np.asarray(x, np.float64)
    wd = dequantize(w).astype(np.float64)
    ref = xf @ wd.T
    y = np.asarray(y, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert np.isfinite(y).all(), f"{what}: non-finite outputs (unwritten or NaN) at {np.argwhere(~np.isfinite(y))[:5]}"
    k = xf.shape[-1]
    tol = 2.0**-7 * np.abs(ref) + 2.0**-5 * np.sqrt(k) * np.sqrt((xf**2).mean()) * np.sqrt((wd**2).mean())
    bad = np.abs(y - ref) > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} outside tolerance; worst |err| {np.abs(y - ref).max():.3e}, "
        f"at {np.argwhere(bad)[:3].tolist()}: y={y[bad][:3].tolist()} ref={ref[bad][:3].tolist()} "
        f"tol={tol[bad][:3].tolist()}"
    )
