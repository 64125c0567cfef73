"""W4A16 / W8A16 group-wise quantized matmul as a Pallas kernel for the Triton lowering.

Computes ``y = x @ W.T`` for a canonical `QArray` ``W`` (HF orientation [N, K]) whose codes are

* 4-bit, packed two per byte along K (canonical: element 2i in the low nibble of byte i), or
* 8-bit, one per byte (uint8 or int8),

with ``w'[n, j] = (code[n, j] - bias - zero[n, j // G]) * scale[n, j // G]`` (``zero`` optional,
integer codes), groups ``G`` (power of two >= 32) or one scale per row (per-channel). The kernel
reads the canonical bytes as they are; there is no repacking step.

Unpacking: a [bn, bk/2] byte tile gives the low nibbles (even K columns) and high nibbles (odd
columns) as two [bn, bk/2] tiles. Either a last-axis ``jnp.stack`` + reshape (Triton's
``tl.join``, i.e. ``tl.interleave``) puts them back in K order and x is read contiguously, or
(``split_x``) x is split into its even and odd columns outside the kernel and each nibble plane is
dotted with its half. 8-bit codes need nothing. Codes become floats without int->float converts
(1/4-rate on Hopper): OR-ing a code into the mantissa of a magic constant (0x4300 -> bf16 128 + c,
0x6400 -> f16 1024 + c, 0x4B000000 -> f32 2^23 + c) and subtracting the constant plus the offset
gives ``c - bias - zero`` exactly.

Scales: with ``scale_on_output`` the dot runs on the integer values ``code - bias - zero``
(exactly representable in bf16 and f16: |v| <= 383) and the f32 product is scaled per group, one
sub-block of ``min(G, bk)`` columns at a time; otherwise the whole K step is loaded at once and the
weights are scaled in f32 and rounded to the activation dtype before the dot (Marlin-style).
Accumulation is f32 throughout. ``swap_ab`` accumulates ``out^T = W x^T`` (the weight tile as the
left operand, the one Hopper wgmma may take from registers); ``gemv`` (M = 1) skips tensor cores.
The K offsets are built from products of static powers of two with ``pl.multiple_of`` hints:
a floor division there hides divisibility from Triton and de-vectorizes the code loads (27% of
the decode time on H200, bench/results/nvidia_h200/targets.md).

Grid: (cdiv(M, bm), cdiv(N, bn), split_k). Edges of M, N and K are masked (loads give 0, stores are
masked), so no shape needs padding. With split_k > 1 each program writes an f32 partial
[split_k, M, N] and one XLA reduction sums them (decode path).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jquant.pallas.launch import launch, split_k_grid, store_tile, tile_origin
from jquant.pallas.wna16_config import WNA16Config

__all__ = ["WNA16Layout", "wna16_matmul"]


@dataclasses.dataclass(frozen=True)
class WNA16Layout:
    """Static description of the quantized weight, derived from a `QArray` (see `layout_of`).

    Attributes:
        n, k: logical weight shape [N, K].
        bits: 4 or 8 (code container width).
        bias: subtracted from every code (8 for uint4b8, 128 for uint8b128, 0 otherwise).
        group: K columns per scale; ``k`` for per-channel.
        has_zero: a uint8 zero-point array of the scale's shape is passed.
        signed: 8-bit two's-complement codes (int8, value = code).
    """

    n: int
    k: int
    bits: int
    bias: int
    group: int
    has_zero: bool
    signed: bool = False

    @property
    def per_channel(self) -> bool:
        return self.group >= self.k

    @property
    def n_groups(self) -> int:
        return -(-self.k // self.group)


# 2^23 as f32 bits / value: (0x4B000000 | c) reinterpreted as f32 is exactly 2^23 + c for c < 2^23.
_F32_MAGIC_BITS = 0x4B000000
_F32_MAGIC = 1 << 23


def _dot_nt(a, b):
    """a [m, k] @ b[n, k].T -> f32 [m, n] (``tl.dot`` with a transposed B; same dtypes)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _kernel(*refs, lay: WNA16Layout, cfg: WNA16Config, m: int, k_chunk: int, out_partial: bool, poison: bool):
    if poison:  # the NaN-filled buffer aliased to the output: drop its input ref
        refs = refs[:-2] + refs[-1:]
    x_planes = None
    if cfg.split_x and lay.bits == 4:  # x arrives as its even and odd columns: two [M, K/2] refs
        x_planes, refs = refs[:2], refs[2:]
        refs = (x_planes[0],) + refs
    if lay.has_zero:
        x_ref, q_ref, s_ref, z_ref, o_ref = refs
    else:
        x_ref, q_ref, s_ref, o_ref = refs
        z_ref = None
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    k = lay.k
    sw = min(lay.group, bk)  # scale sub-block: one scale column per sw columns of a step
    per_byte = 8 // lay.bits  # codes per byte: 2 (4-bit) or 1 (8-bit)
    cdt = x_ref.dtype  # dot operand dtype (bf16 / f16)
    swap = cfg.swap_ab  # accumulate out^T = W x^T: the dequantized W is the register (A) operand
    gemv = cfg.gemv  # bm == 1: broadcast-multiply and row sums in f32, no tl.dot
    split_x = x_planes is not None

    pid_s, m0, n0, row_ok, col_ok = tile_origin(m, lay.n, bm, bn)
    k_begin = pid_s * k_chunk
    kb_begin = pid_s * (k_chunk // per_byte)

    def load_scales(g0, ng):
        """Scales [bn, ng] f32 and offsets (bias + zero) [bn, ng] int32 of scale columns g0..g0+ng."""
        g_idx = g0 + jax.lax.broadcasted_iota(jnp.int32, (1, ng), 1)
        g_ok = col_ok & (g_idx < lay.n_groups)
        s = pltriton.load(s_ref.at[pl.ds(n0, bn), pl.ds(g0, ng)], mask=g_ok, other=0).astype(jnp.float32)
        off = jnp.full((bn, ng), lay.bias + (128 if lay.signed else 0), jnp.int32)
        if z_ref is not None:
            off = off + pltriton.load(z_ref.at[pl.ds(n0, bn), pl.ds(g0, ng)], mask=g_ok, other=0).astype(jnp.int32)
        return s, off

    def expand(a, width):
        """[bn, ng] per-group values -> [bn, ng * width] (each repeated ``width`` times along K)."""
        ng = a.shape[1]
        if ng == 1:
            return a  # broadcasts against [bn, width]
        return jnp.broadcast_to(a[:, :, None], (bn, ng, width)).reshape(bn, ng * width)

    def load_codes(kb, width):
        """Unsigned codes [bn, width] (int32 in [0, 2^bits)) of K columns kk..kk+width, as 1 or 2 tiles.

        4-bit: [low nibbles, high nibbles] = [even columns, odd columns] (canonical order).
        int8: shifted by +128 into [0, 256) (`load_scales` adds 128 to the offset to match).
        """
        nb = width // per_byte
        kb = pl.multiple_of(kb, nb)
        byte_idx = kb + jax.lax.broadcasted_iota(jnp.int32, (1, nb), 1)
        q = pltriton.load(
            q_ref.at[pl.ds(n0, bn), pl.ds(kb, nb)], mask=col_ok & (byte_idx < k // per_byte), other=0
        ).astype(jnp.int32)
        if lay.bits == 8:
            return [q + 128 if lay.signed else q]
        return [q & 0xF, jax.lax.shift_right_logical(q, 4) & 0xF]

    def to_f32(c, off):
        """Exact f32 ``c - off`` without an int->float convert (I2F runs at 1/4 rate on Hopper):
        the bits 0x4B000000 | c are the float 2^23 + c, so one OR and one FSUB suffice."""
        magic = jax.lax.bitcast_convert_type(c | _F32_MAGIC_BITS, jnp.float32)
        return magic - (off + _F32_MAGIC).astype(jnp.float32)

    def to_cdt(c, off):
        """Exact ``c - off`` in the 16-bit dot dtype: 0x6400 | c is the f16 1024 + c (codes < 1024),
        0x4300 | c the bf16 128 + c (4-bit codes only: bf16 has 8 significant bits)."""
        if cdt == jnp.float16:
            bits, base = 0x6400, 1024
        elif lay.bits == 4:
            bits, base = 0x4300, 128
        else:
            return to_f32(c, off).astype(cdt)
        magic = jax.lax.bitcast_convert_type((c | bits).astype(jnp.uint16), cdt)
        return magic - (off + base).astype(cdt)

    def interleave(lo, hi, width):
        """tl.interleave: [bn, width/2] x 2 -> [bn, width] with lo at even columns (tt.join + reshape)."""
        return jnp.stack([lo, hi], axis=-1).reshape(bn, width)

    def load_x(kk, width):
        kk = pl.multiple_of(kk, width)
        x_idx = kk + jax.lax.broadcasted_iota(jnp.int32, (1, width), 1)
        return pltriton.load(x_ref.at[pl.ds(m0, bm), pl.ds(kk, width)], mask=row_ok & (x_idx < k), other=0)

    def load_x_plane(plane, kh, width):
        """split_x: columns kh..kh+width of the even (plane 0) or odd (plane 1) half of x."""
        kh = pl.multiple_of(kh, width)
        x_idx = kh + jax.lax.broadcasted_iota(jnp.int32, (1, width), 1)
        ref = x_planes[plane].at[pl.ds(m0, bm), pl.ds(kh, width)]
        return pltriton.load(ref, mask=row_ok & (x_idx < k // 2), other=0)

    def mma(xs, w):
        """x [bm, w] . W [bn, w] -> f32 [bm, bn], or [bn, bm] with swap_ab; [bn, 1] row sums for gemv."""
        if gemv:
            return jnp.sum(w * xs.astype(jnp.float32), axis=1, keepdims=True)
        if swap:
            return _dot_nt(w, xs)
        return _dot_nt(xs, w)

    def scale_out(part, s):  # part: mma result, s: [bn, 1] f32
        return part * s if (swap or gemv) else part * s.reshape(1, bn)

    def step_grouped(k0, kb0, acc):
        """One scale column per sub-block of ``sw`` columns; codes dotted as exact integers."""
        for j in range(bk // sw):  # static unroll over the groups of one step
            kk = k0 + j * sw
            s, off = load_scales(jax.lax.div(kk, lay.group), 1)
            kb = kb0 + j * (sw // per_byte)
            vals = [to_cdt(c, off) for c in load_codes(kb, sw)]  # exact integers: |v| <= 383
            if split_x:  # nibble plane p pairs with x's plane p; byte index == half-plane column
                part = mma(load_x_plane(0, kb, sw // 2), vals[0]) + mma(load_x_plane(1, kb, sw // 2), vals[1])
            else:
                w = vals[0] if len(vals) == 1 else interleave(vals[0], vals[1], sw)
                part = mma(load_x(kk, sw), w)
            acc = acc + scale_out(part, s)
        return acc

    def step_whole(k0, kb0, acc):
        """The whole step in one load; weights scaled in f32 (expanded per-group scales)."""
        if lay.per_channel:
            s, off = s_pc, off_pc  # scale applied once at the end
        else:
            s, off = load_scales(jax.lax.div(k0, lay.group), bk // sw)
            width = sw // 2 if split_x else sw  # columns per scale in the tiles below
            s = expand(s, width)
            off = expand(off, width)
        codes = load_codes(kb0, bk)
        if split_x:
            for plane, c in enumerate(codes):
                wf = to_f32(c, off)
                if not lay.per_channel:
                    wf = wf * s
                acc = acc + mma(load_x_plane(plane, kb0, bk // 2), wf if gemv else wf.astype(cdt))
            return acc
        c = codes[0] if len(codes) == 1 else interleave(codes[0], codes[1], bk)
        wf = to_f32(c, off)
        if not lay.per_channel:
            wf = wf * s
        w = wf if gemv else wf.astype(cdt)
        return acc + mma(load_x(k0, bk), w)

    if lay.per_channel:
        s_pc, off_pc = load_scales(0, 1)  # [bn, 1]

    def step(i, acc):
        # Offsets built from products of static powers of two (no floor division, whose sign
        # fix-up hides divisibility from Triton's axis analysis and de-vectorizes the loads).
        k0 = pl.multiple_of(k_begin + i * bk, bk)  # first K column of this step
        kb0 = pl.multiple_of(kb_begin + i * (bk // per_byte), bk // per_byte)  # its first code byte
        if cfg.scale_on_output and not lay.per_channel and not gemv:
            return step_grouped(k0, kb0, acc)
        return step_whole(k0, kb0, acc)

    acc_shape = (bn, 1) if gemv else ((bn, bm) if swap else (bm, bn))
    acc = jax.lax.fori_loop(0, k_chunk // bk, step, jnp.zeros(acc_shape, jnp.float32))
    if lay.per_channel:
        acc = scale_out(acc, s_pc)
    if gemv:
        acc = acc.reshape(1, bn)
    elif swap:
        acc = acc.T
    out_mask = row_ok & col_ok.reshape(1, bn)
    store_tile(o_ref, acc, m0=m0, n0=n0, bm=bm, bn=bn, pid_s=pid_s, out_partial=out_partial, mask=out_mask)


@functools.partial(jax.jit, static_argnames=("lay", "cfg", "interpret", "name", "poison"))
def wna16_matmul(
    x,
    codes,
    scale,
    zero=None,
    *,
    lay: WNA16Layout,
    cfg: WNA16Config,
    interpret=False,
    name: str = "jquant_wna16",
    poison: bool = False,
):
    """``x @ W.T`` for the canonical codes/scales/zeros described by ``lay``.

    Args:
        x: [M, K] bf16 or f16 activations (already permuted by the QArray's ``perm``, if any).
        codes: uint8 [N, K/2] (4-bit, canonical nibble order) or uint8/int8 [N, K] (8-bit).
        scale: [N, ceil(K/G)] f32/f16/bf16 scales (``[N, 1]`` per-channel).
        zero: None, or uint8 [N, ceil(K/G)] zero-point codes.
        lay: static weight description.
        cfg: static tile configuration.
        interpret: run the Pallas interpreter (CPU tests).
        name: kernel name in profiles.
        poison: tests only: the kernel writes into a NaN-filled buffer (aliased to the output), so
            any element it fails to write shows up as NaN.

    Returns:
        [M, N] in ``x.dtype``.
    """
    m, k = x.shape
    if cfg.split_x and lay.bits == 4:
        # De-interleave x once (a small XLA transpose, fused into x's producer inside a model):
        # plane 0 = even K columns (low nibbles), plane 1 = odd columns (high nibbles).
        xr = x.reshape(m, k // 2, 2)
        x_in = (xr[:, :, 0], xr[:, :, 1])
    else:
        x_in = (x,)
    if k != lay.k:
        raise ValueError(f"x has K={k}, weight has K={lay.k}")
    if lay.has_zero != (zero is not None):
        raise ValueError("zero must be passed exactly when lay.has_zero")
    bk = cfg.bk
    grid, k_chunk, out_shape, out_partial = split_k_grid(m, lay.n, k, bk, cfg, x.dtype)
    kernel = functools.partial(_kernel, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk, out_partial=out_partial, poison=poison)
    args = (*x_in, codes, scale) if zero is None else (*x_in, codes, scale, zero)
    return launch(kernel, args, out_shape, grid, cfg, out_dtype=x.dtype, interpret=interpret, name=name, poison=poison)
