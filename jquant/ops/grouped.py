"""``grouped_qmatmul(x, w, group_sizes)``: one matmul per expert over rows sorted by expert (MoE layers).

Equivalent to: ``concat_e(x[rows of group e] @ dequantize(w[e]).T)``, i.e. `jax.lax.ragged_dot` of
``x`` and the dequantized expert stack, with float32 accumulation and the result in ``x``'s dtype.
Rows past ``sum(group_sizes)`` come out as zeros (ragged_dot's rule).

``w`` is expert-stacked (`jquant.core.experts`): a `QArray` whose arrays carry a leading expert
axis E (static ``shape`` = one expert's (N, K)), or a dense [E, N, K] array.

Four XLA implementations, no kernels yet. Two read every expert (prefill):

* ``xla_reference`` (the spec; CPU / TPU, and f32 activations anywhere): every expert
  dequantized in f32 (``vmap`` of `jquant.core.jnp_dequant.dequantize`), ragged_dot at
  ``Precision.HIGHEST``.
* ``xla_dequant_ragged_dot`` (GPU with bf16 / f16 activations): as `XlaDequantDot` does for
  ``qmatmul``, the f32 dequantization is rounded once to the activation dtype and the ragged_dot
  runs on that dtype at default precision, accumulating in f32; the f32 reference is not a GPU path.

and two read only the routed experts (decode: fewer rows M than experts E, e.g. one token's
top-k copies), with the same numerics as the pair above:

* ``xla_routed_reference`` / ``xla_routed_dequant``: the expert of each row is recovered from
  ``group_sizes`` (``searchsorted`` of their running sums), the expert-stacked arrays (codes,
  scales, zeros, perm, still quantized) are gathered along E for those M rows, only those M
  experts are dequantized (f32, or rounded to the activation dtype), and each row is multiplied
  by its own expert (``einsum("mk,mnk->mn")``). Weight traffic is M experts instead of E; a
  repeated expert is read once per row, which the M < E rule keeps below E. Rows past
  ``sum(group_sizes)`` are zeroed, as ragged_dot does.

`grouped_implementation` picks by platform, activation dtype and M < E; `explain_grouped` says why.
A grouped GPU kernel (quantized ragged GEMM) is still to come (issue 18).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray
from jquant.ops.device import current_device

__all__ = [
    "grouped_qmatmul",
    "grouped_implementation",
    "explain_grouped",
    "dequantize_experts",
    "gather_experts",
    "GROUPED_IMPLEMENTATIONS",
]

GROUPED_IMPLEMENTATIONS = ("xla_reference", "xla_dequant_ragged_dot", "xla_routed_reference", "xla_routed_dequant")
# Implementations that dequantize in the activation dtype (the rest: in f32 at Precision.HIGHEST).
_LOW_PRECISION = ("xla_dequant_ragged_dot", "xla_routed_dequant")


def dequantize_experts(w: QArray | jax.Array, dtype=jnp.float32) -> jax.Array:
    """[E, N, K] of an expert-stacked weight in HF column order (act-order undone), in ``dtype``."""
    if not isinstance(w, QArray):
        return w.astype(dtype)
    return jax.vmap(jnp_dequant.dequantize)(w).astype(dtype)


def gather_experts(w: QArray | jax.Array, ids: jax.Array) -> QArray | jax.Array:
    """The experts ``ids`` of an expert-stacked weight, still quantized: every array field indexed along E.

    Args:
        w: expert-stacked `QArray` (arrays [E, ...]) or dense [E, N, K].
        ids: int32 [M], each in [0, E).

    Returns:
        the same kind of stack with M "experts" (arrays [M, ...]); ``qtype`` / ``shape`` / ``block`` kept.
    """
    return jax.tree.map(lambda a: jnp.take(a, ids, axis=0, mode="clip"), w)


def _num_experts(w) -> int:
    return (w.data if isinstance(w, QArray) else w).shape[0]


def _choose(x, w, platform: str | None) -> tuple[str, str]:
    """(implementation, reason) for ``x`` / ``w`` on ``platform`` (default: JAX's)."""
    platform = platform or current_device().platform
    m, e = x.shape[0], _num_experts(w)
    low = platform == "gpu" and jnp.dtype(x.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    prec = (
        f"{jnp.dtype(x.dtype).name} activations on {platform}: dequantize in the activation dtype"
        if low
        else f"{jnp.dtype(x.dtype).name} activations on {platform}: f32 dequantization, HIGHEST precision"
    )
    if m < e:
        return ("xla_routed_dequant" if low else "xla_routed_reference"), (
            f"M={m} rows < E={e} experts: gather and dequantize only the routed experts; {prec}"
        )
    return ("xla_dequant_ragged_dot" if low else "xla_reference"), (
        f"M={m} rows >= E={e} experts: dequantize every expert, ragged_dot; {prec}"
    )


def grouped_implementation(x, w, *, platform: str | None = None) -> str:
    """Which implementation `grouped_qmatmul` runs for ``x`` / ``w`` on ``platform`` (default: JAX's).

    The routed (decode) paths when ``x`` has fewer rows than ``w`` has experts; the dequantize-all
    paths otherwise. bf16 / f16 activations on a GPU dequantize in their own dtype; everything
    else in f32 at ``Precision.HIGHEST`` (the spec).
    """
    return _choose(x, w, platform)[0]


def explain_grouped(x, w, *, platform: str | None = None) -> str:
    """A human-readable account of which `grouped_qmatmul` implementation would run and why."""
    impl, why = _choose(x, w, platform)
    what = repr(w) if isinstance(w, QArray) else f"dense {jnp.dtype(w.dtype).name}{list(w.shape)}"
    return f"grouped_qmatmul {tuple(x.shape)} x {what} -> {impl} ({why})"


def grouped_qmatmul(
    x: jax.Array, w: QArray | jax.Array, group_sizes: jax.Array, *, implementation: str | None = None
) -> jax.Array:
    """``x @ dequantize(w[e]).T`` for each group e of consecutive rows of ``x``.

    Args:
        x: [M, K] activations (bf16 / f16 / f32), rows sorted by expert: the first
            ``group_sizes[0]`` rows go to expert 0, the next ``group_sizes[1]`` to expert 1, ...
        w: expert-stacked `QArray` (E experts of shape (N, K)) or dense [E, N, K] array.
        group_sizes: int32 [E], rows per expert; ``sum(group_sizes) <= M``.
        implementation: one of `GROUPED_IMPLEMENTATIONS` (None: by platform, activation dtype
            and M < E, `grouped_implementation`).

    Returns:
        [M, N] in ``x.dtype``.

    Raises:
        ValueError: shapes that do not fit, or an unknown implementation.
    """
    e_w = _num_experts(w)
    n, k = w.shape if isinstance(w, QArray) else w.shape[1:]
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x shape {tuple(x.shape)} must be [M, K={k}]")
    if tuple(group_sizes.shape) != (e_w,):
        raise ValueError(f"group_sizes shape {tuple(group_sizes.shape)} must be [E={e_w}]")
    impl = implementation or grouped_implementation(x, w)
    if impl not in GROUPED_IMPLEMENTATIONS:
        raise ValueError(f"unknown grouped_qmatmul implementation {impl!r} (have {GROUPED_IMPLEMENTATIONS})")
    group_sizes = group_sizes.astype(jnp.int32)
    if impl in _LOW_PRECISION:
        dtype, lhs, precision = x.dtype, x, None
    else:
        dtype, lhs, precision = jnp.float32, x.astype(jnp.float32), jax.lax.Precision.HIGHEST
    with jax.named_scope(f"jquant_grouped_qmatmul_{impl}"):
        if impl.startswith("xla_routed"):
            y = _routed(lhs, w, group_sizes, dtype, precision)
            return y.astype(x.dtype)
        wd = dequantize_experts(w, dtype)
        y = jax.lax.ragged_dot(
            lhs,
            jnp.swapaxes(wd, 1, 2),  # [E, K, N]
            group_sizes,
            precision=precision,
            preferred_element_type=jnp.float32,
        )
    return y.astype(x.dtype)


def _routed(x: jax.Array, w, group_sizes: jax.Array, dtype, precision) -> jax.Array:
    """Each row times its own expert, reading only the M routed experts (the decode paths).

    Args:
        x: [M, K] rows sorted by expert (in ``dtype`` already).
        w: expert-stacked weight, E experts of (N, K).
        group_sizes: int32 [E].
        dtype: the dequantization dtype; precision: the einsum's.

    Returns:
        float32 [M, N]; rows past ``sum(group_sizes)`` are zeros.
    """
    m = x.shape[0]
    ends = jnp.cumsum(group_sizes)
    rows = jnp.arange(m, dtype=ends.dtype)
    # Row r belongs to the first expert whose running end exceeds r (empty groups are skipped);
    # rows past the total get E, clipped by the gather and zeroed below.
    ids = jnp.searchsorted(ends, rows, side="right")
    wd = dequantize_experts(gather_experts(w, ids), dtype)  # [M, N, K]: only the routed experts
    y = jnp.einsum("mk,mnk->mn", x, wd, precision=precision, preferred_element_type=jnp.float32)
    return jnp.where((rows < ends[-1])[:, None], y, 0.0)
