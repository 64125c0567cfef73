"""Grouped (MoE) weight-only quantized matmul as one Pallas kernel (Triton lowering): ``pallas_triton_grouped``.

Computes `jquant.ops.grouped_qmatmul` (``y[rows of group e] = x[rows of group e] @ dequantize(w[e]).T``,
rows sorted by expert, rows past ``sum(group_sizes)`` zero) for an expert-stacked `QArray`
(`jquant.core.experts`: every array field with a leading expert axis E), reading only the experts
that have rows: the decode case, where a token's top-k copies touch k of E experts.

Schedule: the rows of each expert are cut into tiles of ``bm`` rows, and one XLA pass over
``group_sizes`` (`tile_schedule`) writes three small int32 arrays of T entries, T a static bound
(`num_tiles`): the expert of tile t and its row range [row_start, row_end). The grid is
(T, cdiv(N, bn), split_k); program (t, j, s) loads its tile's expert id and rows, skips the whole
body when the tile is empty (expert -1; a ``lax.cond``, so an unused tile reads no weight), and
otherwise runs the weight-only kernel's K loop (`jquant.pallas.wxa16_triton.tile_sum`, given the
expert) on that expert's codes: in-register dequantization, f32 accumulation, and a masked store of
the tile's rows only. An expert
with g rows is read ceil(g / bm) times; experts without rows are never read.

Expert arrays are passed flattened along E (codes [E * N, K / P], scales [E * rows, groups]: free
reshapes), so expert e's weight row n is row ``e * N + n`` and every address is one 2-D offset;
stacks of 2^31 code bytes up to 4 GiB are declined (Pallas' int32 offsets: `why_not_experts`).

Act-order (``perm``, one per expert): each row of x is gathered by its own expert's permutation
outside the kernel (one [M, K] gather). Rows past ``sum(group_sizes)`` are set to zero after the
kernel (no tile covers them).

Covered code types (`CAPS`, tested in interpret mode, lowered for CUDA on the CPU host, and on GPU
by tests/pallas/test_grouped_gpu.py): 4-bit integer experts (GPTQ uint4b8, AWQ / GPTQ-asym uint4
with uint8 zeros, GGUF Q4_K / Q4_1 with float mins), fp4 e2m1 (gpt-oss MXFP4 with e8m0 scales,
NVFP4 with e4m3 scales and ``scale2``) and fp8 e4m3 (per-channel, per-tensor, 128x128 blocks).

Routed for bf16 / f16 activations on GPU up to `GROUPED_MAX_M` rows (decode and small batches);
the tiles are the weight-only decode kernel's (`jquant.pallas.wxa16.decode_config`, bm = 16), not
yet swept for this kernel (bench/gpu/issue18.sh times it against the XLA paths).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from jquant.core.qarray import QArray, register_pytree
from jquant.core.routing import Backend, Call, Capabilities, Device, check
from jquant.ops.device import NUM_SMS_DEFAULT, num_sms
from jquant.pallas.launch import launch, store_tile
from jquant.pallas.wxa16 import _bits_u8, decode_config, layout_of, why_not_value
from jquant.pallas.wxa16_triton import WXA16Config, WXA16Layout, tile_sum

__all__ = [
    "CAPS",
    "GROUPED_MAX_M",
    "PallasGrouped",
    "config_for",
    "grouped_matmul",
    "grouped_triton_qmatmul",
    "num_tiles",
    "tile_schedule",
    "why_not",
    "why_not_experts",
]

register_pytree()

# Largest M routed here: decode and small batches (the decode tiles of the weight-only kernel).
GROUPED_MAX_M = 64

# Pallas' Triton lowering addresses an array with int32 element offsets unless it exceeds 2^32
# bytes (then int64: jax/_src/pallas/triton/lowering.py, `_compute_offsets_from_indices`). Triton
# sign-extends int32 offsets, so an array of 2^31 elements or more and at most 2^32 bytes (uint8
# codes of 2 to 4 GiB) would wrap to negative offsets.
_INT32_ELEMENTS = 2**31
_INT64_BYTES = 2**32

# What the kernel reads and is tested on (module docstring). Codes are `code_class` names: integer
# codes of any bias in 4-bit containers read as uint4.
CAPS = Capabilities(
    platforms=frozenset({"gpu"}),
    codes=frozenset({"uint4", "fp4_e2m1", "fp8_e4m3"}),
    zeros=frozenset({"none", "uint8", "float32", "float16", "bfloat16"}),
    scale_dtypes=frozenset({"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e8m0fnu"}),
    scale2=True,
    row_blocks=None,  # 1 (group / channel), N (tensor), 2-D blocks (FP8 128x128) gathered per row
    group_pow2=True,
    min_group=((4, 16), (8, 16)),
    m_max=GROUPED_MAX_M,
)


def _experts(w: QArray) -> int:
    return w.data.shape[0]


def why_not_experts(w: QArray) -> str:
    """ "" when every flattened expert array of ``w`` is addressed correctly (see `_INT32_ELEMENTS`), else why not."""
    for f, a in w.arrays().items():
        n = math.prod(a.shape)
        if n >= _INT32_ELEMENTS and n * jnp.dtype(a.dtype).itemsize <= _INT64_BYTES:
            return (
                f"{f} has {n} elements over {_experts(w)} experts: at most 2^32 bytes, so Pallas addresses it "
                "with int32 offsets, which wrap from 2^31"
            )
    return ""


def why_not(x, w, group_sizes=None) -> str:
    """ "" when `grouped_triton_qmatmul` computes ``grouped_qmatmul(x, w, group_sizes)`` (any M), else why not."""
    if not isinstance(w, QArray):
        return f"not a QArray ({type(w).__name__}): dense experts run on XLA"
    if w.data.ndim != 3:
        return f"not an expert stack (codes of shape {tuple(w.data.shape)}, expected [E, N, K / P])"
    if x.ndim != 2:
        return f"x has shape {tuple(x.shape)}, expected [M, K]"
    if group_sizes is not None and tuple(group_sizes.shape) != (_experts(w),):
        return f"group_sizes shape {tuple(group_sizes.shape)} must be [E={_experts(w)}]"
    call = Call.of(x.shape, x.dtype, w, Device("any"))
    return check(CAPS.operands(), call) or why_not_value(w.qtype) or why_not_experts(w)


def num_tiles(m: int, e: int, bm: int) -> int:
    """Static bound on the row tiles of ``m`` rows over ``e`` experts, ``bm`` rows a tile.

    Expert e with g_e > 0 rows takes ceil(g_e / bm) <= floor(g_e / bm) + 1 tiles; summed over the
    at most min(E, M) non-empty experts that is at most M // bm + min(E, M), and never more than M
    (every tile has a row).
    """
    return max(1, min(m, m // bm + min(e, m)))


def tile_schedule(group_sizes: jax.Array, m: int, bm: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The row tiles of ``m`` rows sorted by expert (one XLA pass over ``group_sizes``).

    Args:
        group_sizes: int32 [E] rows per expert (nonnegative; rows past M are dropped).
        m: rows of x.
        bm: rows per tile.

    Returns:
        (expert, row_start, row_end), each int32 [`num_tiles`]: tile t covers rows
        [row_start, row_end) (at most ``bm``) of expert ``expert``; unused tiles have expert -1 and
        an empty range. Tiles of one expert are consecutive, in row order.
    """
    e = group_sizes.shape[0]
    t_max = num_tiles(m, e, bm)
    g = jnp.maximum(group_sizes.astype(jnp.int32), 0)
    ends = jnp.minimum(jnp.cumsum(g), m)
    starts = jnp.minimum(jnp.cumsum(g) - g, m)
    tiles = (ends - starts + bm - 1) // bm  # [E]
    tile_end = jnp.cumsum(tiles)
    t = jnp.arange(t_max, dtype=jnp.int32)
    # The first expert whose tiles reach past t. "compare_all": one fused [T, E] comparison, not a
    # loop of tiny kernels (E and T are small).
    ex = jnp.searchsorted(tile_end, t, side="right", method="compare_all").astype(jnp.int32)
    live = ex < e
    ec = jnp.minimum(ex, e - 1)
    r0 = starts[ec] + (t - (tile_end[ec] - tiles[ec])) * bm
    r1 = jnp.minimum(r0 + bm, ends[ec])
    return jnp.where(live, ex, -1), jnp.where(live, r0, 0), jnp.where(live, r1, 0)


def _kernel(*refs, lay: WXA16Layout, cfg: WXA16Config, m: int, k_chunk: int, out_partial: bool, poison: bool):
    if poison:  # the NaN-filled buffer aliased to the output: drop its input ref
        refs = refs[:-2] + refs[-1:]
    ex_ref, r0_ref, r1_ref, x_ref, q_ref, s_ref, *rest = refs
    z_ref = rest.pop(0) if lay.zero != "none" else None
    s2_ref = rest.pop(0) if lay.scale2 else None
    lut_ref = rest.pop(0) if lay.value == "lut" else None
    (o_ref,) = rest

    bm, bn = cfg.bm, cfg.bn
    tile, pid_n, pid_s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    ex, r0, r1 = ex_ref[tile], r0_ref[tile], r1_ref[tile]
    n0 = pid_n * bn
    rows = r0 + jax.lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
    row_ok = rows < r1
    cols = n0 + jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0)  # weight rows = output columns
    col_ok = cols < lay.n

    def body():
        e = jnp.maximum(ex, 0)
        s2 = s2_ref[e, 0] if s2_ref is not None else None
        # The weight-only kernel's K loop on expert e's rows of the stacked arrays.
        acc = tile_sum(
            x_ref, q_ref, s_ref, z_ref, s2, lut_ref, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk,
            pid_s=pid_s, row0=r0, n0=n0, row_ok=row_ok, col_ok=col_ok, expert=e,
        )  # fmt: skip
        out_mask = row_ok & col_ok.reshape(1, bn)
        store_tile(o_ref, acc, m0=r0, n0=n0, bm=bm, bn=bn, pid_s=pid_s, out_partial=out_partial, mask=out_mask)

    jax.lax.cond(ex >= 0, body, lambda: None)  # an empty tile reads nothing


@functools.partial(jax.jit, static_argnames=("m", "lay", "cfg", "interpret", "name", "poison"))
def grouped_matmul(
    xt,
    m: int,
    group_sizes,
    codes,
    scale,
    zero=None,
    scale2=None,
    lut=None,
    *,
    lay: WXA16Layout,
    cfg: WXA16Config,
    interpret: bool = False,
    name: str = "jquant_grouped",
    poison: bool = False,
):
    """Each row group of x times its own expert's dequantized weight, for flattened expert arrays.

    Args:
        xt: [P * M, K/P] bf16 or f16 code-plane view of the (already permuted) rows x [M, K], sorted
            by expert (`jquant.pallas.wxa16_triton.wxa16_matmul`'s layout).
        m: M, the rows of x.
        group_sizes: int32 [E] rows per expert.
        codes: [E * N, K/P] uint8 packed codes (fp8 codes bitcast to uint8).
        scale: [E * ceil(N / scale_bn), ceil(K / G)] f32 / f16 / bf16, or uint8 bits of fp8 / e8m0.
        zero: None, or the scale's shape (uint8 codes or float offsets, ``lay.zero``).
        scale2: None, or f32 [E, 1] (``lay.scale2``).
        lut: None, or f32 [2^bits] code values (``lay.value == "lut"``).
        lay: one expert's static weight description (``n``, ``k`` per expert).
        cfg: static tile configuration.
        interpret: run the Pallas interpreter (CPU tests).
        name: kernel name in profiles.
        poison: tests only: outputs start as NaN (aliased buffer), so unwritten elements show.

    Returns:
        [M, N] in ``xt.dtype``; rows past ``sum(group_sizes)`` are zero.
    """
    planes = lay.per_byte
    e = group_sizes.shape[0]
    if xt.shape != (planes * m, lay.k // planes):
        raise ValueError(f"xt has shape {xt.shape}, expected [{planes} * {m}, {lay.k // planes}]")
    if codes.shape != (e * lay.n, lay.k // planes):
        raise ValueError(f"codes have shape {codes.shape}, expected [{e} * {lay.n}, {lay.k // planes}]")
    if (
        (zero is None) != (lay.zero == "none")
        or (scale2 is None) == lay.scale2
        or (lut is None) == (lay.value == "lut")
    ):
        raise ValueError("zero / scale2 / lut must be passed exactly when the layout has them")
    if not cfg.gemv and cfg.bk // planes < 16:
        raise ValueError(f"bk={cfg.bk} gives {cfg.bk // planes}-column code planes; tl.dot needs >= 16")
    steps = -(-lay.k // cfg.bk)
    split = max(1, min(cfg.split_k, steps))
    k_chunk = -(-steps // split) * cfg.bk
    split = -(-lay.k // k_chunk)  # splits that would start beyond K are dropped
    out_partial = split > 1
    grid = (num_tiles(m, e, cfg.bm), pl.cdiv(lay.n, cfg.bn), split)
    out_shape = jax.ShapeDtypeStruct(
        (split, m, lay.n) if out_partial else (m, lay.n), jnp.float32 if out_partial else xt.dtype
    )
    sched = tile_schedule(group_sizes, m, cfg.bm)
    kernel = functools.partial(_kernel, lay=lay, cfg=cfg, m=m, k_chunk=k_chunk, out_partial=out_partial, poison=poison)
    args = tuple(a for a in (*sched, xt, codes, scale, zero, scale2, lut) if a is not None)
    y = launch(kernel, args, out_shape, grid, cfg, out_dtype=xt.dtype, interpret=interpret, name=name, poison=poison)
    # No tile covers rows past sum(group_sizes): ragged_dot's zeros (the buffer there is unwritten).
    total = jnp.sum(jnp.maximum(group_sizes.astype(jnp.int32), 0))
    return jnp.where((jnp.arange(m, dtype=jnp.int32) < total)[:, None], y, jnp.zeros((), y.dtype))


def config_for(m: int, w: QArray, *, num_sms: int | None = None) -> WXA16Config:
    """The tiles for ``m`` rows and expert stack ``w``: the weight-only kernel's decode tiles for a
    16-row tile (rows of one expert, so bm does not grow with M), split-K by K."""
    n, k = w.shape
    del m
    return decode_config(16, n, k, planes=w.qtype.codes_per_byte, num_sms=num_sms or NUM_SMS_DEFAULT)


def _flat(a):
    """[E, R, C] -> [E * R, C] (a free reshape of the contiguous stack)."""
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def grouped_triton_qmatmul(
    x, w: QArray, group_sizes, *, cfg: WXA16Config | None = None, interpret: bool = False, poison: bool = False
):
    """`jquant.ops.grouped_qmatmul` on the grouped Pallas kernel.

    Args:
        x: [M, K] bf16 or f16 activations, rows sorted by expert.
        w: expert-stacked `QArray` (E experts of shape (N, K)) of a code type in `CAPS`.
        group_sizes: int32 [E] rows per expert; ``sum(group_sizes) <= M``.
        cfg: tile configuration; default `config_for`.
        interpret: run the Pallas interpreter (CPU tests).
        poison: tests only: outputs start as NaN, so unwritten elements show.

    Returns:
        [M, N] in ``x.dtype``; rows past ``sum(group_sizes)`` are zero.

    Raises:
        ValueError: `why_not` declines the operands.
    """
    why = why_not(x, w, group_sizes)
    if why:
        raise ValueError(f"grouped_triton_qmatmul: {why}")
    m, k = x.shape
    e = _experts(w)
    group_sizes = group_sizes.astype(jnp.int32)
    if w.perm is not None:  # each row gathered by its own expert's act-order permutation
        ends = jnp.cumsum(group_sizes)
        rows = jnp.arange(m, dtype=ends.dtype)
        ids = jnp.minimum(jnp.searchsorted(ends, rows, side="right", method="compare_all"), e - 1)
        x = jnp.take_along_axis(x, jnp.take(w.perm, ids, axis=0), axis=1)
    lay = layout_of(w)
    cfg = cfg or config_for(m, w, num_sms=num_sms())
    planes = lay.per_byte
    xt = x if planes == 1 else jnp.transpose(x.reshape(m, k // planes, planes), (2, 0, 1)).reshape(planes * m, -1)
    lut = None
    if lay.value == "lut":
        lut = jnp.asarray(np.asarray(w.qtype.codebook, np.float32))
    return grouped_matmul(
        xt,
        m,
        group_sizes,
        _flat(_bits_u8(jnp.asarray(w.data))),
        _flat(_bits_u8(jnp.asarray(w.scale))),
        None if w.zero is None else _flat(jnp.asarray(w.zero)),
        None if w.scale2 is None else jnp.asarray(w.scale2, jnp.float32).reshape(e, 1),
        lut,
        lay=lay,
        cfg=cfg,
        interpret=interpret,
        name="jquant_grouped_decode",
        poison=poison,
    )


class PallasGrouped(Backend):
    """`grouped_triton_qmatmul` as a grouped backend (``pallas_triton_grouped``), registered with
    `jquant.ops.grouped.register_grouped_backend` by `jquant.pallas`.

    Args:
        interpret: run the Pallas interpreter (CPU tests register such a twin under another name).
        config: fixed tile config instead of `config_for` (benchmarks, tests).
        name: registry name.
    """

    def __init__(
        self, *, interpret: bool = False, config: WXA16Config | None = None, name: str = "pallas_triton_grouped"
    ):
        self.name = name
        self.interpret = interpret
        self.config = config
        self.caps = dataclasses.replace(CAPS, platforms=frozenset({"cpu", "gpu"}) if interpret else CAPS.platforms)

    def why_not_more(self, call: Call) -> str:
        return why_not_value(call.qtype)

    def why_not_experts(self, w: QArray) -> str:
        """What the per-expert `Call` cannot say: the stack's size (`why_not_experts`)."""
        return why_not_experts(w)

    def __call__(self, x, w, group_sizes):
        cfg = self.config or config_for(x.shape[0], w, num_sms=num_sms())
        return grouped_triton_qmatmul(x, w, group_sizes, cfg=cfg, interpret=self.interpret)
