"""Torch-side backends of ``qmatmul`` and the dispatcher that routes each layer.

The protocol is `jquant.core.routing` (shared with the JAX side): a backend declares what it runs
in one `Capabilities` record and either computes ``act(x) @ dequantize(w).T`` (within a tolerance
scaled with sqrt(K)) or declines with a reason; the dequantize + matmul reference supports
everything and runs last. ``act`` is the identity for weight-only calls and the activation
fake-quantization named by ``act_quant`` (`torch_bridge.act_quant`) for W8A8 calls, so every
backend computes the same function. The order backends are tried in is `ROUTES`, one table per
torch device type. A layer is routed once per (device, dtype), before M is known (`plan`): the
backends that together take every M, each prepared once; the ``jquant::qmatmul`` op then runs the
one whose M range holds the call's rows (`jquant.core.routing.by_m`), as the JAX side routes.

A backend may derive a kernel-specific layout from the canonical tensors once (``prepare``, like
vLLM's ``process_weights_after_loading``): lossless and tested against the canonical one.
`torch_bridge.linear.QuantLinear` caches it per (device, dtype).

``JQUANT_KERNELS`` (the variable the JAX side reads too) forces the torch backends it names, in
that order, and then a call none of them supports raises instead of falling back;
``JQUANT_DISABLED_KERNELS`` skips them. Names that are not torch backends (the JAX side's) are
ignored.
"""

from __future__ import annotations

import abc
import dataclasses

import torch

from jquant.core.qarray import QArray
from jquant.core.routing import Backend, Call, Device, Registry, Route, by_m
from torch_bridge import act_quant as aq
from torch_bridge.tensor import describe

__all__ = [
    "TorchBackend",
    "KernelSpec",
    "ROUTES",
    "REGISTRY",
    "BACKENDS",
    "register_backend",
    "plan",
    "select",
    "explain",
]

# Per torch device type, the order backends are tried in. Vendor fp8 GEMM first (1.1-1.5x the
# Triton fp8 kernel at M = 32..4096 on H200), then the Triton kernels: fused W8A8 (they decline
# weight-only layers), weight-only and, from M = 128, its two-stage twin (Triton dequantization ->
# vendor GEMM; `torch_bridge.triton.configs.PREFILL_DEQUANT_M`); then jquant's C++ CPU kernel up to
# M = 32 (`kernels_cpu`; 5-10x torch's int4 pack kernel at decode, bench/results/cpu/decode.md),
# torch's own CPU kernels, the reference. Triton runs wherever a Triton driver does (NVIDIA / ROCm as "cuda", Intel as "xpu")
# and on the CPU under TRITON_INTERPRET=1; other devices (Gaudi "hpu", "mps", ...) take the reference.
_TRITON = ("torch_triton_w8a8_fp8", "torch_triton_w8a8_int8", "torch_triton_wxa16", "torch_triton_dequant_dot")
ROUTES: dict[str, tuple[str, ...]] = {
    "cuda": ("torch_scaled_mm_fp8", *_TRITON, "torch_dequant_matmul"),
    "xpu": (*_TRITON, "torch_dequant_matmul"),
    "cpu": (*_TRITON, "torch_cpu_qmatmul", "torch_cpu_int4pack", "torch_cpu_int8pack", "torch_dequant_matmul"),
    "*": ("torch_dequant_matmul",),
}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Everything static a backend needs at run time; a layer's plan of them travels as one string
    through the custom op (`torch_bridge.ops`).

    Attributes:
        backend: backend name.
        names: names of the prepared tensors, in the order they are passed.
        qtype: ``QType.to_json()`` of the weight, as a JSON string.
        shape: logical (N, K).
        block: scale block (bn, bk).
        act_quant: None (weight-only) or the activation recipe's descriptor (`torch_bridge.act_quant`).
        extra: backend-specific static values (JSON-able), e.g. the CPU int4 group size.
        first: where its tensors start in the op's list (the plan's backends share one list).
    """

    backend: str
    names: tuple[str, ...]
    qtype: str
    shape: tuple[int, int]
    block: tuple[int, int]
    act_quant: str | None = None
    extra: tuple[tuple[str, int], ...] = ()
    first: int = 0

    def get(self, key: str) -> int:
        return dict(self.extra)[key]


class TorchBackend(Backend):
    """One torch implementation of ``qmatmul``: a name (prefixed ``torch_``), `Capabilities`, and
    ``prepare`` / ``run``."""

    def supports(
        self, w: QArray, device: torch.device | str, dtype: torch.dtype, act_quant: str | None = None
    ) -> tuple[bool, str]:
        """Whether ``qmatmul`` of activations of ``dtype`` on ``device`` with ``w`` runs here; else why not.

        Reads only static fields, shapes and dtypes of ``w`` (its leaves may be on any device).
        ``act_quant`` is None or a resolved descriptor (`torch_bridge.act_quant.resolve`).
        """
        why = self.reason(torch_call(w, device, dtype, act_quant))
        return not why, why

    @abc.abstractmethod
    def prepare(
        self, w: QArray, device: torch.device, dtype: torch.dtype, act_quant: str | None
    ) -> tuple[KernelSpec, list[torch.Tensor]]:
        """Derives this backend's tensors from the canonical ``w`` (once per device / dtype).

        Backends of one layer's plan with the same ``prepare`` method (a twin that only changes
        ``run``) share the tensors it makes (`torch_bridge.ops.prepare`).
        """

    @abc.abstractmethod
    def run(self, x: torch.Tensor, tensors: list[torch.Tensor], spec: KernelSpec) -> torch.Tensor:
        """``act(x) @ dequantize(w).T``: x [M, K] -> [M, N] in ``x.dtype``."""

    def bind(self, tensors: list[torch.Tensor], spec: KernelSpec):
        """``run`` with this layer's tensors and spec fixed: a callable x [M, K] -> [M, N], the same
        function. Backends whose per-call argument handling costs more than a decode call (the CPU
        kernel's ctypes call) override it to do that work once (`torch_bridge.linear.QuantLinear.runner`)."""
        return lambda x: self.run(x, tensors, spec)


REGISTRY = Registry("torch", ROUTES, env_prefix="torch_")
BACKENDS = REGISTRY.backends
register_backend = REGISTRY.register


def torch_device(device: torch.device) -> Device:
    """The routing `Device` of a torch device (compute capability and SMs of CUDA devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return Device(device.type)
    props = torch.cuda.get_device_properties(device)  # what torch.cuda.get_device_capability reads
    return Device("cuda", cc=(props.major, props.minor), num_sms=props.multi_processor_count)


def act_kind_of(desc: str | None) -> str:
    """`jquant.core.routing.act_kind` of a resolved descriptor: ``"fp8:0"`` -> ``"fp8:token"``,
    ``"fp8:128"`` -> ``"fp8:group128"``, ``"ref:..."`` -> ``"other"``."""
    nat = aq.native(desc)
    if desc is None:
        return "none"
    if nat is None:
        return "other"
    kind, group = nat
    return f"{kind}:token" if group == 0 else f"{kind}:group{group}"


def torch_call(w: QArray, device: torch.device | str | Device, dtype: torch.dtype, act_quant: str | None) -> Call:
    """The routing `Call` of a layer: no M (routed per layer), activations of ``dtype``; ``device``
    is a torch device or a routing `Device` (declarations: tests, ``jquant kernels --torch``)."""
    dev = device if isinstance(device, Device) else torch_device(torch.device(device))
    return Call.of(None, str(dtype).removeprefix("torch."), w, dev, act_kind_of(act_quant))


def plan(
    w: QArray,
    device: torch.device | str | Device,
    dtype: torch.dtype,
    *,
    act_quant=None,
    implementation: str | None = None,
    **kw,
) -> tuple[Route, ...]:
    """The routes of ``w`` for activations of ``dtype`` on ``device``, by M (`Registry.plan`).

    Args:
        act_quant: None, an `ActQuant`, "int8" / "fp8", or a resolved descriptor.
        implementation: force a backend by name (it then runs every M).
        **kw: `Registry.route`'s ``disabled`` / ``runtime``.

    Raises:
        ValueError: an explicitly requested backend (argument or ``JQUANT_KERNELS``) is unknown or
            declines, or (a bug) no backend runs some M: the caller asked for it, so a silent
            fallback would hide that.
    """
    act_quant = aq.resolve(act_quant, w.k, w.block[1])
    forced = [implementation] if implementation else None
    routes = REGISTRY.plan(torch_call(w, device, dtype, act_quant), forced=forced, compose=False, **kw)
    if routes[-1].backend is None:
        raise ValueError(f"no torch backend runs {describe(w)} for {dtype} on {device}: {list(routes[-1].skipped)}")
    return routes


def select(w: QArray, device, dtype: torch.dtype, *, act_quant=None, implementation=None, m: int = 1) -> Route:
    """The `Route` that runs ``m`` rows (default 1: decode) of ``dtype`` activations times ``w`` (`plan`)."""
    return by_m(plan(w, device, dtype, act_quant=act_quant, implementation=implementation), m)


def explain(w: QArray, device: torch.device | str, dtype: torch.dtype, *, act_quant=None) -> str:
    """Which backends would run (by M) and why each one before them would not."""
    routes = plan(w, device, dtype, act_quant=act_quant)
    runs = ", ".join(f"{r.backend.name} (M {r.backend.caps.m_range})" for r in routes)
    lines = [f"qmatmul {describe(w)} ({dtype} on {torch.device(device)}) -> {runs}"]
    return "\n".join(lines + [f"  skipped {s}" for s in routes[-1].skipped])
