"""Weight-only quantized matmul for every canonical code type, as one Pallas kernel (Triton lowering).

Computes ``y = x @ W'.T`` for a canonical `QArray` (``W'``: the weight dequantized in ``data``
column order; the caller permutes x by ``perm``), dequantizing each tile in registers. It is the
Pallas port of the Torch bridge's general Triton kernel (`torch_bridge.triton.wxa16`:
``_dequant_tile``, ``value_kind``, ``weight_constexprs``), on the structure of
`jquant.pallas.wna16_triton` (masked loads, ``pl.multiple_of`` offsets, split-K partials,
`jquant.pallas.launch.launch`). Per element, as the spec (`jquant.core.jnp_dequant.dequantize_permuted`)::

    code[n, j] = (data[n, j // P] >> (c * (j % P))) & (2^c - 1)       # P = 8 // c codes per byte
    v          = VALUE_DECODERS[lay.value](code)                      # f32, exact
    s          = decode_scale(scale[n // bn_s, j // G]) (* scale2)    # f32, exact widening
    W'[n, j]   = v * s | (v - z) * s | v * s - z                      # zero: none / uint codes / float

**Adding a code type** is one function in `VALUE_DECODERS` (int32 codes -> exact f32 values,
written in jnp so it also runs outside a kernel), a line in `value_kind`, and a test case: the
tiling, masks, scales, zeros and split-K are shared.

Code planes: sub-byte codes are not interleaved back into K order in registers (Triton's
``tl.join`` only pairs two tensors). Plane ``p`` of a byte tile holds columns ``P*b + p``; x is
split once outside the kernel into the matching planes ``xt[p] = x[:, p::P]`` ([P, M, K/P]), and
each plane is dotted with its own slice of x (`jquant.pallas.wna16_triton`'s ``split_x``, for
1/2/4/8-bit containers alike; P = 1 for bytes). A group of G columns covers G/P bytes of a plane.

Values without int->float converts (1/4 rate on Hopper, see `jquant.pallas.wna16_triton`):

* ints: ``0x4B000000 | c`` is the f32 ``2^23 + c``; one FSUB removes ``2^23 + bias``.
* fp8 e4m3: sign and the low 7 bits shifted into an f16 (``(b & 0x7F) << 7``) give the value
  times 2^-8 for normals and subnormals alike (f16 has 3 more exponent bits; vLLM / Marlin's
  fp8 trick); the 0x7F / 0xFF NaN codes decode to +-480 (checkpoints hold no NaN codes; the
  spec would give NaN).
* fp8 e5m2: the byte is the high byte of the f16 of the same value (exact, inf / NaN included).
* fp4 e2m1: ``(c & 7) << 9`` as f16 is the value times 2^-14 (code 8 gives -0.0 as the
  canonical table, `jquant.core.qtypes.E2M1_VALUES`).
* other codebooks (NF4, bitsandbytes FP4, IQ4_NL): a gather from the 16-entry f32 table, passed
  as a small operand (a kernel may not capture constants: notes/environment.md 2.2 item 6).

Scales: f32 / f16 / bf16 are loaded as they are; fp8 e4m3 (NVFP4), e5m2 and e8m0 (MX formats)
arrive as their uint8 bits (a free bitcast outside) and are decoded exactly in the kernel (e8m0:
``e << 23``; ``e = 0`` is 2^-127, an f32 subnormal; 255 is NaN). ``scale2`` (NVFP4's per-tensor
scale) is multiplied into the f32 scale first, as the spec does. Scale rows: one per weight row
(group / per-channel), one for the whole tensor, or 2-D blocks (FP8 128x128), gathered per row in
the kernel (``n // bn_s``) instead of being expanded outside.

Accumulation: the dequantized f32 tile is rounded to the activation dtype (bf16 / f16) before the
dot (Marlin style), f32 accumulation; with ``gemv`` (M = 1) the products are summed in f32 without
tensor cores. When the scale is constant along K (per-channel / per-tensor) and the zero is not
a float offset, the dot runs on ``v`` (or ``v - z``) and the f32 product is scaled once at the end.
Float zeros reproduce ``v*s - z`` (exact when ``v*s`` is, see `jquant.core.qarray`).

Grid: (cdiv(M, bm), cdiv(N, bn), split_k); edges of M, N and K are masked; split_k > 1 writes f32
partials [split_k, M, N] summed by one XLA reduction.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jquant.core.qtypes import E2M1_VALUES, QType
from jquant.pallas.launch import check_tiles, launch, split_k_grid, store_tile, tile_origin

__all__ = [
    "WXA16Config",
    "WXA16Layout",
    "VALUE_DECODERS",
    "SCALE_DECODERS",
    "value_kind",
    "scale_kind",
    "wxa16_matmul",
]

# f32 2^23 as bits / value: (0x4B000000 | c) reinterpreted as f32 is exactly 2^23 + c for c < 2^23.
_F32_MAGIC_BITS = 0x4B000000
_F32_MAGIC = float(1 << 23)


def _f16_bits_to_f32(h):
    """int32 [..] holding f16 bit patterns in the low 16 bits -> their f32 values (exact)."""
    return jax.lax.bitcast_convert_type(h.astype(jnp.uint16), jnp.float16).astype(jnp.float32)


def _int_values(c, lay, lut):
    """Unsigned codes minus the qtype's bias (uint4b8, uint6b32, uint2, ...)."""
    del lut
    return jax.lax.bitcast_convert_type(c | _F32_MAGIC_BITS, jnp.float32) - jnp.float32(_F32_MAGIC + lay.bias)


def _int8_values(c, lay, lut):
    """Two's-complement int8 codes (sign-extended to int32): shifted into [0, 256) for the magic."""
    del lay, lut
    return jax.lax.bitcast_convert_type((c + 128) | _F32_MAGIC_BITS, jnp.float32) - jnp.float32(_F32_MAGIC + 128)


def _e4m3_values(c, lay, lut):
    """fp8 e4m3fn bytes: f16 bits (s << 15) | (eeee mmm << 7) are the value times 2^-8 (Marlin's trick)."""
    del lay, lut
    return _f16_bits_to_f32(((c & 0x80) << 8) | ((c & 0x7F) << 7)) * jnp.float32(256.0)


def _e5m2_values(c, lay, lut):
    """fp8 e5m2 bytes: the high byte of the f16 of the same value."""
    del lay, lut
    return _f16_bits_to_f32(c << 8)


def _e2m1_values(c, lay, lut):
    """fp4 e2m1 codes s e e m: f16 bits (s << 15) | (e e m << 9) are the value times 2^-14."""
    del lay, lut
    return _f16_bits_to_f32(((c & 8) << 12) | ((c & 7) << 9)) * jnp.float32(2.0**14)


def _lut_values(c, lay, lut):
    """Codebook codes: a gather from the f32 table (a [2^bits] ref in the kernel, an array outside)."""
    del lay
    return lut[c]


# value kind -> f(codes int32 [..], lay, lut) -> f32 values [..], exact. One entry per code family;
# `value_kind` maps a QType to its entry. Plain jnp: the same functions run outside a kernel (tests).
VALUE_DECODERS: dict[str, Callable] = {
    "int": _int_values,
    "int8": _int8_values,
    "fp8_e4m3": _e4m3_values,
    "fp8_e5m2": _e5m2_values,
    "e2m1": _e2m1_values,
    "lut": _lut_values,
}


def value_kind(q: QType) -> str:
    """The `VALUE_DECODERS` key of a code type (`torch_bridge.triton.wxa16.value_kind`'s Pallas twin)."""
    if q.codebook is not None:
        return "e2m1" if tuple(q.codebook) == E2M1_VALUES else "lut"
    if q.storage == "float8_e4m3fn":
        return "fp8_e4m3"
    if q.storage == "float8_e5m2":
        return "fp8_e5m2"
    if q.storage is not None:
        raise ValueError(f"no value decoder for storage {q.storage!r}")
    return "int8" if q.signed else "int"


def _native_scale(raw):
    return raw.astype(jnp.float32)


def _e8m0_scale(raw):
    """E8M0 bytes: 2^(e - 127). e = 0 is the f32 subnormal 2^-127 (bits 0x00400000); 255 is NaN."""
    e = raw.astype(jnp.int32)
    bits = jnp.where(e == 0, 0x00400000, e << 23)
    bits = jnp.where(e == 255, 0x7FC00000, bits)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _e4m3_scale(raw):
    """fp8 e4m3fn scale bytes (NVFP4): `_e4m3_values`, with the NaN codes kept NaN."""
    c = raw.astype(jnp.int32)
    v = _e4m3_values(c, None, None)
    return jnp.where((c & 0x7F) == 0x7F, jnp.float32(jnp.nan), v)


def _e5m2_scale(raw):
    return _e5m2_values(raw.astype(jnp.int32), None, None)


# scale kind -> f(raw scale tile) -> f32. "native": f32 / f16 / bf16 loaded as themselves; the fp8
# and e8m0 kinds arrive as uint8 bits.
SCALE_DECODERS: dict[str, Callable] = {
    "native": _native_scale,
    "e8m0": _e8m0_scale,
    "e4m3": _e4m3_scale,
    "e5m2": _e5m2_scale,
}
_SCALE_KINDS = {"float8_e8m0fnu": "e8m0", "float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2"}


def scale_kind(dtype) -> str:
    """The `SCALE_DECODERS` key of a scale dtype (``"native"`` for f32 / f16 / bf16)."""
    name = jnp.dtype(dtype).name
    if name in _SCALE_KINDS:
        return _SCALE_KINDS[name]
    if name in ("float32", "float16", "bfloat16"):
        return "native"
    raise ValueError(f"no scale decoder for dtype {name}")


@dataclasses.dataclass(frozen=True)
class WXA16Layout:
    """Static description of a canonical weight, as the kernel reads it (`jquant.pallas.wxa16.layout_of`).

    Attributes:
        n, k: logical weight shape [N, K].
        cbits: container bits of one code (1, 2, 4 or 8).
        value: `VALUE_DECODERS` key.
        bias: subtracted from integer codes (``value == "int"``).
        scale: `SCALE_DECODERS` key.
        scale_bn: weight rows per scale row (1: group / per-channel; N: per-tensor; 128: FP8 blocks).
        group: K columns per scale column (clipped to K; a power of two when < K).
        zero: ``"none"``, ``"int"`` (unsigned codes, ``(v - z) * s``) or ``"float"`` (``v * s - z``).
        scale2: a (1, 1) f32 second scale is passed.
    """

    n: int
    k: int
    cbits: int
    value: str
    bias: int
    scale: str
    scale_bn: int
    group: int
    zero: str
    scale2: bool

    def __post_init__(self):
        if self.cbits not in (1, 2, 4, 8):
            raise ValueError(f"container bits {self.cbits} not in 1, 2, 4, 8")
        if self.value not in VALUE_DECODERS:
            raise ValueError(f"unknown value kind {self.value!r}")
        if self.scale not in SCALE_DECODERS:
            raise ValueError(f"unknown scale kind {self.scale!r}")
        if self.zero not in ("none", "int", "float"):
            raise ValueError(f"unknown zero kind {self.zero!r}")
        if self.group < self.k and self.group & (self.group - 1):
            raise ValueError(f"group {self.group} < K={self.k} must be a power of two")
        if self.k % self.per_byte:
            raise ValueError(f"K={self.k} is not a multiple of {self.per_byte} codes per byte")

    @property
    def per_byte(self) -> int:
        """Codes per byte, P (= number of code planes)."""
        return 8 // self.cbits

    @property
    def n_groups(self) -> int:
        return -(-self.k // self.group)

    @property
    def n_srows(self) -> int:
        return -(-self.n // self.scale_bn)

    @property
    def const_k(self) -> bool:
        """One scale (and zero) column: per-channel / per-tensor."""
        return self.group >= self.k

    @property
    def scale_on_output(self) -> bool:
        """Scales constant along K and no float offset: dot the values, scale the f32 result once."""
        return self.const_k and self.zero != "float"


@dataclasses.dataclass(frozen=True)
class WXA16Config:
    """Static launch parameters of `wxa16_matmul`.

    Attributes:
        bm: rows of x per program (power of two; >= 16, the smallest ``tl.dot`` M, unless ``gemv``).
        bn: weight rows (output columns) per program (power of two >= 16).
        bk: K columns per loop step (power of two); each of the P code planes is ``bk / P``
            columns wide, which must be >= 16 for ``tl.dot`` (checked at launch).
        split_k: K chunks run by separate programs (f32 partials summed after).
        num_warps, num_stages: Triton launch options.
        gemv: bm == 1: f32 broadcast-multiply and row sums instead of ``tl.dot`` (M = 1).
    """

    bm: int = 16
    bn: int = 64
    bk: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    gemv: bool = False

    def __post_init__(self):
        check_tiles("WXA16Config", bm=self.bm, bn=self.bn, bk=self.bk, split_k=self.split_k, gemv=self.gemv)


def _dot_nt(a, b):
    """a [m, k] @ b [n, k].T -> f32 [m, n] (``tl.dot`` with a transposed B; same dtypes)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _log2(v: int) -> int:
    return v.bit_length() - 1


def tile_sum(
    x_ref, q_ref, s_ref, z_ref, s2, lut_ref, *, lay, cfg, m, k_chunk, pid_s, row0, n0, row_ok, col_ok, expert=0
):
    """One program's f32 sum over its K chunk: ``x[row0:row0+bm] @ dequantize(w)[n0:n0+bn].T``.

    The K loop every weight-only Pallas kernel here shares (this module's `_kernel`, and the grouped
    MoE kernel `jquant.pallas.grouped_triton`, which passes the expert of its row tile): codes,
    scales and zeros are read for rows ``expert * N + n0 ..`` of arrays that stack the experts along
    their first axis (``expert = 0``: a single weight), dequantized in registers per code plane and
    multiplied with the x plane. Returns [bm, bn] (gemv: [1, bn]), the scale already applied.

    Args:
        s2: the second (per-tensor) scale as a scalar, or None.
        row0, row_ok: first activation row of the tile and its [bm, 1] validity mask.
        n0, col_ok: first weight row (output column) and its [bn, 1] validity mask.
    """
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    planes = lay.per_byte
    width = bk // planes  # bytes of a step = columns of one code plane
    kp = lay.k // planes  # bytes per weight row = columns per x plane
    cdt = x_ref.dtype
    gemv = cfg.gemv
    decode = VALUE_DECODERS[lay.value]
    k_begin = pid_s * k_chunk
    kb_begin = pid_s * (k_chunk // planes)

    def stacked(rows, stride):
        """Row index ``rows`` of expert ``expert`` in an array stacking ``stride`` rows per expert
        (no op for a single weight, so that its program is the one it always was)."""
        return rows if isinstance(expert, int) and expert == 0 else expert * stride + rows

    wrow0 = stacked(n0, lay.n)  # first code / scale row of the tile

    def load_block(ref, g0, ng, other):
        """Raw [R, ng] tile of scale-shaped ``ref`` (scale columns g0..g0+ng) for this program's rows;
        R = bn, or 1 when one scale row covers the whole tensor."""
        g_idx = g0 + jax.lax.broadcasted_iota(jnp.int32, (1, ng), 1)
        g_ok = g_idx < lay.n_groups
        if lay.scale_bn == 1:
            return pltriton.load(ref.at[pl.ds(wrow0, bn), pl.ds(g0, ng)], mask=col_ok & g_ok, other=other)
        if lay.n_srows == 1:
            return pltriton.load(ref.at[pl.ds(expert, 1), pl.ds(g0, ng)], mask=g_ok, other=other)
        cols = n0 + jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
        srow = stacked(jax.lax.div(cols, lay.scale_bn), lay.n_srows)  # 2-D blocks: each row's scale row
        return pltriton.load(ref.at[srow, g_idx], mask=col_ok & g_ok, other=other)

    def load_params(g0, ng):
        """(scale f32 [R, ng], zero f32 [R, ng] or None) of scale columns g0..g0+ng."""
        s = SCALE_DECODERS[lay.scale](load_block(s_ref, g0, ng, 0))
        if s2 is not None:
            s = s * s2
        z = None if z_ref is None else load_block(z_ref, g0, ng, 0).astype(jnp.float32)
        return s, z

    def expand(a):
        """[R, ng] per-group values -> [R, width] per plane column (each repeated G / P times)."""
        if a is None or a.shape[1] == 1:
            return a  # broadcasts against [bn, width]
        r, ng = a.shape
        return jnp.broadcast_to(a[:, :, None], (r, ng, width // ng)).reshape(r, width)

    def dequant(c, s, z):
        """Codes [bn, width] -> f32 weights (values only when the scale is applied to the output)."""
        v = decode(c, lay, lut_ref)
        if lay.scale_on_output:
            return v if z is None else v - z
        if lay.zero == "int":
            return (v - z) * s
        if lay.zero == "float":
            return v * s - z  # contracted to an FMA like XLA's (exact when v*s is: QArray docstring)
        return v * s

    if lay.const_k:
        s_c, z_c = load_params(0, 1)  # [R, 1], hoisted out of the K loop

    def step(i, acc):
        # Offsets from products of static powers of two (`jquant.pallas.wna16_triton`: a floor
        # division here hides divisibility from Triton and de-vectorizes the loads).
        k0 = pl.multiple_of(k_begin + i * bk, bk)  # first K column of this step
        kb = pl.multiple_of(kb_begin + i * width, width)  # its first code byte = first plane column
        if lay.const_k:
            s, z = s_c, z_c
        else:
            g0 = jax.lax.shift_right_logical(k0, _log2(lay.group))  # k0 // G (both nonnegative)
            s, z = load_params(g0, max(1, bk // lay.group))
            s, z = expand(s), expand(z)
        b_idx = kb + jax.lax.broadcasted_iota(jnp.int32, (1, width), 1)
        k_ok = b_idx < kp
        q = pltriton.load(q_ref.at[pl.ds(wrow0, bn), pl.ds(kb, width)], mask=col_ok & k_ok, other=0)
        q = q.astype(jnp.int32)  # uint8 zero-extends, int8 sign-extends
        mask = (1 << lay.cbits) - 1
        for p in range(planes):  # static unroll: plane p holds columns P*b + p
            c = q if planes == 1 else (jax.lax.shift_right_logical(q, lay.cbits * p) & mask)
            w = dequant(c, s, z)
            xs = pltriton.load(x_ref.at[pl.ds(p * m + row0, bm), pl.ds(kb, width)], mask=row_ok & k_ok, other=0)
            if gemv:
                acc = acc + jnp.sum(w * xs.astype(jnp.float32), axis=1, keepdims=True)
            else:
                acc = acc + _dot_nt(xs, w.astype(cdt))
        return acc

    acc_shape = (bn, 1) if gemv else (bm, bn)
    acc = jax.lax.fori_loop(0, k_chunk // bk, step, jnp.zeros(acc_shape, jnp.float32))
    if gemv:
        if lay.scale_on_output:
            acc = acc * s_c
        return acc.reshape(1, bn)
    if lay.scale_on_output:
        acc = acc * (s_c.reshape(1, bn) if s_c.shape[0] == bn else s_c)
    return acc


def _kernel(*refs, lay: WXA16Layout, cfg: WXA16Config, m: int, k_chunk: int, out_partial: bool, poison: bool):
    if poison:  # the NaN-filled buffer aliased to the output: drop its input ref
        refs = refs[:-2] + refs[-1:]
    x_ref, q_ref, s_ref, *rest = refs
    z_ref = rest.pop(0) if lay.zero != "none" else None
    s2_ref = rest.pop(0) if lay.scale2 else None
    lut_ref = rest.pop(0) if lay.value == "lut" else None
    (o_ref,) = rest

    bm, bn = cfg.bm, cfg.bn
    pid_s, m0, n0, row_ok, col_ok = tile_origin(m, lay.n, bm, bn)
    s2 = s2_ref[0, 0] if s2_ref is not None else None
    acc = tile_sum(
        x_ref, q_ref, s_ref, z_ref, s2, lut_ref, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk,
        pid_s=pid_s, row0=m0, n0=n0, row_ok=row_ok, col_ok=col_ok,
    )  # fmt: skip
    out_mask = row_ok & col_ok.reshape(1, bn)
    store_tile(o_ref, acc, m0=m0, n0=n0, bm=bm, bn=bn, pid_s=pid_s, out_partial=out_partial, mask=out_mask)


@functools.partial(jax.jit, static_argnames=("m", "lay", "cfg", "interpret", "name", "poison"))
def wxa16_matmul(
    xt,
    m: int,
    codes,
    scale,
    zero=None,
    scale2=None,
    lut=None,
    *,
    lay: WXA16Layout,
    cfg: WXA16Config,
    interpret: bool = False,
    name: str = "jquant_wxa16",
    poison: bool = False,
):
    """``x @ W'.T`` for canonical codes / scales / zeros described by ``lay``.

    Args:
        xt: [P * M, K/P] bf16 or f16 code-plane view of the (already permuted) activations x [M, K]:
            rows ``p*M .. p*M + M`` hold ``x[:, p::P]`` (P = ``lay.per_byte``; for bytes, x itself).
        m: M, the rows of x.
        codes: [N, K/P] uint8 canonical packed codes, int8 [N, K], or fp8 codes bitcast to uint8.
        scale: [ceil(N / scale_bn), ceil(K / G)] f32 / f16 / bf16, or uint8 bits of fp8 / e8m0 scales.
        zero: None, or the scale's shape: uint8 codes (``lay.zero == "int"``) or f32 / f16 / bf16
            offsets (``"float"``).
        scale2: None, or f32 [1, 1] (``lay.scale2``).
        lut: None, or f32 [2^bits] code values (``lay.value == "lut"``).
        lay: static weight description.
        cfg: static tile configuration.
        interpret: run the Pallas interpreter (CPU tests).
        name: kernel name in profiles.
        poison: tests only: outputs start as NaN (aliased buffer), so unwritten elements show.

    Returns:
        [M, N] in ``xt.dtype``.
    """
    planes = lay.per_byte
    if xt.shape != (planes * m, lay.k // planes):
        raise ValueError(f"xt has shape {xt.shape}, expected [{planes} * {m}, {lay.k // planes}]")
    if (
        (zero is None) != (lay.zero == "none")
        or (scale2 is None) == lay.scale2
        or (lut is None) == (lay.value == "lut")
    ):
        raise ValueError("zero / scale2 / lut must be passed exactly when the layout has them")
    if not cfg.gemv and cfg.bk // planes < 16:
        raise ValueError(f"bk={cfg.bk} gives {cfg.bk // planes}-column code planes; tl.dot needs >= 16")
    if cfg.gemv and m != 1:
        raise ValueError("gemv configs take M = 1")
    grid, k_chunk, out_shape, out_partial = split_k_grid(m, lay.n, lay.k, cfg.bk, cfg, xt.dtype)
    kernel = functools.partial(_kernel, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk, out_partial=out_partial, poison=poison)
    args = tuple(a for a in (xt, codes, scale, zero, scale2, lut) if a is not None)
    return launch(kernel, args, out_shape, grid, cfg, out_dtype=xt.dtype, interpret=interpret, name=name, poison=poison)
