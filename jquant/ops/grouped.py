"""``grouped_qmatmul(x, w, group_sizes)``: one matmul per expert over rows sorted by expert (MoE layers).

Equivalent to: ``concat_e(x[rows of group e] @ dequantize(w[e]).T)``, i.e. `jax.lax.ragged_dot` of
``x`` and the dequantized expert stack, with float32 accumulation and the result in ``x``'s dtype.
Rows past ``sum(group_sizes)`` come out as zeros (ragged_dot's rule).

``w`` is expert-stacked (`jquant.core.experts`): a `QArray` whose arrays carry a leading expert
axis E (static ``shape`` = one expert's (N, K)), or a dense [E, N, K] array.

Four XLA implementations (grouped kernels: below). Two read every expert (prefill):

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

Kernels register as grouped backends (`register_grouped_backend`, a `jquant.core.routing.Registry`
of their own: a backend declares a `Capabilities` record, checked on the `Call` of one expert's
weight, plus ``why_not_experts(w)`` for what the stack's size decides) and are tried first, in the
order of `GROUPED_ROUTES`; ``JQUANT_DISABLED_KERNELS`` skips them as it does ``qmatmul``
backends. `jquant.pallas` registers ``pallas_triton_grouped`` (`jquant.pallas.grouped_triton`:
4-bit integer, MXFP4 / NVFP4 and fp8 experts with bf16 / f16 activations on GPU, M <= 64, reading
only the experts that have rows); it is loaded the first time the dispatcher runs on a GPU, as
`jquant.ops.qmatmul` loads its kernel packages.

`grouped_implementation` picks: the first grouped kernel that takes the call, else by platform,
activation dtype and M < E among the XLA paths; `explain_grouped` says why (and why each kernel
declined).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray
from jquant.core.routing import Backend, Call, Registry, env_names
from jquant.ops.device import current_device

__all__ = [
    "grouped_qmatmul",
    "grouped_implementation",
    "explain_grouped",
    "dequantize_experts",
    "gather_experts",
    "GROUPED_IMPLEMENTATIONS",
    "GROUPED_BACKENDS",
    "GROUPED_ROUTES",
    "register_grouped_backend",
]

GROUPED_IMPLEMENTATIONS = ("xla_reference", "xla_dequant_ragged_dot", "xla_routed_reference", "xla_routed_dequant")
# Implementations that dequantize in the activation dtype (the rest: in f32 at Precision.HIGHEST).
_LOW_PRECISION = ("xla_dequant_ragged_dot", "xla_routed_dequant")

# Grouped kernels per platform, in the order they are tried before the XLA paths (`jquant.pallas`
# registers ``pallas_triton_grouped``; until then the GPU table has nothing loaded).
GROUPED_ROUTES: dict[str, tuple[str, ...]] = {"gpu": ("pallas_triton_grouped",)}
GROUPED_REGISTRY = Registry("grouped_qmatmul", GROUPED_ROUTES)
GROUPED_BACKENDS = GROUPED_REGISTRY.backends  # name -> backend, registered ones only


def register_grouped_backend(backend: Backend) -> Backend:
    """Adds a grouped kernel: a `jquant.core.routing.Backend` with ``caps`` (checked on the `Call` of
    one expert's weight), ``why_not_experts(w) -> str`` (the stack as a whole) and
    ``__call__(x, w, group_sizes) -> [M, N]``. Tried in `GROUPED_ROUTES` order; forced by name
    through ``grouped_qmatmul(..., implementation=name)``."""
    return GROUPED_REGISTRY.register(backend)


def _kernel_reason(b: Backend, x, w, device) -> str:
    """ "" when grouped kernel ``b`` takes ``grouped_qmatmul(x, w, .)`` on ``device``, else why not."""
    if not isinstance(w, QArray):
        return "dense experts (the kernels read quantized stacks)"
    why = b.reason(Call.of(x.shape, x.dtype, w, device))
    return why or b.why_not_experts(w)


def _kernel_route(x, w, platform: str | None) -> tuple[Backend | None, list[str]]:
    """The first grouped kernel of the platform's table that takes the call, and why those before it did not."""
    from jquant.ops.qmatmul import load_kernel_packages  # the kernels import jquant.ops: load lazily

    device = current_device(platform)
    load_kernel_packages(device.platform)
    disabled = set(env_names("JQUANT_DISABLED_KERNELS"))
    skipped = []
    for b in GROUPED_REGISTRY.ordered(device.platform):
        why = "disabled by JQUANT_DISABLED_KERNELS" if b.name in disabled else _kernel_reason(b, x, w, device)
        if not why:
            return b, skipped
        skipped.append(f"{b.name}: {why}")
    return None, skipped


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
    kernel, skipped = _kernel_route(x, w, platform)
    if kernel is not None:
        return kernel.name, (
            f"M={m} rows, E={e} experts: grouped kernel, reads only the experts that have rows"
            + (f"; skipped {skipped}" if skipped else "")
        )
    impl, why = _choose_xla(x, w, platform, m, e)
    return impl, why + (f"; kernels declined: {skipped}" if skipped else "")


def _choose_xla(x, w, platform: str, m: int, e: int) -> tuple[str, str]:
    """(implementation, reason) among the XLA paths."""
    low = platform == "gpu" and jnp.dtype(x.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    how = "dequantize in the activation dtype" if low else "f32 dequantization, HIGHEST precision"
    prec = f"{jnp.dtype(x.dtype).name} activations on {platform}: {how}"
    if m < e:
        return ("xla_routed_dequant" if low else "xla_routed_reference"), (
            f"M={m} rows < E={e} experts: gather and dequantize only the routed experts; {prec}"
        )
    return ("xla_dequant_ragged_dot" if low else "xla_reference"), (
        f"M={m} rows >= E={e} experts: dequantize every expert, ragged_dot; {prec}"
    )


def grouped_implementation(x, w, *, platform: str | None = None) -> str:
    """Which implementation `grouped_qmatmul` runs for ``x`` / ``w`` on ``platform`` (default: JAX's).

    The first registered grouped kernel that takes the call (`GROUPED_ROUTES`); else the routed
    (decode) paths when ``x`` has fewer rows than ``w`` has experts, the dequantize-all paths
    otherwise. bf16 / f16 activations on a GPU dequantize in their own dtype; everything
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
        implementation: one of `GROUPED_IMPLEMENTATIONS` or a registered grouped kernel (None:
            `grouped_implementation`). A forced kernel that declines the call is an error.

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
    if implementation and implementation not in GROUPED_IMPLEMENTATIONS:
        from jquant.ops.qmatmul import load_kernel_packages

        load_kernel_packages(current_device().platform)  # a kernel forced before any routing loaded it
    impl = implementation or grouped_implementation(x, w)
    group_sizes = group_sizes.astype(jnp.int32)
    kernel = GROUPED_BACKENDS.get(impl)
    if kernel is not None:
        if implementation:
            why = _kernel_reason(kernel, x, w, current_device())
            if why:
                raise ValueError(f"grouped kernel {impl} cannot run {tuple(x.shape)} x {w!r}: {why}")
        with jax.named_scope(f"jquant_grouped_qmatmul_{impl}"):
            return kernel(x, w, group_sizes)
    if impl not in GROUPED_IMPLEMENTATIONS:
        have = GROUPED_IMPLEMENTATIONS + tuple(GROUPED_BACKENDS)
        raise ValueError(f"unknown grouped_qmatmul implementation {impl!r} (have {have})")
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
