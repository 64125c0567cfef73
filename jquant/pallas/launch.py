"""One launcher for the Pallas-Triton kernels: the ``pallas_call``, the NaN-poisoned output of the
tests, and the f32 partial sums of a split K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

__all__ = ["launch", "pow2_at_least"]


def pow2_at_least(v: int, lo: int) -> int:
    """The smallest ``lo * 2**i`` >= ``v`` (a tile edge for ``v`` rows, at least ``lo``)."""
    p = lo
    while p < v:
        p *= 2
    return p


def launch(kernel, args: tuple, out_shape: jax.ShapeDtypeStruct, grid, cfg, *, out_dtype, interpret, name, poison):
    """Runs ``kernel`` over ``grid`` on ``args`` with ``cfg.num_warps`` / ``cfg.num_stages``.

    Args:
        out_shape: [M, N] in ``out_dtype``, or f32 [split, M, N] partials (summed here).
        poison: the output starts as NaN (an extra operand aliased to it), so tests see any element
            the kernel does not write.

    Returns:
        [M, N] in ``out_dtype``.
    """
    aliases = {}
    if poison:
        args += (jnp.full(out_shape.shape, jnp.nan, out_shape.dtype),)
        aliases = {len(args) - 1: 0}
    y = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        input_output_aliases=aliases,
        interpret=interpret,
        name=name,
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
    )(*args)
    return y.sum(axis=0).astype(out_dtype) if len(out_shape.shape) == 3 else y


def check_tiles(cls: str, *, bm: int, bn: int, bk: int, split_k: int, gemv: bool = False, min_bk: int = 16) -> None:
    """The Triton lowering's tile rules shared by the kernels' configs: powers of two, at least 16
    (``bm`` 1 for a GEMV, ``bk`` at least ``min_bk``), and a positive K split.

    Raises:
        ValueError: naming the config class and the field.
    """
    for f, v, lo in (("bm", bm, 1 if gemv else 16), ("bn", bn, 16), ("bk", bk, min_bk)):
        if v < lo or v & (v - 1):
            raise ValueError(f"{cls}.{f}={v} must be a power of two >= {lo} (Triton lowering)")
    if gemv and bm != 1:
        raise ValueError(f"{cls}.gemv needs bm == 1")
    if split_k < 1:
        raise ValueError(f"{cls}.split_k={split_k} must be >= 1")


def store_tile(o_ref, acc, *, m0, n0, bm: int, bn: int, pid_s, out_partial: bool, mask) -> None:
    """Writes the [bm, bn] f32 tile at (m0, n0): into the f32 partial slab ``pid_s`` of a split K,
    else cast to the output dtype; ``mask`` keeps rows and columns past M and N unwritten."""
    if out_partial:
        pltriton.store(o_ref.at[pid_s, pl.ds(m0, bm), pl.ds(n0, bn)], acc, mask=mask)
    else:
        pltriton.store(o_ref.at[pl.ds(m0, bm), pl.ds(n0, bn)], acc.astype(o_ref.dtype), mask=mask)


def split_k_grid(m: int, n: int, k: int, step: int, cfg, out_dtype):
    """The grid of a split-K kernel: ``(grid, k_chunk, out_shape, out_partial)``.

    K is cut into at most ``cfg.split_k`` chunks of whole ``step``s (splits that would start beyond
    K are dropped); the grid is (M tiles, N tiles, splits). With one split the output is [M, N] in
    ``out_dtype``, else f32 partials [split, M, N] that `launch` sums.
    """
    steps = -(-k // step)
    split = max(1, min(cfg.split_k, steps))
    k_chunk = -(-steps // split) * step
    split = -(-k // k_chunk)
    out_partial = split > 1
    grid = (pl.cdiv(m, cfg.bm), pl.cdiv(n, cfg.bn), split)
    shape = (split, m, n) if out_partial else (m, n)
    return grid, k_chunk, jax.ShapeDtypeStruct(shape, jnp.float32 if out_partial else out_dtype), out_partial


def tile_origin(m: int, n: int, bm: int, bn: int):
    """In a kernel: ``(pid_s, m0, n0, row_ok [bm, 1], col_ok [bn, 1])`` of this program's tile."""
    pid_m, pid_n, pid_s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    m0, n0 = pid_m * bm, pid_n * bn
    rows = m0 + jax.lax.broadcasted_iota(jnp.int32, (bm, 1), 0)
    cols = n0 + jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0)  # weight rows = output columns
    return pid_s, m0, n0, rows < m, cols < n
