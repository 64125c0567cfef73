"""``grouped_qmatmul(x, w, group_sizes)``: one matmul per expert over rows sorted by expert (MoE layers).

Equivalent to: ``concat_e(x[rows of group e] @ dequantize(w[e]).T)``, i.e. `jax.lax.ragged_dot` of
``x`` and the dequantized expert stack, with float32 accumulation and the result in ``x``'s dtype.
Rows past ``sum(group_sizes)`` come out as zeros (ragged_dot's rule).

``w`` is expert-stacked (`jquant.core.experts`): a `QArray` whose arrays carry a leading expert
axis E (static ``shape`` = one expert's (N, K)), or a dense [E, N, K] array.

Two XLA implementations, no kernels yet:

* ``xla_reference`` (the spec; CPU / TPU, and f32 activations anywhere): every expert
  dequantized in f32 (``vmap`` of `jquant.core.jnp_dequant.dequantize`), ragged_dot at
  ``Precision.HIGHEST``.
* ``xla_dequant_ragged_dot`` (GPU with bf16 / f16 activations): as `XlaDequantDot` does for
  ``qmatmul``, the f32 dequantization is rounded once to the activation dtype and the ragged_dot
  runs on that dtype at default precision, accumulating in f32; the f32 reference is not a GPU path.

Both dequantize all E experts whole each call (no "only the routed experts" reads yet): fine for
prefill and tests, wasteful for decode; a grouped GPU kernel is what issue 18 asks next.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray
from jquant.ops.device import current_device

__all__ = ["grouped_qmatmul", "grouped_implementation", "dequantize_experts", "GROUPED_IMPLEMENTATIONS"]

GROUPED_IMPLEMENTATIONS = ("xla_reference", "xla_dequant_ragged_dot")


def dequantize_experts(w: QArray | jax.Array, dtype=jnp.float32) -> jax.Array:
    """[E, N, K] of an expert-stacked weight in HF column order (act-order undone), in ``dtype``."""
    if not isinstance(w, QArray):
        return w.astype(dtype)
    return jax.vmap(jnp_dequant.dequantize)(w).astype(dtype)


def grouped_implementation(x, w, *, platform: str | None = None) -> str:
    """Which implementation `grouped_qmatmul` runs for ``x`` / ``w`` on ``platform`` (default: JAX's)."""
    platform = platform or current_device().platform
    if platform == "gpu" and jnp.dtype(x.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "xla_dequant_ragged_dot"
    return "xla_reference"


def grouped_qmatmul(
    x: jax.Array, w: QArray | jax.Array, group_sizes: jax.Array, *, implementation: str | None = None
) -> jax.Array:
    """``x @ dequantize(w[e]).T`` for each group e of consecutive rows of ``x``.

    Args:
        x: [M, K] activations (bf16 / f16 / f32), rows sorted by expert: the first
            ``group_sizes[0]`` rows go to expert 0, the next ``group_sizes[1]`` to expert 1, ...
        w: expert-stacked `QArray` (E experts of shape (N, K)) or dense [E, N, K] array.
        group_sizes: int32 [E], rows per expert; ``sum(group_sizes) <= M``.
        implementation: ``"xla_reference"`` or ``"xla_dequant_ragged_dot"`` (None: by platform
            and activation dtype, `grouped_implementation`).

    Returns:
        [M, N] in ``x.dtype``.

    Raises:
        ValueError: shapes that do not fit, or an unknown implementation.
    """
    e_w = (w.data if isinstance(w, QArray) else w).shape[0]
    n, k = w.shape if isinstance(w, QArray) else w.shape[1:]
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x shape {tuple(x.shape)} must be [M, K={k}]")
    if tuple(group_sizes.shape) != (e_w,):
        raise ValueError(f"group_sizes shape {tuple(group_sizes.shape)} must be [E={e_w}]")
    impl = implementation or grouped_implementation(x, w)
    if impl not in GROUPED_IMPLEMENTATIONS:
        raise ValueError(f"unknown grouped_qmatmul implementation {impl!r} (have {GROUPED_IMPLEMENTATIONS})")
    group_sizes = group_sizes.astype(jnp.int32)
    with jax.named_scope(f"jquant_grouped_qmatmul_{impl}"):
        if impl == "xla_reference":
            wd = dequantize_experts(w, jnp.float32)
            lhs, precision = x.astype(jnp.float32), jax.lax.Precision.HIGHEST
        else:
            wd = dequantize_experts(w, x.dtype)
            lhs, precision = x, None
        y = jax.lax.ragged_dot(
            lhs,
            jnp.swapaxes(wd, 1, 2),  # [E, K, N]
            group_sizes,
            precision=precision,
            preferred_element_type=jnp.float32,
        )
    return y.astype(x.dtype)
