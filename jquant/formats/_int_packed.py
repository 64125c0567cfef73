"""Integer weight-only checkpoints packed into int32 words: the GPTQ and AWQ layouts, shared by three formats.

GPTQ (AutoGPTQ / GPTQModel), AWQ (AutoAWQ GEMM) and AutoRound's exports all store one linear
layer as ``qweight`` + ``qzeros`` + ``scales`` (+ ``g_idx``, + ``bias``); they differ in which
axis is packed, in the nibble order and in the zero-point convention. This module turns either
layout into the canonical `QArray` (numpy only):

GPTQ (formats.md 1.2-1.6; ``gptqmodel/nn_modules/qlinear/__init__.py``
``PackableQuantLinear.dequantize_weight`` / ``gptqmodel/utils/model_dequant.py convert_gptq_file``)::

    qweight int32 [K*b/32, N]     codes packed along K: a little-endian bitstream per column
    qzeros  int32 [K/G, N*b/32]   zero points packed along N, same bitstream
    scales  f16   [K/G, N]
    g_idx   int32 [K]             group of each input channel (act-order when not k // G)
    W[n, k] = scales[g, n] * (q[k, n] - z[g, n]),  g = g_idx[k]

For b in {2, 4, 8} the bitstream is "code j of a word at bit b*j"; for b = 3 it is GPTQ's
"10-1-10-1-10" scheme over 3 words, which is the same bitstream (`jquant.core.packing.unpack_bitstream`).
Zero points: ``gptq`` (v1) checkpoints store ``z - 1`` per field (AutoGPTQ ``qlinear_cuda_old.pack``:
``zeros -= 1``); every field decodes as ``(stored + 1) mod 2**b`` (GPTQModel ``_shift_gptq_qzeros``),
``gptq_v2`` stores ``z``.

AWQ GEMM (formats.md 2.2-2.4; ``awq/modules/linear/gemm.py WQLinear_GEMM``,
``awq/utils/packing_utils.py dequantize_gemm``)::

    qweight int32 [K, N/8]        4-bit codes packed along N, nibble i of word c = column 8c + ORDER[i]
    qzeros  int32 [K/G, N/8]      same packing, plain zero points (no -1)
    scales  f16   [K/G, N]
    W[n, k] = (q[k, n] - z[k // G, n]) * scales[k // G, n],   ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

Canonical result: ``data`` [N, K] codes (3-bit widened to 4-bit containers), ``scale`` [N, K/G]
in the checkpoint's own float dtype (lossless), ``block = (1, G)`` (``(1, K)`` for G = -1). When
every zero point equals ``2**(b-1)`` (symmetric) the qtype is ``uint{b}b{2**(b-1)}`` and no zero
array is kept; otherwise the qtype is ``uint{b}`` with uint8 zeros. A non-trivial ``g_idx``
becomes ``perm = argsort(g_idx)`` (stable) with the columns of ``data`` regrouped so that every
group is contiguous.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.core.packing import int32_words_to_bytes, pack_codes, unpack_bitstream, unpack_codes
from jquant.core.qarray import QArray, block_for
from jquant.core.qtypes import int_type
from jquant.formats.base import TensorGroup

__all__ = [
    "CONFIG_FILE",
    "IntScheme",
    "check_bits_group",
    "GPTQ_BITS",
    "AWQ_ORDER",
    "AWQ_REVERSE_ORDER",
    "unpack_gptq_qweight",
    "unpack_gptq_qzeros",
    "unpack_awq",
    "perm_from_g_idx",
    "int_qarray",
    "convert_gptq_group",
    "convert_awq_group",
]

# Widths with the plain bitstream layout. 5/6/7-bit GPTQModel checkpoints use its "planar"
# layout (gptqmodel/utils/planar_packing.py), not read here.
GPTQ_BITS = (2, 3, 4, 8)
PLANAR_BITS = (5, 6, 7)

# AWQ's nibble interleave (awq/utils/packing_utils.py AWQ_ORDER, AWQ_REVERSE_ORDER): nibble i of a
# word holds column 8c + AWQ_ORDER[i]; column 8c + j sits in nibble AWQ_REVERSE_ORDER[j].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)

# `Format.from_config` is not told the config's path; errors name the file the key lives in.
CONFIG_FILE = "config.json"

_SCALE_DTYPES = ("float16", "bfloat16", "float32")
_GPTQ_TENSORS = ("qweight", "qzeros", "scales", "g_idx", "bias")
_AWQ_TENSORS = ("qweight", "qzeros", "scales", "bias")


@dataclasses.dataclass(frozen=True)
class IntScheme:
    """How one quantized module is stored, resolved from its format's config.

    Attributes:
        bits: code width (2, 3, 4, 8 for GPTQ; 4 for AWQ).
        group_size: input channels per scale; -1 means one group spanning K (per output channel).
        sym: the config's symmetric flag. Only a hint: zero points are read from ``qzeros`` and
            dropped only when they all equal ``2**(bits-1)``.
        desc_act: act-order; makes ``g_idx`` mandatory.
        zeros_v1: GPTQ v1 zero points (stored as ``z - 1``); False for gptq_v2 / AWQ.
    """

    bits: int
    group_size: int
    sym: bool = True
    desc_act: bool = False
    zeros_v1: bool = False

    def __post_init__(self):
        if self.bits not in GPTQ_BITS:
            raise ValueError(f"bits={self.bits} not in {GPTQ_BITS}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"group_size={self.group_size} must be positive or -1")


def check_bits_group(qc_bits, qc_group, *, file, key_bits="bits", key_group="group_size") -> tuple[int, int]:
    """Validates config ``bits`` / ``group_size`` values shared by GPTQ, AWQ and AutoRound configs.

    Raises:
        UnsupportedFormatError: 5/6/7-bit (GPTQModel's planar layout).
        ConfigError: anything else outside {2, 3, 4, 8}, or a group size that is neither -1 nor positive.
    """
    if isinstance(qc_bits, bool) or not isinstance(qc_bits, int):
        raise ConfigError(
            f"{key_bits}={qc_bits!r} must be an integer", file=file, tensor=f"quantization_config.{key_bits}"
        )
    if qc_bits in PLANAR_BITS:
        raise UnsupportedFormatError(
            f"{key_bits}={qc_bits}: GPTQModel's planar 5/6/7-bit layout is not supported (only {GPTQ_BITS})",
            file=file,
            tensor=f"quantization_config.{key_bits}",
        )
    if qc_bits not in GPTQ_BITS:
        raise ConfigError(
            f"{key_bits}={qc_bits} is not a supported width {GPTQ_BITS}",
            file=file,
            tensor=f"quantization_config.{key_bits}",
        )
    if isinstance(qc_group, bool) or not isinstance(qc_group, int) or (qc_group != -1 and qc_group <= 0):
        raise ConfigError(
            f"{key_group}={qc_group!r} must be a positive integer or -1",
            file=file,
            tensor=f"quantization_config.{key_group}",
        )
    return qc_bits, qc_group


# ---- unpacking ------------------------------------------------------------------------------


def unpack_gptq_qweight(qweight: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ ``qweight`` int32 [K*b/32, N] -> uint8 codes [K, N] (bitstream along K, per column)."""
    k = qweight.shape[0] * 32 // bits
    return unpack_bitstream(qweight, bits, k, axis=0)


def unpack_gptq_qzeros(qzeros: np.ndarray, bits: int, n: int, *, v1: bool) -> np.ndarray:
    """GPTQ ``qzeros`` int32 [ngroups, ceil(N*b/32)] -> uint8 zero points [ngroups, N].

    v1 fields hold ``z - 1``; each decodes independently as ``(field + 1) mod 2**b`` (GPTQModel
    ``_shift_gptq_qzeros``), so an asymmetric v1 zero of 0, stored as all-ones, reads back as 0.
    """
    z = unpack_bitstream(qzeros, bits, n, axis=1)
    if v1:
        z = ((z.astype(np.uint16) + 1) & ((1 << bits) - 1)).astype(np.uint8)
    return z


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """AWQ int32 [R, N/8] (4-bit, packed along N with the AWQ interleave) -> uint8 codes [R, N]."""
    r, c = words.shape
    nib = unpack_codes(int32_words_to_bytes(words, axis=1), 4)  # [R, 8c]: nibble i of word c at 8c + i
    return np.ascontiguousarray(nib.reshape(r, c, 8)[:, :, list(AWQ_REVERSE_ORDER)].reshape(r, c * 8))


# ---- act-order ------------------------------------------------------------------------------


def group_perm(group: TensorGroup, k: int, group_size: int, ngroups: int) -> np.ndarray | None:
    """`perm_from_g_idx` of ``group``'s optional ``g_idx`` tensor (an int [K] vector); None without one."""
    if "g_idx" not in group:
        return None
    if group.dtype("g_idx").kind not in "iu" or group.shape("g_idx") != (k,):
        raise group.error(
            "g_idx", f"{group.dtype('g_idx').name} {list(group.shape('g_idx'))} but expected an int32 [{k}] vector"
        )
    return perm_from_g_idx(np.asarray(group["g_idx"]), group_size, ngroups, lambda p: group.error("g_idx", p))


def perm_from_g_idx(g_idx: np.ndarray, group_size: int, ngroups: int, err) -> np.ndarray | None:
    """Checks ``g_idx`` [K] and returns the column order that makes groups contiguous.

    Args:
        g_idx: group index of each input channel.
        group_size: G (already resolved: K for per-channel).
        ngroups: number of scale rows.
        err: ``err(problem) -> FormatError`` naming the g_idx tensor.

    Returns:
        None for the trivial ``g_idx[k] = k // G``; else int32 ``perm`` = stable argsort of g_idx,
        so that data column j holds input channel ``perm[j]`` and column j's group is ``j // G``.

    Raises:
        FormatError: values outside [0, ngroups), or a group with a member count other than G
            (the trailing group may hold fewer when G does not divide K).
    """
    k = g_idx.shape[0]
    g = g_idx.astype(np.int64)
    bad = np.flatnonzero((g < 0) | (g >= ngroups))
    if bad.size:
        i = int(bad[0])
        raise err(f"value {int(g[i])} at input channel {i} is outside [0, {ngroups}) ({bad.size} such channels)")
    if np.array_equal(g, np.arange(k) // group_size):
        return None
    counts = np.bincount(g, minlength=ngroups)
    want = np.full(ngroups, group_size)
    want[-1] = k - group_size * (ngroups - 1)
    wrong = np.flatnonzero(counts != want)
    if wrong.size:
        i = int(wrong[0])
        raise err(f"group {i} has {int(counts[i])} input channels but group_size gives {int(want[i])}")
    return np.argsort(g, kind="stable").astype(np.int32)


# ---- building the QArray --------------------------------------------------------------------


def int_qarray(
    codes_kn: np.ndarray,
    scales_gn: np.ndarray,
    zeros_gn: np.ndarray,
    *,
    bits: int,
    group_size: int,
    perm: np.ndarray | None,
) -> QArray:
    """Codes [K, N], scales and zero points [K/G, N] (checkpoint orientation) -> canonical QArray.

    The zero array is dropped (qtype ``uint{b}b{2**(b-1)}``) when every zero point is the
    symmetric midpoint; otherwise kept as uint8 [N, K/G] with qtype ``uint{b}``.
    """
    k, n = codes_kn.shape
    codes = codes_kn.T
    if perm is not None:
        codes = codes[:, perm]
    mid = 1 << (bits - 1)
    sym = bool((zeros_gn == mid).all())
    qtype = int_type(bits, bias=mid) if sym else int_type(bits)
    return QArray(
        data=pack_codes(np.ascontiguousarray(codes), qtype.container_bits),
        scale=np.ascontiguousarray(scales_gn.T),
        zero=None if sym else np.ascontiguousarray(zeros_gn.T, dtype=np.uint8),
        perm=perm,
        qtype=qtype,
        shape=(n, k),
        block=block_for(n, k, group_size=group_size),
    )


def _int32(group: TensorGroup, suffix: str) -> np.ndarray:
    group.require(suffix)
    dt = group.dtype(suffix)
    if dt not in (np.dtype(np.int32), np.dtype(np.uint32)):
        raise group.error(suffix, f"dtype {dt.name} but packed words must be int32")
    if len(group.shape(suffix)) != 2:
        raise group.error(suffix, f"shape {list(group.shape(suffix))} but packed words must be 2-D")
    return np.asarray(group[suffix])


def _scales(group: TensorGroup, want: tuple[int, int], hint: str = "") -> np.ndarray:
    group.require("scales")
    dt = group.dtype("scales")
    if dt.name not in _SCALE_DTYPES:
        raise group.error("scales", f"dtype {dt.name} but scales must be one of {', '.join(_SCALE_DTYPES)}")
    if group.shape("scales") != want:
        raise group.error("scales", f"shape {list(group.shape('scales'))} but expected {list(want)}{hint}")
    s = np.asarray(group["scales"])
    bad = ~np.isfinite(s.astype(np.float32))
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise group.error("scales", f"non-finite scale {s[i]} at {list(i)} ({int(bad.sum())} such values)")
    return s


def _unexpected(group: TensorGroup, known: tuple[str, ...], fmt: str) -> None:
    extra = sorted(set(group) - set(known))
    if extra:
        raise group.error(extra[0], f"unexpected tensor next to a {fmt} qweight (expected only {', '.join(known)})")


def _resolved_group(group_size: int, k: int) -> int:
    return k if group_size == -1 else group_size


def convert_gptq_group(group: TensorGroup, scheme: IntScheme) -> dict[str, QArray | np.ndarray]:
    """One GPTQ-layout module (``qweight``, ``qzeros``, ``scales``, [``g_idx``], [``bias``]) -> canonical.

    Raises:
        FormatError: naming the file, the tensor and the problem, for missing partners, wrong
            dtypes or shapes (including AWQ-shaped tensors), non-finite scales, bad g_idx.
    """
    _unexpected(group, _GPTQ_TENSORS, "GPTQ")
    b = scheme.bits
    group.require("qweight", "qzeros", "scales")
    if scheme.desc_act and scheme.group_size != -1:
        group.require("g_idx")
    qweight = _int32(group, "qweight")
    rows, n = qweight.shape
    if (rows * 32) % b:
        raise group.error("qweight", f"{rows} rows of int32 words do not hold whole {b}-bit codes along K")
    k = rows * 32 // b
    gs = _resolved_group(scheme.group_size, k)
    if k % gs:
        raise group.error(
            "qweight",
            f"group_size {scheme.group_size} does not divide in_features K={k} (qweight rows {rows} x 32/{b})",
        )
    ngroups = k // gs
    sshape = group.shape("scales")
    hint = ""
    if len(sshape) == 2 and sshape[1] == n * 32 // b:  # AWQ tensors: qweight [K, N/8] read as [K*b/32, N]
        hint = f" (qweight looks packed along N like AWQ; GPTQ packs {b}-bit codes along K: qweight [K*{b}/32, N])"
    scales = _scales(group, (ngroups, n), hint)
    qzeros = _int32(group, "qzeros")
    zcols = -(-n * b // 32)
    if qzeros.shape != (ngroups, zcols):
        raise group.error("qzeros", f"shape {list(qzeros.shape)} but expected {[ngroups, zcols]} for K={k}, N={n}")
    perm = group_perm(group, k, gs, ngroups)
    codes = unpack_gptq_qweight(qweight, b)
    zeros = unpack_gptq_qzeros(qzeros, b, n, v1=scheme.zeros_v1)
    out: dict[str, QArray | np.ndarray] = {
        group.full_name("weight"): int_qarray(codes, scales, zeros, bits=b, group_size=gs, perm=perm)
    }
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out


def convert_awq_group(group: TensorGroup, *, bits: int, group_size: int) -> dict[str, QArray | np.ndarray]:
    """One AWQ GEMM module (``qweight``, ``qzeros``, ``scales``, [``bias``]) -> canonical.

    Raises:
        UnsupportedFormatError: bits other than 4 (the GEMM interleave is defined for nibbles).
        FormatError: naming the file, the tensor and the problem (missing partners, wrong dtypes,
            GPTQ-shaped tensors, non-finite scales).
    """
    if bits != 4:
        raise UnsupportedFormatError(f"AWQ GEMM packing is defined for 4-bit codes, config says bits={bits}")
    if "g_idx" in group:
        raise group.error("g_idx", "AWQ has no g_idx; this tensor belongs to the GPTQ layout (wrong quant_method?)")
    _unexpected(group, _AWQ_TENSORS, "AWQ")
    group.require("qweight", "qzeros", "scales")
    qweight = _int32(group, "qweight")
    k, c = qweight.shape
    n = c * 8
    gs = _resolved_group(group_size, k)
    if k % gs:
        raise group.error("qweight", f"group_size {group_size} does not divide in_features K={k} (qweight rows)")
    ngroups = k // gs
    sshape = group.shape("scales")
    hint = ""
    if len(sshape) == 2 and sshape[1] == c:  # GPTQ tensors: qweight [K/8, N] read as [K, N/8]
        hint = " (qweight looks packed along K like GPTQ; AWQ packs along N: qweight [K, N/8], scales [K/G, N])"
    scales = _scales(group, (ngroups, n), hint)
    qzeros = _int32(group, "qzeros")
    if qzeros.shape != (ngroups, c):
        raise group.error("qzeros", f"shape {list(qzeros.shape)} but expected {[ngroups, c]} for K={k}, N={n}")
    out: dict[str, QArray | np.ndarray] = {
        group.full_name("weight"): int_qarray(
            unpack_awq(qweight), scales, unpack_awq(qzeros), bits=4, group_size=gs, perm=None
        )
    }
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out


def _bias(group: TensorGroup, n: int) -> np.ndarray:
    if group.shape("bias") != (n,):
        raise group.error("bias", f"shape {list(group.shape('bias'))} but expected [{n}] (out_features)")
    return np.asarray(group["bias"])
