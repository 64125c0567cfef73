"""``qmatmul(x, w, act)``: the quantized matmul every model layer calls, and its dispatcher.

Equivalent to: ``fake_quantize(x, act) @ dequantize(w).T`` with float32 accumulation, result in
``x``'s dtype (``act`` None: plain ``x``). The XLA reference computes exactly that (activations
permuted by ``w.perm`` instead of un-permuting the weight); kernel backends (`jquant.pallas`,
`kernels_cuda`, the XLA backends here) register themselves, and `jquant.ops.routes.ROUTES` says
in which order they are tried on each platform.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray
from jquant.core.routing import ANY, Call, Capabilities, Route
from jquant.ops.act_quant import fake_quantize
from jquant.ops.backend import BACKENDS, REGISTRY, Backend, register_backend
from jquant.ops.device import current_device

__all__ = [
    "qmatmul",
    "reference_qmatmul",
    "explain",
    "select",
    "XlaReference",
    "XlaDequantDot",
    "load_kernel_packages",
    "layer_view",
    "take_layer",
    "reads_stacked",
]


def reference_qmatmul(x: jax.Array, w: QArray, act=None) -> jax.Array:
    """The spec: ``fake_quantize(x, act) @ dequantize(w).T`` in f32, cast to ``x.dtype``.

    Args:
        x: [..., K] float activations.
        w: `QArray` with shape (N, K).
        act: optional `ActQuant` recipe of the layer's input.

    Returns:
        [..., N] in ``x.dtype``.
    """
    if act is not None:
        x = fake_quantize(x, act)
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
    """The XLA reference as a backend: every call on every platform (the spec; last on CPU/TPU)."""

    name = "xla_reference"
    caps = Capabilities.any_weight(frozenset({"cpu", "gpu", "tpu"}), act_dtypes=ANY, act=ANY)

    def __call__(self, x, w, act=None):
        return reference_qmatmul(x, w, act)


class XlaDequantDot(Backend):
    """Two-stage: dequantize the codes to the activation dtype in XLA, then a dense dot (cuBLAS).

    The GPU fallback for every code type, and the prefill path of 4/8-bit weights from M = 128 on
    (`jquant.ops.routes`): one extra pass over N*K*2 bytes, then the vendor GEMM. At small M, XLA
    fuses the dequantization into its GEMV. Rounds the f32-dequantized weights once to bf16/f16
    (within the spec's tolerance); accumulation is f32.
    """

    name = "xla_dequant_dot"
    caps = Capabilities.any_weight(frozenset({"gpu"}))

    def __call__(self, x, w, act=None):
        wd = jnp_dequant.dequantize_permuted(w).astype(x.dtype)  # [N, K], columns in data order
        if w.perm is not None:
            x = jnp.take(x, w.perm, axis=-1)
        y = jnp.einsum("...k,nk->...n", x, wd, preferred_element_type=jnp.float32)
        return y.astype(x.dtype)


register_backend(XlaReference())
register_backend(XlaDequantDot())


# The modules whose import registers each platform's backends (tokamax's guarded imports): loaded
# the first time the dispatcher runs on that platform, so `qmatmul` users need not import them.
# kernels_cpu registers from its `qmatmul` module: the package itself may already be imported
# without JAX (the Torch bridge's ctypes use), and importing it again would register nothing.
KERNEL_PACKAGES: dict[str, tuple[str, ...]] = {
    "gpu": ("jquant.pallas", "kernels_cuda"),
    "cpu": ("kernels_cpu.qmatmul",),
}
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
    x,
    w: QArray,
    act=None,
    *,
    implementation: str | None = None,
    platform: str | None = None,
    device=None,
    runtime: bool = True,
) -> Route:
    """The `Route` of this call: the backend, whether the recipe is composed, why others were skipped.

    Args:
        x: activations or a ShapeDtypeStruct [..., K].
        w: the `QArray`.
        act: the activation recipe (`ActQuant`) or None.
        implementation: force a backend by name (else ``JQUANT_KERNELS``, else the routing table).
        platform: route as on this platform (default: JAX's default backend), with the device
            facts of its first device here (none when it has no device here).
        device: the `jquant.core.routing.Device` to route for (overrides ``platform``).
        runtime: also ask whether each backend can run on this machine (False: declarations only).

    Raises:
        ValueError: an explicitly requested backend is unknown or declines the call: the caller
            asked for it, so falling back silently would hide that.
    """
    device = device or current_device(platform)
    load_kernel_packages(device.platform)
    r = REGISTRY.route(
        Call.of(x.shape, x.dtype, w, device, act),
        forced=[implementation] if implementation else None,
        runtime=runtime,
    )
    return r if r.backend is not None else Route(BACKENDS["xla_reference"], False, r.skipped)


def layer_view(w: QArray) -> QArray:
    """The per-layer `QArray` of layer-stacked ``w`` (arrays with a leading layer axis) as shape structs:
    what routing reads (static fields, dtypes, shapes), with no array sliced (`take_layer`'s twin)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), w)


def take_layer(w, layer):
    """Layer ``layer`` (int32 scalar, may be traced) of a layer-stacked `QArray` or dense array."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False), w)


def reads_stacked(backend) -> bool:
    """Whether ``backend`` takes ``layer=`` and reads that layer of stacked weights in place (a
    capability a backend declares with ``reads_stacked = True``; see `qmatmul`)."""
    return bool(getattr(backend, "reads_stacked", False))


def qmatmul(
    x: jax.Array, w: QArray | jax.Array, act=None, *, implementation: str | None = None, layer=None
) -> jax.Array:
    """``fake_quantize(x, act) @ dequantize(w).T`` through the backend the routing table picks.

    Args:
        x: [..., K] activations (bf16 / f16 / f32).
        w: `QArray` (N, K), or a dense [N, K] array (plain matmul, for unquantized layers); with
            ``layer``, the same with a leading layer axis on every array (data [L, N, ...], scale
            [L, ...], ...; a dense [L, N, K]): the stacked weights of a scanned model.
        act: the layer's input-activation recipe (`jquant.core.activation.ActQuant`, W8A8 / FP8 /
            FP4 checkpoints) or None. Fused W8A8 backends quantize inside; a weight-only backend
            runs after the recipe's exact XLA fake-quantization.
        implementation: force a backend by name (raises if it cannot run this call).
        layer: None, or an int32 scalar (may be traced): multiply by layer ``layer`` of stacked
            ``w``. Routing sees the per-layer weight; a backend that declares ``reads_stacked``
            gets the stacked weight and ``layer=`` and reads the layer in place, any other gets the
            slice ``w[layer]``. Under ``lax.scan``, XLA hands a custom call that slice in place only
            when ``layer`` is the loop's induction variable (carried ``i -> i + 1``); otherwise
            each call copies its layer's weights first (`jquant.models.llama`).

    Returns:
        [..., N] in ``x.dtype``.
    """
    if layer is not None and not isinstance(w, QArray):
        w, layer = take_layer(w, layer), None
    if not isinstance(w, QArray):
        if act is not None:
            x = fake_quantize(x, act)
        return jnp.einsum("...k,nk->...n", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
    r = select(x, w if layer is None else layer_view(w), act, implementation=implementation)
    kw = {}
    if layer is not None and reads_stacked(r.backend):
        kw["layer"] = layer
    elif layer is not None:
        w = take_layer(w, layer)
    with jax.named_scope(f"jquant_qmatmul_{r.backend.name}"):
        if r.composed:
            return r.backend(fake_quantize(x, act), w, **kw)
        return r.backend(x, w, act, **kw)


def explain(x, w: QArray, act=None, *, platform: str | None = None, device=None) -> str:
    """A human-readable account of which backend would run and why the others would not."""
    r = select(x, w, act, platform=platform, device=device)
    how = " (activations fake-quantized by XLA first)" if r.composed else ""
    if reads_stacked(r.backend):
        how += " (in a scanned model: reads its layer of the stacked weights in place)"
    lines = [f"qmatmul {tuple(x.shape)} x {w!r} -> {r.backend.name}{how}"]
    return "\n".join(lines + [f"  skipped {s}" for s in r.skipped])
