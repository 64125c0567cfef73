"""W8A8 matmul (fp8 e4m3 x fp8 e4m3, int8 x int8) as a Pallas kernel for the Triton lowering.

Computes, for activations already quantized by `jquant.ops.act_quant.quantize_act` (codes ``a``
[M, K], f32 scales ``sa`` [M, ceil(K / A_BK)]) and a canonical 8-bit `QArray` (codes ``w``
[N, K] as stored, f32 scales ``sw`` [ceil(N / W_BN), ceil(K / W_BK)], ``scale2`` folded in)::

    y[m, n] = sum_kb  sa[m, kb // A_BK] * sw[n // W_BN, kb // W_BK] * sum_{k in kb} a[m, k] * w[n, k]

the math of the Torch-side kernel `torch_bridge.triton.w8a8`. Two scale placements:

* scales constant along K (per-token / per-tensor activations, per-channel / per-tensor weights):
  the 8-bit dot accumulates the whole K (int32 for int8, f32 for fp8) and both scales multiply
  the tile once in the epilogue;
* K-blocked scales (fp8 128x128 weight blocks with 1x128 activation groups, DeepSeek-V3 style, or
  group-wise weight / activation scales): K is walked in scale blocks of ``kblk = gcd`` of the
  blocks; each block's 8-bit partial (``kblk / bk`` dots) is scaled and added to an f32
  accumulator.

Codes are read as stored, no repacking: int8 as is; uint8b128 (compressed-tensors int8 stored
unsigned) XOR 0x80 then bitcast to int8 in registers (``c - 128`` in two's complement); fp8 e4m3
as is, with a float ``other=0.0`` fill (Pallas' Triton lowering cannot cast an integer fill to
float8). Triton rejects unsigned dot operands, hence the int8 view of uint8b128.

fp8 accumulation: Pallas' lowering builds ``tt.dot`` without ``maxNumImpreciseAcc`` (0), which
Triton's Hopper WGMMA lowering reads as "promote the fp8 partials to the f32 accumulator after
every instruction"; that ran the fp8 kernel at about 40% of its int8 speed on an H100.
``W8A8Config.imprecise_acc`` sets it per kernel (`jquant.pallas.fp8_accumulation`).

Grid: (cdiv(M, bm), cdiv(N, bn), split_k). Edges of M, N and K are masked (loads give 0, stores
are masked). With split_k > 1 each program writes an f32 partial [split_k, M, N] and one XLA
reduction sums them (decode path).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jquant.pallas import fp8_accumulation
from jquant.pallas.launch import check_tiles, launch, split_k_grid, store_tile, tile_origin

__all__ = ["W8A8Config", "W8A8Layout", "w8a8_matmul", "CODE_KINDS"]

# How the weight codes are stored: fp8 e4m3 bytes, two's-complement int8, or uint8 with bias 128.
CODE_KINDS = ("fp8", "int8", "uint8b128")
# Smallest K of one 8-bit tl.dot (mma k for 8-bit operands is 32).
MIN_BK = 32
# fp8 partial sums promoted to f32 every this many K elements (DeepSeek-V3's 128: 4 wgmma steps).
FP8_IMPRECISE_ACC = 128


@dataclasses.dataclass(frozen=True)
class W8A8Config:
    """Static launch parameters of `w8a8_matmul`.

    Attributes:
        bm: rows of x per program (power of two >= 16: the smallest ``tl.dot`` M).
        bn: output columns (weight rows) per program (power of two >= 16).
        bk: K columns per dot (power of two >= 32); divides the scale block ``kblk`` when the scales
            change along K.
        split_k: number of K chunks run by separate programs (f32 partials, summed after).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining depth of the K loop.
        imprecise_acc: fp8 only: K elements the tensor cores sum in their reduced-precision
            accumulator before the partials join the f32 accumulator (`jquant.pallas.fp8_accumulation`;
            0 = after every MMA instruction, Pallas' default; 2**30 = never, Triton's sm_90 default).
    """

    bm: int = 16
    bn: int = 64
    bk: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4
    imprecise_acc: int = FP8_IMPRECISE_ACC

    def __post_init__(self):
        check_tiles("W8A8Config", bm=self.bm, bn=self.bn, bk=self.bk, split_k=self.split_k, min_bk=MIN_BK)
        if self.imprecise_acc < 0:
            raise ValueError(f"W8A8Config.imprecise_acc={self.imprecise_acc} must be >= 0")


@dataclasses.dataclass(frozen=True)
class W8A8Layout:
    """Static description of the problem, derived from the QArray and the ActQuant (`jquant.pallas.w8a8`).

    Attributes:
        n, k: logical weight shape [N, K].
        codes: one of `CODE_KINDS`: how ``w`` stores its codes.
        a_bk: K columns per activation scale (``k`` for per-token / per-tensor).
        w_bn: weight rows per scale row: 1 (per channel, or scales expanded along N), >= n (one scale
            row), or a multiple of the config's ``bn`` (e.g. 128x128 blocks).
        w_bk: K columns per weight scale (``k`` for per-channel / per-tensor).
    """

    n: int
    k: int
    codes: str
    a_bk: int
    w_bn: int
    w_bk: int

    def __post_init__(self):
        if self.codes not in CODE_KINDS:
            raise ValueError(f"W8A8Layout.codes={self.codes!r} not in {CODE_KINDS}")

    @property
    def is_int(self) -> bool:
        return self.codes != "fp8"

    @property
    def k_blocked(self) -> bool:
        """True when a scale changes along K (activation groups or weight K blocks)."""
        return self.a_bk < self.k or self.w_bk < self.k

    @property
    def kblk(self) -> int:
        """K columns over which both scales are constant (gcd of the K blocks shorter than K)."""
        blocks = [b for b in (self.a_bk, self.w_bk) if b < self.k]
        return math.gcd(*blocks) if blocks else self.k

    @property
    def a_units(self) -> int:
        return -(-self.k // self.a_bk)

    @property
    def w_scale_shape(self) -> tuple[int, int]:
        return (-(-self.n // self.w_bn), -(-self.k // self.w_bk))


def _dot_nt(a, b, acc_dtype):
    """a [m, k] @ b [n, k].T -> [m, n] (``tl.dot`` with a transposed B, K-major operands)."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=acc_dtype)


def _kernel(*refs, lay: W8A8Layout, cfg: W8A8Config, m: int, k_chunk: int, out_partial: bool, poison: bool):
    if poison:  # the NaN-filled buffer aliased to the output: drop its input ref
        refs = refs[:-2] + refs[-1:]
    a_ref, sa_ref, w_ref, sw_ref, o_ref = refs
    bm, bn, bk = cfg.bm, cfg.bn, cfg.bk
    k = lay.k
    acc_dt = jnp.int32 if lay.is_int else jnp.float32

    pid_s, m0, n0, row_ok, col_ok = tile_origin(m, lay.n, bm, bn)
    k_begin = pid_s * k_chunk

    def to_dot_operand(c):
        """Loaded codes -> dot operand: uint8b128 -> int8 (c ^ 0x80 == c - 128); others as loaded."""
        if lay.codes == "uint8b128":
            return jax.lax.bitcast_convert_type(c ^ jnp.uint8(0x80), jnp.int8)
        return c

    # fp8 tiles load as fp8 with a float fill (an integer fill does not lower to float8), straight
    # into the dot: a bitcast between the load and the dot kept Triton from pipelining the loads
    # (fp8 ran at ~0.6x the int8 kernel's speed on an H100).
    fill = 0.0 if lay.codes == "fp8" else 0

    def load_a(kk):
        kk = pl.multiple_of(kk, bk)
        idx = kk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
        return pltriton.load(a_ref.at[pl.ds(m0, bm), pl.ds(kk, bk)], mask=row_ok & (idx < k), other=fill)

    def load_w(kk):
        kk = pl.multiple_of(kk, bk)
        idx = kk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
        w = pltriton.load(w_ref.at[pl.ds(n0, bn), pl.ds(kk, bk)], mask=col_ok & (idx < k), other=fill)
        return to_dot_operand(w)

    # Scale columns are masked too: the last split-K chunk may hold blocks past K, whose dots are 0
    # but whose out-of-bounds scales could be NaN (0 * NaN).
    def a_scale(j):
        """Activation scales [bm, 1] f32 of scale column j."""
        return pltriton.load(sa_ref.at[pl.ds(m0, bm), pl.ds(j, 1)], mask=row_ok & (j < lay.a_units), other=0.0)

    n_wn, n_wk = lay.w_scale_shape

    def w_scale(j):
        """Weight scales of scale column j: [1, bn] (one per output column) or [1, 1] (one per tile)."""
        if lay.w_bn == 1:
            s = pltriton.load(sw_ref.at[pl.ds(n0, bn), pl.ds(j, 1)], mask=col_ok & (j < n_wk), other=0.0)
            return s.reshape(1, bn)
        r = 0 if n_wn == 1 else jax.lax.div(n0, lay.w_bn)  # the tile lies inside one scale row
        ok = jnp.full((1, 1), True) & (j < n_wk)
        return pltriton.load(sw_ref.at[pl.ds(r, 1), pl.ds(j, 1)], mask=ok, other=0.0)

    def dot_steps(k0, n_steps, acc):
        """acc + the 8-bit dots of ``n_steps`` K steps from column k0 (acc int32 / f32 [bm, bn])."""

        def body(i, acc):
            kk = k0 + i * bk
            return acc + _dot_nt(load_a(kk), load_w(kk), acc_dt)

        if n_steps == 1:
            return body(0, acc)
        return jax.lax.fori_loop(0, n_steps, body, acc)

    zeros = jnp.zeros((bm, bn), acc_dt)
    if not lay.k_blocked:
        acc = dot_steps(k_begin, k_chunk // bk, zeros)
        out = acc.astype(jnp.float32) * a_scale(0) * w_scale(0)
    else:
        kblk = lay.kblk

        def block(b, acc):
            k0 = pl.multiple_of(k_begin + b * kblk, kblk)
            part = dot_steps(k0, kblk // bk, zeros)
            sa = a_scale(jax.lax.div(k0, lay.a_bk))
            sw = w_scale(jax.lax.div(k0, lay.w_bk))
            return acc + part.astype(jnp.float32) * sa * sw

        out = jax.lax.fori_loop(0, k_chunk // kblk, block, jnp.zeros((bm, bn), jnp.float32))
    out_mask = row_ok & col_ok.reshape(1, bn)
    store_tile(o_ref, out, m0=m0, n0=n0, bm=bm, bn=bn, pid_s=pid_s, out_partial=out_partial, mask=out_mask)


@functools.partial(jax.jit, static_argnames=("lay", "cfg", "out_dtype", "interpret", "name", "poison"))
def w8a8_matmul(
    a,
    a_scale,
    w,
    w_scale,
    *,
    lay: W8A8Layout,
    cfg: W8A8Config,
    out_dtype=jnp.bfloat16,
    interpret: bool = False,
    name: str = "jquant_w8a8",
    poison: bool = False,
):
    """``(a * a_scale) @ (w * w_scale).T`` with 8-bit dots, for the codes and scales described by ``lay``.

    Args:
        a: [M, K] quantized activations: int8, or float8_e4m3fn (or its uint8 bits) for fp8.
        a_scale: float32 [M, ceil(K / lay.a_bk)].
        w: [N, K] weight codes as stored: float8_e4m3fn (or its uint8 bits), int8, or uint8
            (uint8b128).
        w_scale: float32 [ceil(N / lay.w_bn), ceil(K / lay.w_bk)] (``scale2`` already folded in).
        lay: static problem description.
        cfg: static tile configuration (``bk`` must divide ``lay.kblk`` when ``lay.k_blocked``).
        out_dtype: result dtype (bf16 / f16; f32 works too).
        interpret: run the Pallas interpreter (CPU tests).
        name: kernel name in profiles.
        poison: tests only: the kernel writes into a NaN-filled buffer (aliased to the output), so
            any element it fails to write shows up as NaN.

    Returns:
        [M, N] in ``out_dtype``.
    """
    m, k = a.shape
    if k != lay.k or w.shape != (lay.n, lay.k):
        raise ValueError(f"a {a.shape} / w {w.shape} do not match the layout (N={lay.n}, K={lay.k})")
    if a_scale.shape != (m, lay.a_units) or w_scale.shape != lay.w_scale_shape:
        raise ValueError(
            f"scale shapes a {a_scale.shape} / w {w_scale.shape}, expected {(m, lay.a_units)} / {lay.w_scale_shape}"
        )
    if lay.k_blocked and lay.kblk % cfg.bk:
        raise ValueError(f"bk={cfg.bk} does not divide the scale block {lay.kblk}")
    if 1 < lay.w_bn < lay.n and lay.w_bn % cfg.bn:
        raise ValueError(f"bn={cfg.bn} does not divide the weight scale rows ({lay.w_bn}); expand the scales")
    if lay.codes == "fp8":  # fp8 codes may arrive as their uint8 bits
        a = jax.lax.bitcast_convert_type(a, jnp.float8_e4m3fn) if a.dtype == jnp.uint8 else a
        w = jax.lax.bitcast_convert_type(w, jnp.float8_e4m3fn) if w.dtype == jnp.uint8 else w
        name = f"{name}_acc{cfg.imprecise_acc}"
        fp8_accumulation.register(name, cfg.imprecise_acc)
    step = lay.kblk if lay.k_blocked else cfg.bk  # a split never cuts a scale block
    grid, k_chunk, out_shape, out_partial = split_k_grid(m, lay.n, k, step, cfg, out_dtype)
    kernel = functools.partial(_kernel, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk, out_partial=out_partial, poison=poison)
    args = (a, a_scale.astype(jnp.float32), w, w_scale.astype(jnp.float32))
    return launch(
        kernel, args, out_shape, grid, cfg, out_dtype=out_dtype, interpret=interpret, name=name, poison=poison
    )
