"""GPTQModel's planar ("split-plane") GPTQ layout: 5/6/7-bit checkpoints and ``checkpoint_format: "gptq_p"``.

GPTQModel >= 7 (``gptqmodel/utils/planar_packing.py``) stores a ``b``-bit code as word-aligned bit
planes whose widths divide 32, so no code straddles a word::

    b = 3: 2-bit low plane + 1-bit high plane          (only under checkpoint_format "gptq_p")
    b = 5: 4 + 1      b = 6: 4 + 2      b = 7: 4 + 2 + 1     (plane offsets 0, 4, 6)
    b = 2 / 4 / 8: one plane, bit-identical to the ordinary GPTQ bitstream

For every 32 consecutive codes along the packed axis the planes take ``b`` adjacent int32 words,
low plane first; inside a plane of width ``w``, word ``i`` holds codes ``[i*32/w, (i+1)*32/w)``
at shifts ``w*j`` (``planar_pack_rows``). ``qweight`` int32 [K*b/32, N] is packed this way along
K, ``qzeros`` int32 [K/G, N*b/32] along N (``planar_pack_cols``), so K and N are multiples of 32;
``scales`` [K/G, N] and ``g_idx`` [K] are as in GPTQ. Zero points are stored as is (v2), whatever
the label: GPTQModel's reader ``utils/model_dequant.py convert_gptq_file`` treats 5/6/7 bits (and
``gptq_p``) as planar and skips the v1 ``+1`` correction for them ("5/6/7-bit only exists planar
with v2 zero semantics, so the format label is not trusted for those widths"); its writer
``QuantizeConfig`` relabels a 5/6/7-bit ``gptq`` / ``gptq_v2`` config ``gptq_p``.

Canonical: codes widened to one byte each (qtype ``uint{b}b{2^(b-1)}`` when every zero is the
midpoint, else ``uint{b}`` + uint8 zeros), lossless; ``W = s * (q - z)`` as for GPTQ.
"""

from __future__ import annotations

import numpy as np

from jquant.core.qarray import QArray
from jquant.formats._int_packed import _bias, _int32, _scales, _unexpected, group_perm, int_qarray
from jquant.formats.base import TensorGroup

__all__ = ["PLANES", "PLANAR_ONLY_BITS", "unpack_planar", "convert_planar_group"]

# bits -> ((plane width, bit offset), ...), low plane first (planar_packing.py _PLANES).
PLANES = {
    2: ((2, 0),),
    3: ((2, 0), (1, 2)),
    4: ((4, 0),),
    5: ((4, 0), (1, 4)),
    6: ((4, 0), (2, 4)),
    7: ((4, 0), (2, 4), (1, 6)),
    8: ((8, 0),),
}
PLANAR_ONLY_BITS = (5, 6, 7)
_TENSORS = ("qweight", "qzeros", "scales", "g_idx", "bias")


def unpack_planar(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Planar int32 words -> uint8 codes, 32 codes per ``bits`` words along ``axis`` (0 or 1).

    Args:
        words: int32 [R, C]; ``words.shape[axis]`` a multiple of ``bits``.
        bits: 2..8 (a key of `PLANES`).
        axis: the packed axis (0 for ``qweight``, 1 for ``qzeros``).

    Returns:
        uint8 [R*32/bits, C] (axis 0) or [R, C*32/bits] (axis 1).
    """
    w = np.asarray(words).view(np.uint32)
    if axis == 1:
        w = w.T
    rows, cols = w.shape
    blocks = rows // bits
    w = w.reshape(blocks, bits, cols)
    out = np.zeros((blocks, 32, cols), np.uint32)
    row = 0
    for width, offset in PLANES[bits]:
        per = 32 // width
        shifts = (np.arange(per, dtype=np.uint32) * width).reshape(1, 1, per, 1)
        plane = (w[:, row : row + width, None, :] >> shifts) & np.uint32((1 << width) - 1)  # [blocks, width, per, C]
        out |= plane.reshape(blocks, 32, cols) << np.uint32(offset)
        row += width
    out = out.reshape(blocks * 32, cols).astype(np.uint8)
    return np.ascontiguousarray(out.T if axis == 1 else out)


def convert_planar_group(
    group: TensorGroup, *, bits: int, group_size: int, desc_act: bool
) -> dict[str, QArray | np.ndarray]:
    """One planar GPTQ module (``qweight``, ``qzeros``, ``scales``, [``g_idx``], [``bias``]) -> canonical.

    Args:
        group: the module's tensors (layout in the module docstring).
        bits: code width (3, 5, 6, 7; 2/4/8 also read, being the plain layout).
        group_size: G from the config (after ``dynamic`` overrides), -1 for one group spanning K.
        desc_act: act-order; makes ``g_idx`` mandatory when grouped.

    Returns:
        ``{prefix.weight: QArray}`` (uint8 codes [N, K], scales [N, K/G], optional uint8 zeros,
        optional perm) and the bias.

    Raises:
        FormatError: naming the tensor, for missing partners, wrong dtypes or shapes (including a
            continuous-layout 3-bit tensor whose rows are not whole planar blocks), non-finite
            scales, bad ``g_idx``.
    """
    _unexpected(group, _TENSORS, "planar GPTQ")
    group.require("qweight", "qzeros", "scales")
    if desc_act and group_size != -1:
        group.require("g_idx")
    qweight = _int32(group, "qweight")
    rows, n = qweight.shape
    if rows % bits:
        raise group.error(
            "qweight", f"{rows} rows are not whole planar blocks of {bits} words (qweight int32 [K*{bits}/32, N])"
        )
    k = rows * 32 // bits
    gs = k if group_size == -1 else group_size
    if k % gs:
        raise group.error("qweight", f"group_size {group_size} does not divide in_features K={k} (qweight rows)")
    ngroups = k // gs
    scales = _scales(group, (ngroups, n))
    qzeros = _int32(group, "qzeros")
    if n % 32 or qzeros.shape != (ngroups, n * bits // 32):
        raise group.error(
            "qzeros",
            f"shape {list(qzeros.shape)} but planar {bits}-bit zeros of N={n} (a multiple of 32) are "
            f"[{ngroups}, {n * bits // 32}]",
        )
    perm = group_perm(group, k, gs, ngroups)
    codes = unpack_planar(qweight, bits, axis=0)
    zeros = unpack_planar(qzeros, bits, axis=1)
    out: dict[str, QArray | np.ndarray] = {
        group.full_name("weight"): int_qarray(codes, scales, zeros, bits=bits, group_size=gs, perm=perm)
    }
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out
