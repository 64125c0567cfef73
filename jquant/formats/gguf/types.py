"""GGML tensor types: block geometry in one table, and one small converter per type into `QArray`.

Every GGML quantized type stores a row of K elements as ``K / block`` consecutive blocks of
``nbytes`` bytes (blocks run along the innermost ggml dimension ``ne[0]`` = HF in_features), so a
weight of HF shape [N, K] is a uint8 array [N, K / block * nbytes]. Each converter below takes the
blocks as uint8 [N, nb, nbytes] and returns the canonical `QArray` of the same values, losslessly:

* codes are moved from GGUF's in-block order to canonical column order and packed in the layout of
  `jquant.core.packing.pack_codes` (`_pack`). GGUF's 32-element types use a **split-half** nibble
  order (byte j holds elements j and j + 16: `gguf-py quants.py Q4_0.dequantize_blocks`), unlike
  the adjacent-pair order of the canonical layout; Q4_K/Q5_K, IQ4_XS and NVFP4 split halves of
  their 64-, 32- and 16-element chunks the same way.
* 5-bit and 6-bit codes (Q5_0, Q5_1, Q5_K, Q6_K) live in uint8 containers (one code per byte): the
  canonical layout has no 5/6-bit containers and a byte is what kernels read; 3-bit (Q3_K) codes
  live in 4-bit containers.
* fp16 super-scales times small integer sub-scales (K-quants, IQ4_XS) become float32 effective
  scales ``d * sc`` and mins ``dmin * m``. Both products are exact in float32 (11-bit mantissa times
  at most 8 bits), so ``v * s - z`` reproduces llama.cpp's ``d * sc * q - dmin * m`` bit for bit;
  the bit-exact tests against `gguf.quants.dequantize` on random blocks prove it.
* signed code ranges become unsigned codes with a bias (`jquant.core.qtypes.int_type`):
  Q4_0 -> uint4b8, Q5_0 -> uint5b16, Q3_K -> uint3b4, Q6_K -> uint6b32, TQ2_0 -> uint2b1.
* scales keep their stored dtype where one scale is one stored field: fp16 (Q4_0..Q8_0, IQ4_NL,
  TQ2_0), E8M0 (MXFP4), fp8 e4m3 (NVFP4, or exact float32 for bytes that are not valid e4m3fn).
  E2M1's code 8 decodes to -0.0 canonically and to +0.0 in gguf-py: equal numbers.

Types whose values cannot be written canonically (IQ1/IQ2/IQ3 grids, TQ1_0's base-3 packing) are
dequantized exactly at convert time by gguf-py (imported lazily: jquant.formats must import without
it), with a warning. Sources: ggml/src/ggml-common.h block structs, gguf-py 0.19 ``gguf/quants.py``
and ``gguf/constants.py`` (``GGML_QUANT_SIZES``); formats.md section 7.

This module imports numpy and ml_dtypes only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_dtypes
import numpy as np

from jquant.core.qarray import QArray
from jquant.core.qtypes import QType, fp4_e2m1, int8, int_type, iq4nl, uint4, uint4b8

__all__ = ["GGMLType", "GGML_TYPES", "ggml_type", "to_qarray", "CANONICAL", "DENSE", "QK_K"]

QK_K = 256  # elements of a K-quant super-block (ggml-common.h QK_K)


@dataclasses.dataclass(frozen=True)
class GGMLType:
    """Geometry of one GGML type (gguf-py ``GGML_QUANT_SIZES``).

    Attributes:
        id: the ``ggml_type`` number stored in the file's tensor info.
        name: llama.cpp's name, e.g. ``"Q4_K"``.
        block: elements per block (1 for dense types).
        nbytes: bytes per block.
        dense: numpy dtype of a dense type (F32, F16, BF16, I8..., F64), else None.
    """

    id: int
    name: str
    block: int
    nbytes: int
    dense: np.dtype | None = None

    def row_bytes(self, k: int) -> int:
        return k // self.block * self.nbytes


_BF16 = np.dtype(ml_dtypes.bfloat16)

# id, name, elements per block, bytes per block, dense dtype (gguf-py 0.19 constants.py).
GGML_TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        GGMLType(0, "F32", 1, 4, np.dtype("<f4")),
        GGMLType(1, "F16", 1, 2, np.dtype("<f2")),
        GGMLType(2, "Q4_0", 32, 18),
        GGMLType(3, "Q4_1", 32, 20),
        GGMLType(6, "Q5_0", 32, 22),
        GGMLType(7, "Q5_1", 32, 24),
        GGMLType(8, "Q8_0", 32, 34),
        GGMLType(9, "Q8_1", 32, 40),
        GGMLType(10, "Q2_K", 256, 84),
        GGMLType(11, "Q3_K", 256, 110),
        GGMLType(12, "Q4_K", 256, 144),
        GGMLType(13, "Q5_K", 256, 176),
        GGMLType(14, "Q6_K", 256, 210),
        GGMLType(15, "Q8_K", 256, 292),
        GGMLType(16, "IQ2_XXS", 256, 66),
        GGMLType(17, "IQ2_XS", 256, 74),
        GGMLType(18, "IQ3_XXS", 256, 98),
        GGMLType(19, "IQ1_S", 256, 50),
        GGMLType(20, "IQ4_NL", 32, 18),
        GGMLType(21, "IQ3_S", 256, 110),
        GGMLType(22, "IQ2_S", 256, 82),
        GGMLType(23, "IQ4_XS", 256, 136),
        GGMLType(24, "I8", 1, 1, np.dtype("i1")),
        GGMLType(25, "I16", 1, 2, np.dtype("<i2")),
        GGMLType(26, "I32", 1, 4, np.dtype("<i4")),
        GGMLType(27, "I64", 1, 8, np.dtype("<i8")),
        GGMLType(28, "F64", 1, 8, np.dtype("<f8")),
        GGMLType(29, "IQ1_M", 256, 56),
        GGMLType(30, "BF16", 1, 2, _BF16),
        GGMLType(34, "TQ1_0", 256, 54),
        GGMLType(35, "TQ2_0", 256, 66),
        GGMLType(39, "MXFP4", 32, 17),
        GGMLType(40, "NVFP4", 64, 36),
        GGMLType(41, "Q1_0", 128, 18),
    )
}
_BY_NAME = {t.name: t for t in GGML_TYPES.values()}
DENSE = frozenset(t.name for t in GGML_TYPES.values() if t.dense is not None)


def ggml_type(name_or_id: str | int) -> GGMLType:
    """Looks a type up by name or id (KeyError if unknown)."""
    return GGML_TYPES[name_or_id] if isinstance(name_or_id, int) else _BY_NAME[name_or_id]


# ---- byte-field helpers (blocks: uint8 [N, nb, nbytes]) ------------------------------------------
def _f16(blocks: np.ndarray, off: int) -> np.ndarray:
    """The little-endian fp16 field at byte ``off`` of every block -> float16 [N, nb]."""
    return np.ascontiguousarray(blocks[..., off : off + 2]).view("<f2")[..., 0]


def _split_half_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF 32-element nibble order: byte j holds element j (low) and j + 16 (high). [..., 16] -> [..., 32]."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _crumbs_128(qs: np.ndarray) -> np.ndarray:
    """2-bit codes of a 256-element block (Q2_K, Q3_K low bits, TQ2_0), [..., 64] -> [..., 256].

    Element i = 128 h + 32 s + l sits in byte 32 h + l at bit 2 s (gguf-py ``Q2_K.dequantize_blocks``).
    """
    q = qs.reshape(*qs.shape[:-1], 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    return (q & 3).reshape(*qs.shape[:-1], 256)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K 6-bit scales and mins packed in 12 bytes -> uint8 [..., 8] each (``Q4_K.get_scale_min``)."""
    lo, hi_bits, tail = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([lo & 63, (tail & 15) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([hi_bits & 63, (tail >> 4) | ((hi_bits >> 6) << 4)], axis=-1)
    return sc, mn


def _pack(codes: np.ndarray, container_bits: int) -> np.ndarray:
    """Canonical packing (`jquant.core.packing.pack_codes`, lowest bits first) of codes already known
    to fit their container (every converter masks them), without pack_codes' range checks."""
    c = codes.astype(np.uint8, copy=False)
    if container_bits == 4:
        return c[..., 0::2] | (c[..., 1::2] << 4)
    if container_bits == 2:
        return c[..., 0::4] | (c[..., 1::4] << 2) | (c[..., 2::4] << 4) | (c[..., 3::4] << 6)
    raise AssertionError(container_bits)


def _rows(codes: np.ndarray) -> np.ndarray:
    """[N, nb, block] codes -> [N, K]."""
    return codes.reshape(codes.shape[0], -1)


def _qarray(codes: np.ndarray, qtype: QType, scale: np.ndarray, group: int, zero: np.ndarray | None = None) -> QArray:
    codes = _rows(codes)
    n, k = codes.shape
    if qtype.container_bits == 8:  # one code per byte: int8 (Q8_0) or uint8 (5/6-bit codes)
        data = np.ascontiguousarray(codes).astype(qtype.storage_dtype, copy=False)
    else:
        data = _pack(codes, qtype.container_bits)
    return QArray(
        data=data,
        scale=np.ascontiguousarray(scale.reshape(n, -1)),
        zero=None if zero is None else np.ascontiguousarray(zero.reshape(n, -1)),
        qtype=qtype,
        shape=(n, k),
        block=(1, group),
    )


def _eff(d: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Effective float32 sub-block scale d * sub (exact: fp16 times an integer of <= 8 bits)."""
    return d.astype(np.float32)[..., None] * sub.astype(np.float32)


# ---- one converter per type ------------------------------------------------------------------------
uint5 = int_type(5)
uint5b16 = int_type(5, bias=16)
uint3b4 = int_type(3, bias=4)
uint6b32 = int_type(6, bias=32)
uint2 = int_type(2)
uint2b1 = int_type(2, bias=1)


def _q4_0(b):  # d f16, qs[16]: x = (nib - 8) * d
    return _qarray(_split_half_nibbles(b[..., 2:18]), uint4b8, _f16(b, 0), 32)


def _q4_1(b):  # d, m f16, qs[16]: x = nib * d + m  ==  v * s - (-m)   (negation is exact)
    return _qarray(_split_half_nibbles(b[..., 4:20]), uint4, _f16(b, 0), 32, zero=-_f16(b, 2))


def _q5_codes(b, qh_off):
    low = _split_half_nibbles(b[..., qh_off + 4 : qh_off + 20])
    high = np.unpackbits(b[..., qh_off : qh_off + 4], axis=-1, bitorder="little")  # bit i of u32 LE qh -> element i
    return low | (high << 4)


def _q5_0(b):  # d, qh u32, qs[16]: x = (q - 16) * d
    return _qarray(_q5_codes(b, 2), uint5b16, _f16(b, 0), 32)


def _q5_1(b):  # d, m, qh, qs: x = q * d + m
    return _qarray(_q5_codes(b, 4), uint5, _f16(b, 0), 32, zero=-_f16(b, 2))


def _q8_0(b):  # d, qs int8[32]: x = q * d
    return _qarray(np.ascontiguousarray(b[..., 2:34]).view(np.int8), int8, _f16(b, 0), 32)


def _q2_k(b):  # scales[16] (lo nibble sc, hi nibble m), qs[64], d, dmin: x = d*sc*q - dmin*m
    sc = b[..., 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    return _qarray(_crumbs_128(b[..., 16:80]), uint2, _eff(d, sc & 15), 16, zero=_eff(dmin, sc >> 4))


def _q3_k(b):  # hmask[32], qs[64], scales[12], d: x = d * S * (low2 - 4 * !hbit)
    hmask, s = b[..., 0:32], b[..., 96:108]
    t = np.arange(16)
    lo = (s[..., t % 8] >> (4 * (t // 8)).astype(np.uint8)) & 15
    hi = (s[..., 8 + t % 4] >> (2 * (t // 4)).astype(np.uint8)) & 3
    S = (lo | (hi << 4)).astype(np.int8) - np.int8(32)  # signed 6-bit sub-block scales
    hb = (hmask[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1  # element 32 j + l: bit j of hmask[l]
    codes = _crumbs_128(b[..., 32:96]) | (hb.reshape(*hb.shape[:-2], 256) << 2)  # code = q + 4 (hbit stored inverted)
    return _qarray(codes, uint3b4, _eff(_f16(b, 108), S), 16)


def _q45_k_codes(qs):
    """qs[128]: sub-block j = 2c + h is the low (h=0) / high (h=1) nibble of bytes 32c..32c+31."""
    q = qs.reshape(*qs.shape[:-1], 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(2, 1)
    return (q & 15).reshape(*qs.shape[:-1], 256)


def _q4_k(b):  # d, dmin, scales[12], qs[128]: x = d*sc*q - dmin*m, 8 sub-blocks of 32
    sc, mn = _k_scale_min(b[..., 4:16])
    d, dmin = _f16(b, 0), _f16(b, 2)
    return _qarray(_q45_k_codes(b[..., 16:144]), uint4, _eff(d, sc), 32, zero=_eff(dmin, mn))


def _q5_k(b):  # d, dmin, scales[12], qh[32], qs[128]: 5th bit of element 32 j + l is bit j of qh[l]
    sc, mn = _k_scale_min(b[..., 4:16])
    qh = b[..., 16:48]
    hb = ((qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1).reshape(*qh.shape[:-1], 256)
    codes = _q45_k_codes(b[..., 48:176]) | (hb << 4)
    return _qarray(codes, uint5, _eff(_f16(b, 0), sc), 32, zero=_eff(_f16(b, 2), mn))


def _q6_k(b):  # ql[128], qh[64], scales int8[16], d: x = d * sc * (q - 32), 16 sub-blocks of 16
    ql, qh = b[..., 0:128], b[..., 128:192]
    # element 128 h + 32 s + l (s = 0..3): low nibble from ql[64 h + 32 (s % 2) + l] >> 4 (s // 2),
    # high 2 bits from qh[32 h + l] >> 2 s (gguf-py Q6_K.dequantize_blocks).
    low = ql.reshape(*ql.shape[:-1], 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)
    low = (low & 15).reshape(*ql.shape[:-1], 2, 4, 32)
    high = qh.reshape(*qh.shape[:-1], 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    codes = (low | ((high & 3) << 4)).reshape(*ql.shape[:-1], 256)
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8)
    return _qarray(codes, uint6b32, _eff(_f16(b, 208), sc), 16)


def _iq4_nl(b):  # d, qs[16]: x = d * KV[nib], Q4_0 nibble order
    return _qarray(_split_half_nibbles(b[..., 2:18]), iq4nl, _f16(b, 0), 32)


def _iq4_xs(b):  # d, scales_h u16, scales_l[4], qs[128]: x = d * (ls - 32) * KV[nib], 8 sub-blocks of 32
    d = _f16(b, 0)
    sh = np.ascontiguousarray(b[..., 2:4]).view("<u2")[..., 0]
    sl = b[..., 4:8]
    j = np.arange(8)
    ls = ((sl[..., j // 2] >> (4 * (j % 2)).astype(np.uint8)) & 15) | (
        ((sh[..., None] >> (2 * j).astype(np.uint16)) & 3).astype(np.uint8) << 4
    )
    qs = b[..., 8:136].reshape(*b.shape[:-1], 8, 16)
    codes = _split_half_nibbles(qs).reshape(*b.shape[:-1], 256)
    return _qarray(codes, iq4nl, _eff(d, ls.astype(np.int16) - 32), 32)


def _mxfp4(b):  # e (E8M0), qs[16]: x = 2^(e - 127) * E2M1[nib], Q4_0 nibble order
    e = np.ascontiguousarray(b[..., 0]).view(ml_dtypes.float8_e8m0fnu)
    return _qarray(_split_half_nibbles(b[..., 1:17]), fp4_e2m1, e, 32)


def _nvfp4(b):  # 4 unsigned-E4M3 scales, then 4 x 8 bytes: sub-block s of 16 in split-half order within its 8 bytes
    raw = b[..., 0:4]
    # gguf-py NVFP4.ue4m3_to_fp32 ignores bit 7 and maps the bytes 0x00 / 0x7F to 0; fp8 e4m3fn has
    # the same value for every byte < 0x7F, so real files keep their fp8 scales and anything else
    # gets its exact float32 value.
    if bool((raw < 0x7F).all()):
        scale = np.ascontiguousarray(raw).view(ml_dtypes.float8_e4m3fn)
    else:
        r = raw & 0x7F
        exp, man = (r >> 3).astype(np.int32), (r & 7).astype(np.float32)
        val = np.where(exp == 0, man * np.float32(2.0**-9), (1 + man / 8) * np.exp2(exp - 7).astype(np.float32))
        scale = np.where(raw == 0x7F, 0, val).astype(np.float32)
    qs = b[..., 4:36].reshape(*b.shape[:-1], 4, 8)
    codes = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(*b.shape[:-1], 64)
    return _qarray(codes, fp4_e2m1, scale, 16)


def _tq2_0(b):  # qs[64], d: x = (q - 1) * d, 2-bit codes in the Q2_K crumb order
    return _qarray(_crumbs_128(b[..., 0:64]), uint2b1, _f16(b, 64), 256)


CANONICAL: dict[str, Callable[[np.ndarray], QArray]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
    "IQ4_NL": _iq4_nl,
    "IQ4_XS": _iq4_xs,
    "MXFP4": _mxfp4,
    "NVFP4": _nvfp4,
    "TQ2_0": _tq2_0,
}


def to_qarray(t: GGMLType, rows: np.ndarray) -> QArray:
    """Raw rows of a canonical-capable type -> `QArray`.

    Args:
        t: the tensor's type (must be in `CANONICAL`).
        rows: uint8 [N, K / t.block * t.nbytes], the tensor's bytes in HF orientation.

    Returns:
        `QArray` of logical shape [N, K] (not yet validated).
    """
    n = rows.shape[0]
    blocks = np.asarray(rows, dtype=np.uint8).reshape(n, -1, t.nbytes)
    return CANONICAL[t.name](blocks)
