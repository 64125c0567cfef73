"""Canonical arrays -> torch: zero-copy wrapping, bit-exact dtype reinterpretation, the dequant twin."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

import torch_bridge as tb
from jquant.core import QArray, dequantize
from jquant.core import qtypes as qt

QTYPES = [qt.uint4b8, qt.uint4, qt.uint8, qt.uint8b128, qt.int8, qt.int_type(2), qt.int_type(3, bias=4),
          qt.fp8_e4m3, qt.fp8_e5m2, qt.fp4_e2m1, qt.nf4, qt.bnb_fp4, qt.iq4nl]  # fmt: skip


def _random_bytes_weight(q, n, k, block, zero, perm, scale_dtype, rng):
    """Random *bytes* as codes (gguf-py's trick: catches nibble-order and sign bugs real weights hide)."""
    nbytes = k * q.container_bits // 8
    data = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    if q.container_bits > q.bits:  # odd widths: the unused container bits must be zero
        per = 8 // q.container_bits
        mask = sum(((1 << q.bits) - 1) << (q.container_bits * i) for i in range(per))
        data &= np.uint8(mask)
    data = data.view(q.storage_dtype)
    ss = (-(-n // block[0]), -(-k // block[1]))
    scale = (rng.random(ss) * 0.1 + 0.001).astype(scale_dtype)
    z = None
    if zero == "int":
        z = rng.integers(0, 1 << q.bits, ss).astype(np.uint8)
    elif zero == "float":
        z = rng.standard_normal(ss).astype(ml_dtypes.bfloat16)
    p = rng.permutation(k).astype(np.int32) if perm else None
    s2 = np.array([[0.37]], np.float32) if zero is None else None
    return QArray(data=data, scale=scale, zero=z, perm=p, scale2=s2, qtype=q, shape=(n, k), block=block).validate()


@pytest.mark.parametrize("q", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize(
    "block,zero,perm,scale_dtype",
    [
        ((1, 32), None, False, np.float32),
        ((1, 64), "int", True, np.float16),
        ((128, 128), "float", False, ml_dtypes.bfloat16),
    ],
    ids=["g32", "g64_intzero_perm", "blk128_floatzero_bf16"],
)
def test_dequant_twin_is_bit_exact(q, block, zero, perm, scale_dtype):
    if zero == "int" and q.kind != "int":
        pytest.skip("integer zero points belong to integer codes")
    rng = np.random.default_rng(hash((q.name, block)) % 2**32)
    w = _random_bytes_weight(q, 130, 256, block, zero, perm, scale_dtype, rng)
    want = dequantize(w)
    got = tb.dequantize(tb.to_torch(w)).numpy()
    assert got.dtype == np.float32 and got.shape == (130, 256)
    # bit-exact (signed zeros included); NaN codes (fp8 0x7f / 0xff in random bytes) must stay NaN, but
    # numpy and torch widen fp8 NaN to different float32 payloads
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_numpy_leaves_are_shared_not_copied(tmp_path):
    path = tmp_path / "codes.bin"
    np.arange(64 * 16, dtype=np.uint8).reshape(64, 16).tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(64, 16))
    scale = np.full((64, 1), 0.5, dtype=ml_dtypes.bfloat16)
    w = QArray(data=mm, scale=scale, qtype=qt.uint4b8, shape=(64, 32), block=(1, 32))
    tw = tb.to_torch(w)
    assert tw.data.data_ptr() == mm.ctypes.data  # the tensor *is* the file mapping
    assert tw.scale.dtype == torch.bfloat16 and tw.scale.data_ptr() == scale.ctypes.data
    assert float(tw.scale[3, 0]) == 0.5


@pytest.mark.parametrize("np_dt,t_dt", [(ml_dtypes.float8_e4m3fn, torch.float8_e4m3fn),
                                        (ml_dtypes.float8_e5m2, torch.float8_e5m2),
                                        (ml_dtypes.float8_e8m0fnu, torch.float8_e8m0fnu),
                                        (ml_dtypes.bfloat16, torch.bfloat16)])  # fmt: skip
def test_ml_dtypes_reinterpret_bit_exact(np_dt, t_dt):
    bits = np.arange(256, dtype=np.uint8) if np.dtype(np_dt).itemsize == 1 else np.arange(0, 65536, 7, dtype=np.uint16)
    a = bits.view(np_dt)
    t = tb.as_tensor(a)
    assert t.dtype == t_dt
    carrier = torch.uint8 if t.element_size() == 1 else torch.int16
    np.testing.assert_array_equal(t.view(carrier).numpy().view(bits.dtype), bits)
    finite = np.isfinite(a.astype(np.float32))
    np.testing.assert_array_equal(t.float().numpy()[finite], a.astype(np.float32)[finite])


def test_dlpack_leaves():
    jnp = pytest.importorskip("jax.numpy")  # JAX may be used by tests, never by torch_bridge itself
    a = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    t = tb.as_tensor(a)
    assert t.dtype == torch.float32 and t.tolist() == np.asarray(a).tolist()


def test_to_torch_validates_first():
    bad = QArray(data=np.zeros((4, 8), np.uint8), scale=np.full((4, 1), np.nan, np.float32), qtype=qt.uint4b8,
                 shape=(4, 16), block=(1, 16))  # fmt: skip
    from jquant import FormatError

    with pytest.raises(FormatError, match="non-finite scale"):
        tb.to_torch(bad)
