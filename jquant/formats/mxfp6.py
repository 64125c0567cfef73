"""MXFP6 (OCP MX, FP6 E2M3 elements, E8M0 scales per 32): compressed-tensors ``mxfp6-pack-quantized``.

compressed-tensors 0.20 (``compressors/mxfp6/helpers.py pack_fp6_to_uint8``, preset ``MXFP6A16`` /
``MXFP6A8`` in ``quantization/quant_scheme.py``; formats.md 4.7)::

    weight_packed  uint8 [N, 3K/4]   4 codes per 3 bytes: word = b0 | b1 << 8 | b2 << 16 (little
                                     endian), code i = (word >> 6i) & 0x3F, i = 0..3
    weight_scale   uint8 [N, K/32]   E8M0 exponents, 2**(e - 127) (``mx_utils.py``)

An E2M3 code is ``sign << 5 | magnitude``; the 32 magnitudes, in code order, are ``m/8`` for
m < 8 (subnormals) then ``(1 + m/8) * 2**e`` (``kE2M3ToFloat``); the largest is 7.5. These are
the OCP E2M3 bit patterns, as ``ml_dtypes.float6_e2m3fn`` decodes them (checked in the tests). AMD Quark's
``fp6_e2m3`` (``Pack_fp6``) uses the same bytes.

Canonical: codes widened to one byte each (6 bits in an 8-bit container, lossless), qtype
``fp6_e2m3`` (`FP6_E2M3`: a 64-entry codebook, value = ``codebook[code]``), scales kept as
float8_e8m0fnu [N, K/32], block (1, 32): ``W = codebook[q] * 2**(e - 127)``.
"""

from __future__ import annotations

import numpy as np

from jquant.core.qarray import QArray
from jquant.core.qtypes import QType
from jquant.formats.base import TensorGroup
from jquant.formats.fp8 import checked, scale_geometry
from jquant.formats.mxfp4 import MX_GROUP, e8m0_view

__all__ = ["E2M3_VALUES", "FP6_E2M3", "unpack_fp6", "fp6_qarray"]

_MAG = tuple([m / 8 for m in range(8)] + [(1 + m / 8) * 2.0**e for e in range(3) for m in range(8)])
# code c (0..63): bit 5 is the sign; -0.0 keeps its sign (code 32), as compressed-tensors' torch.where does.
E2M3_VALUES = _MAG + tuple(-v for v in _MAG)
FP6_E2M3 = QType("fp6_e2m3", "float", 6, codebook=E2M3_VALUES)


def unpack_fp6(packed: np.ndarray) -> np.ndarray:
    """uint8 [..., 3K/4] (4 codes per 3 little-endian bytes) -> uint8 codes [..., K] (0..63)."""
    p = np.asarray(packed, np.uint8)
    b = p.reshape(*p.shape[:-1], p.shape[-1] // 3, 3).astype(np.uint32)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = np.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], axis=-1).astype(np.uint8)
    return codes.reshape(*p.shape[:-1], p.shape[-1] // 3 * 4)


def fp6_qarray(group: TensorGroup, *, packed: str, scale: str, group_size: int = MX_GROUP) -> QArray:
    """An MXFP6 weight (``packed`` uint8 [N, 3K/4], ``scale`` uint8 E8M0 [N, K/group_size]) -> QArray.

    Raises:
        FormatError: naming the tensor, for a missing partner, a dtype other than uint8, a packed
            width not a multiple of 3 bytes, scales of the wrong shape or NaN (0xFF) exponents.
    """
    group.require(packed, scale)
    if group.dtype(packed) != np.dtype(np.uint8):
        raise group.error(packed, f"packed fp6 dtype {group.dtype(packed).name} but uint8 expected")
    pshape = group.shape(packed)
    if len(pshape) != 2 or pshape[1] % 3:
        raise group.error(packed, f"shape {list(pshape)} but packed fp6 is 2-D uint8 [N, 3K/4] (4 codes per 3 bytes)")
    n, k = pshape[0], pshape[1] // 3 * 4
    s = e8m0_view(group, scale)
    s2d, blk = scale_geometry(group, scale, s.shape, n, k, strategy="group", group_size=group_size)
    q = QArray(
        data=unpack_fp6(np.asarray(group[packed])),
        scale=s.reshape(s2d),
        qtype=FP6_E2M3,
        shape=(n, k),
        block=blk,
    )
    return checked(group, scale, q)
