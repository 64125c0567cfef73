"""One launcher for the Pallas-Triton kernels: the ``pallas_call``, the NaN-poisoned output of the
tests, and the f32 partial sums of a split K."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

__all__ = ["launch"]


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
