"""Packing: numpy and jnp twins agree bit-exactly; bitstreams match formats.md's worked examples."""

import numpy as np
import pytest

from jquant.core import pack_bitstream, pack_codes, unpack_bitstream, unpack_codes


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(5, 64), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, 64 * bits // 8) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, bits), codes)


def test_4bit_is_jax_uint4_byte_order():
    # element 2i in the low nibble of byte i: codes 1,2 -> 0x21
    assert pack_codes(np.array([[1, 2, 3, 4]]), 4).tolist() == [[0x21, 0x43]]


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_random_bytes_numpy_vs_jnp(bits):
    import jax.numpy as jnp

    from jquant.core import jnp_dequant

    raw = np.random.default_rng(0).integers(0, 256, size=(7, 33), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(jnp_dequant.unpack_codes(jnp.asarray(raw), bits)), unpack_codes(raw, bits))
    np.testing.assert_array_equal(pack_codes(unpack_codes(raw, bits), bits), raw)


def test_pack_rejects_wide_codes():
    with pytest.raises(ValueError, match="outside"):
        pack_codes(np.array([[16, 0]]), 4)
    with pytest.raises(ValueError, match="multiple"):
        pack_codes(np.array([[1, 2, 3]]), 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_bitstream_roundtrip_both_axes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(64, 6), dtype=np.uint8)
    words = pack_bitstream(codes, bits, axis=0)
    assert words.dtype == np.dtype("<i4") and words.shape == (64 * bits // 32, 6)
    np.testing.assert_array_equal(unpack_bitstream(words, bits, 64, axis=0), codes)
    np.testing.assert_array_equal(unpack_bitstream(words.T, bits, 64, axis=1), codes.T)


def test_bitstream_worked_examples():
    # formats.md 1.3: 32 rows of 3-bit codes k % 8 -> words 0x88fac688, 0xc688fac6, 0xfac688fa.
    words = pack_bitstream(np.arange(32) % 8, 3)
    assert [int(w) & 0xFFFFFFFF for w in words] == [0x88FAC688, 0xC688FAC6, 0xFAC688FA]
    # 4-bit codes 1..8 -> 0x87654321
    assert int(pack_bitstream(np.arange(1, 9), 4)[0]) & 0xFFFFFFFF == 0x87654321
