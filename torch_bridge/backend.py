"""Torch-side backends of ``qmatmul`` and the dispatcher that picks one per (weight, device, dtype).

The protocol is `jquant.core.routing` (shared with the JAX side): a backend declares what it runs
in one `Capabilities` record and either computes ``act(x) @ dequantize(w).T`` (within a tolerance
scaled with sqrt(K)) or declines with a reason; the dequantize + matmul reference supports
everything and runs last. ``act`` is the identity for weight-only calls and the activation
fake-quantization named by ``act_quant`` (`torch_bridge.act_quant`) for W8A8 calls, so every
backend computes the same function. The order backends are tried in is `ROUTES`, one table per
torch device type. Selection happens once per layer (M is not known yet), so backends that
change method with M (the int4 CPU kernel, ``_scaled_mm`` below 32 rows) do so inside ``run``.

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
import json

import torch

from jquant.core.qarray import QArray
from jquant.core.routing import Backend, Call, Device, Registry, Route
from torch_bridge import act_quant as aq
from torch_bridge.tensor import describe

__all__ = ["TorchBackend", "KernelSpec", "ROUTES", "REGISTRY", "register_backend", "BACKENDS", "select", "explain"]

# Per torch device type, the order backends are tried in. Vendor fp8 GEMM first (1.1-1.5x the
# Triton fp8 kernel at M = 32..4096 on H200), then the fused Triton W8A8 kernels (they decline
# weight-only layers), the Triton weight-only kernel, torch's own CPU kernels, the reference.
# Triton runs wherever a Triton driver does (NVIDIA / ROCm as "cuda", Intel as "xpu") and on the
# CPU under TRITON_INTERPRET=1; other devices (Gaudi "hpu", "mps", ...) take the reference.
ROUTES: dict[str, tuple[str, ...]] = {
    "cuda": (
        "torch_scaled_mm_fp8",
        "torch_triton_w8a8_fp8",
        "torch_triton_w8a8_int8",
        "torch_triton_wxa16",
        "torch_dequant_matmul",
    ),
    "xpu": ("torch_triton_w8a8_fp8", "torch_triton_w8a8_int8", "torch_triton_wxa16", "torch_dequant_matmul"),
    "cpu": (
        "torch_triton_w8a8_fp8",
        "torch_triton_w8a8_int8",
        "torch_triton_wxa16",
        "torch_cpu_int4pack",
        "torch_cpu_int8pack",
        "torch_dequant_matmul",
    ),
    "*": ("torch_dequant_matmul",),
}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Everything static a backend needs at run time; travels as one string through the custom op.

    Attributes:
        backend: backend name.
        names: names of the prepared tensors, in the order they are passed.
        qtype: ``QType.to_json()`` of the weight, as a JSON string.
        shape: logical (N, K).
        block: scale block (bn, bk).
        act_quant: None (weight-only) or the activation recipe's descriptor (`torch_bridge.act_quant`).
        extra: backend-specific static values (JSON-able), e.g. the CPU int4 group size.
    """

    backend: str
    names: tuple[str, ...]
    qtype: str
    shape: tuple[int, int]
    block: tuple[int, int]
    act_quant: str | None = None
    extra: tuple[tuple[str, int], ...] = ()

    def dumps(self) -> str:
        d = dataclasses.asdict(self)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def loads(cls, s: str) -> KernelSpec:
        d = json.loads(s)
        return cls(
            backend=d["backend"],
            names=tuple(d["names"]),
            qtype=d["qtype"],
            shape=tuple(d["shape"]),
            block=tuple(d["block"]),
            act_quant=d["act_quant"],
            extra=tuple(tuple(e) for e in d["extra"]),
        )

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
        why = self.reason(torch_call(w, torch.device(device), dtype, act_quant))
        return not why, why

    @abc.abstractmethod
    def prepare(
        self, w: QArray, device: torch.device, dtype: torch.dtype, act_quant: str | None
    ) -> tuple[KernelSpec, list[torch.Tensor]]:
        """Derives this backend's tensors from the canonical ``w`` (once per device / dtype)."""

    @abc.abstractmethod
    def run(self, x: torch.Tensor, tensors: list[torch.Tensor], spec: KernelSpec) -> torch.Tensor:
        """``act(x) @ dequantize(w).T``: x [M, K] -> [M, N] in ``x.dtype``."""


REGISTRY = Registry("torch", ROUTES, env_prefix="torch_")
BACKENDS = REGISTRY.backends
register_backend = REGISTRY.register


def torch_device(device: torch.device) -> Device:
    """The routing `Device` of a torch device (compute capability and SMs of CUDA devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return Device(device.type)
    props = torch.cuda.get_device_properties(device)
    return Device(
        "cuda",
        cc=tuple(torch.cuda.get_device_capability(device)),
        num_sms=props.multi_processor_count,
        l2_bytes=getattr(props, "L2_cache_size", None) or None,
    )


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


def torch_call(w: QArray, device: torch.device, dtype: torch.dtype, act_quant: str | None) -> Call:
    """The routing `Call` of a layer: no M (selection is per layer), activations of ``dtype``."""
    return Call.of(None, str(dtype).removeprefix("torch."), w, torch_device(device), act_kind_of(act_quant))


def select(
    w: QArray,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    act_quant: str | None = None,
    implementation: str | None = None,
) -> Route:
    """The `Route` for ``w`` and activations of ``dtype`` on ``device``: the backend and why others were skipped.

    Raises:
        ValueError: an explicitly requested backend (argument or ``JQUANT_KERNELS``) is unknown or
            declines, or (a bug) no backend runs the call: the caller asked for it, so a silent
            fallback would hide that.
    """
    device = torch.device(device)
    act_quant = aq.resolve(act_quant, w.k, w.block[1])
    call = torch_call(w, device, dtype, act_quant)
    r = REGISTRY.route(call, forced=[implementation] if implementation else None, compose=False)
    if r.backend is None:
        raise ValueError(f"no torch backend runs {describe(w)} for {dtype} on {device}: {list(r.skipped)}")
    return r


def explain(w: QArray, device: torch.device | str, dtype: torch.dtype, *, act_quant: str | None = None) -> str:
    """Which backend would run and why each one before it would not."""
    r = select(w, device, dtype, act_quant=act_quant)
    lines = [f"qmatmul {describe(w)} ({dtype} on {torch.device(device)}) -> {r.backend.name}"]
    return "\n".join(lines + [f"  skipped {s}" for s in r.skipped])
