"""``qmatmul(x, w)``: the quantized matmul every model layer calls, and its dispatcher.

Equivalent to: ``x @ dequantize(w).T`` with float32 accumulation, result in ``x``'s dtype. The XLA
reference computes exactly that (activations permuted by ``w.perm`` instead of un-permuting the
weight); kernel backends (`jquant.pallas`, `kernels_cuda`) register themselves and are tried first.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.dispatch import choose, env_names
from jquant.core.qarray import QArray
from jquant.ops.backend import BACKENDS, Backend, available_backends, register_backend

__all__ = ["qmatmul", "reference_qmatmul", "explain", "select", "XlaReference", "load_kernel_packages"]


def reference_qmatmul(x: jax.Array, w: QArray) -> jax.Array:
    """The spec: ``x @ dequantize(w).T`` in f32, cast to ``x.dtype``.

    Args:
        x: [..., K] float activations.
        w: `QArray` with shape (N, K).

    Returns:
        [..., N] in ``x.dtype``.
    """
    if w.perm is not None:
        x = jnp.take(x, w.perm, axis=-1)
    wd = jnp_dequant.dequantize_permuted(w)  # [N, K] f32, columns in data order
    y = jax.lax.dot_general(
        x.astype(jnp.float32),
        wd,
        (((x.ndim - 1,), (1,)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return y.astype(x.dtype)


class XlaReference(Backend):
    """The XLA reference as a backend: supports everything, runs everywhere, lowest priority."""

    name = "xla_reference"
    platforms = ("cpu", "gpu", "tpu")
    priority = -1000

    def supports(self, x, w, **kw):
        return True, ""

    def __call__(self, x, w, **kw):
        return reference_qmatmul(x, w)


register_backend(XlaReference())


# Kernel packages that register backends on import, per platform (tokamax's guarded imports): loaded
# the first time the dispatcher runs on that platform, so `qmatmul` users need not import them.
KERNEL_PACKAGES: dict[str, tuple[str, ...]] = {"gpu": ("jquant.pallas", "kernels_cuda")}
_LOADED: dict[str, dict[str, str]] = {}


def load_kernel_packages(platform: str) -> dict[str, str]:
    """Imports the kernel packages of ``platform`` once; returns {package: "ok" | why it did not load}."""
    if platform not in _LOADED:
        status = {}
        for pkg in KERNEL_PACKAGES.get(platform, ()):
            try:
                importlib.import_module(pkg)
                status[pkg] = "ok"
            except ImportError as e:  # not built / not installed here: the backends are simply absent
                status[pkg] = f"not loaded: {e}"
        _LOADED[platform] = status
    return _LOADED[platform]


def select(
    x, w: QArray, *, implementation: str | None = None, platform: str | None = None
) -> tuple[Backend, list[str]]:
    """Picks the backend for this call; returns it and the reasons others were skipped.

    Raises:
        ValueError: an explicitly requested backend (argument or ``JQUANT_KERNELS``) is unknown or
            declines the call: the caller asked for it, so falling back silently would hide that.
    """
    platform = platform or jax.default_backend()
    load_kernel_packages(platform)
    b, skipped = choose(
        BACKENDS,
        available_backends(platform),
        lambda b: b.supports(x, w),
        forced=[implementation] if implementation else env_names("JQUANT_KERNELS"),
        disabled=env_names("JQUANT_DISABLED_KERNELS"),
        what="qmatmul",
        call=f"{w!r} with x {x.shape} {x.dtype}",
    )
    return (b or BACKENDS["xla_reference"]), skipped


def qmatmul(x: jax.Array, w: QArray | jax.Array, *, implementation: str | None = None) -> jax.Array:
    """``x @ dequantize(w).T`` through the best available backend.

    Args:
        x: [..., K] activations (bf16 / f16 / f32).
        w: `QArray` (N, K), or a dense [N, K] array (plain matmul, for unquantized layers).
        implementation: force a backend by name (raises if it cannot run this call).

    Returns:
        [..., N] in ``x.dtype``.
    """
    if not isinstance(w, QArray):
        return jnp.einsum("...k,nk->...n", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
    backend, _ = select(x, w, implementation=implementation)
    with jax.named_scope(f"jquant_qmatmul_{backend.name}"):
        return backend(x, w)


def explain(x, w: QArray, *, platform: str | None = None) -> str:
    """A human-readable account of which backend would run and why the others would not."""
    b, skipped = select(x, w, platform=platform)
    lines = [f"qmatmul {tuple(x.shape)} x {w!r} -> {b.name}"] + [f"  skipped {s}" for s in skipped]
    return "\n".join(lines)
