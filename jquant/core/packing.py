"""Canonical packing of sub-byte codes, and bitstream helpers for source formats.

Canonical layout (``QArray.data``): codes of ``c`` container bits (c in 1, 2, 4) are packed along
the last axis (K) into uint8, little-endian, lowest bits first: code ``j`` of a row sits in byte
``j // (8 // c)`` at bit offset ``c * (j % (8 // c))``. For 4-bit codes element ``2i`` is the low
nibble of byte ``i``: the same bytes as a JAX ``uint4`` array of shape [..., K], so a kernel can
bitcast instead of shifting. 8-bit codes are stored unpacked.

The numpy functions here have jnp twins in `jquant.core.jnp_dequant` that agree bit-exactly
(tested on random bytes). This module imports numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_codes", "unpack_codes", "unpack_bitstream", "pack_bitstream", "int32_words_to_bytes"]


def pack_codes(codes: np.ndarray, container_bits: int) -> np.ndarray:
    """Packs unsigned codes along the last axis into the canonical little-endian uint8 layout.

    Args:
        codes: integer array [..., K], every value < 2**container_bits.
        container_bits: 1, 2, 4 or 8.

    Returns:
        uint8 array [..., K * container_bits // 8].

    Raises:
        ValueError: K not a multiple of the codes per byte, or a code too wide for its container.
    """
    if container_bits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    if container_bits not in (1, 2, 4):
        raise ValueError(f"container_bits must be 1, 2, 4 or 8, got {container_bits}")
    per = 8 // container_bits
    k = codes.shape[-1]
    if k % per:
        raise ValueError(f"last axis {k} is not a multiple of {per} codes per byte")
    c = np.asarray(codes)
    if c.size and (int(c.max()) >> container_bits or int(c.min()) < 0):
        raise ValueError(f"codes outside [0, {1 << container_bits}) for {container_bits}-bit containers")
    c = c.astype(np.uint8).reshape(*c.shape[:-1], k // per, per)
    shifts = (np.arange(per, dtype=np.uint8) * container_bits).astype(np.uint8)
    return np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, container_bits: int) -> np.ndarray:
    """Inverse of `pack_codes`: uint8 [..., K*c/8] -> uint8 codes [..., K]."""
    if container_bits == 8:
        return np.asarray(packed)
    per = 8 // container_bits
    p = np.asarray(packed, dtype=np.uint8)
    shifts = (np.arange(per, dtype=np.uint8) * container_bits).astype(np.uint8)
    mask = np.uint8((1 << container_bits) - 1)
    out = (p[..., None] >> shifts) & mask
    return out.reshape(*p.shape[:-1], p.shape[-1] * per)


def int32_words_to_bytes(words: np.ndarray, axis: int) -> np.ndarray:
    """Views int32 words as their 4 little-endian bytes, expanding ``axis`` by 4 (byte order kept)."""
    w = np.ascontiguousarray(np.moveaxis(np.asarray(words), axis, -1)).astype("<i4", copy=False)
    b = w.view(np.uint8).reshape(*w.shape[:-1], w.shape[-1] * 4)
    return np.moveaxis(b, -1, axis)


def unpack_bitstream(words: np.ndarray, bits: int, count: int, axis: int = -1) -> np.ndarray:
    """Reads ``count`` codes of ``bits`` bits from a little-endian bitstream of int32 words.

    Code ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of word0 || word1 || ... with word0 the lowest
    32 bits (formats.md 0.2). This one function reads GPTQ's 2/3/4/8-bit packing along either
    axis: for 3 bits it is exactly the "10-1-10-1-10" scheme over 3 words per 32 codes.

    Args:
        words: int32 (or uint32) array; the stream runs along ``axis``.
        bits: 1..8.
        count: number of codes to read along ``axis`` (<= 32 * words.shape[axis] // bits).
        axis: the packed axis.

    Returns:
        uint8 array with ``axis`` of length ``count``.
    """
    b = int32_words_to_bytes(words, axis)
    b = np.moveaxis(b, axis, -1)
    if count * bits > b.shape[-1] * 8:
        raise ValueError(f"{count} codes of {bits} bits need {count * bits} bits, stream has {b.shape[-1] * 8}")
    if bits in (1, 2, 4, 8):
        out = unpack_codes(b, bits)[..., :count]
    else:
        bitarr = np.unpackbits(b, axis=-1, bitorder="little")[..., : count * bits]
        bitarr = bitarr.reshape(*bitarr.shape[:-1], count, bits)
        weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
        out = (bitarr.astype(np.uint16) * weights).sum(-1).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def pack_bitstream(codes: np.ndarray, bits: int, axis: int = -1) -> np.ndarray:
    """Inverse of `unpack_bitstream`: codes along ``axis`` -> int32 words (count*bits must fill words)."""
    c = np.moveaxis(np.asarray(codes, dtype=np.uint8), axis, -1)
    n = c.shape[-1]
    if (n * bits) % 32:
        raise ValueError(f"{n} codes of {bits} bits do not fill whole int32 words")
    bitarr = ((c[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(*c.shape[:-1], n * bits)
    by = np.packbits(bitarr, axis=-1, bitorder="little")
    words = np.ascontiguousarray(by).view("<i4")
    return np.moveaxis(words, -1, axis)
