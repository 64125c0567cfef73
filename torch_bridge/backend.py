"""Torch-side backends of ``qmatmul`` and the dispatcher that picks one per (weight, device, dtype).

Mirrors `jquant.ops.backend` (which imports JAX and so cannot be reused here): a backend either
computes ``act(x) @ dequantize(w).T`` (within a tolerance scaled with sqrt(K)) or declines with a
reason; the dequantize + matmul reference supports everything and runs last. ``act`` is the
identity for weight-only calls and the activation fake-quantization named by ``act_quant``
(`torch_bridge.act_quant`) for W8A8 calls, so every backend computes the same function.

A backend may derive a kernel-specific layout from the canonical tensors once (``prepare``, like
vLLM's ``process_weights_after_loading``): lossless and tested against the canonical one.
`torch_bridge.linear.QuantLinear` caches it per (device, dtype).

Selection: registered backends, highest priority first, minus those named in
``JQUANT_DISABLED_KERNELS``; ``JQUANT_KERNELS`` (the variable the JAX side reads too) forces the
torch backends it names, in that order, and then a call none of them supports raises instead of
falling back. Names in those variables that are not torch backends (the JAX side's) are ignored.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from typing import ClassVar

import torch

from jquant.core.dispatch import choose, env_names
from jquant.core.qarray import QArray
from torch_bridge import act_quant as aq
from torch_bridge.tensor import describe

__all__ = ["TorchBackend", "KernelSpec", "register_backend", "BACKENDS", "select", "explain"]


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


class TorchBackend(abc.ABC):
    """One torch implementation of ``qmatmul``.

    Attributes:
        name: unique name (env vars, reports), prefixed ``torch_``.
        priority: higher is tried first.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0

    @abc.abstractmethod
    def supports(
        self, w: QArray, device: torch.device, dtype: torch.dtype, act_quant: str | None = None
    ) -> tuple[bool, str]:
        """Whether ``qmatmul`` of activations of ``dtype`` on ``device`` with ``w`` runs here; else why not.

        Reads only static fields, shapes and dtypes of ``w`` (its leaves may be on any device).
        ``act_quant`` is None or a resolved descriptor (`torch_bridge.act_quant.resolve`).
        """

    @abc.abstractmethod
    def prepare(
        self, w: QArray, device: torch.device, dtype: torch.dtype, act_quant: str | None
    ) -> tuple[KernelSpec, list[torch.Tensor]]:
        """Derives this backend's tensors from the canonical ``w`` (once per device / dtype)."""

    @abc.abstractmethod
    def run(self, x: torch.Tensor, tensors: list[torch.Tensor], spec: KernelSpec) -> torch.Tensor:
        """``act(x) @ dequantize(w).T``: x [M, K] -> [M, N] in ``x.dtype``."""


BACKENDS: dict[str, TorchBackend] = {}


def register_backend(backend: TorchBackend) -> TorchBackend:
    """Adds ``backend`` (an instance); a second registration under the same name replaces it."""
    BACKENDS[backend.name] = backend
    return backend


def select(
    w: QArray,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    act_quant: str | None = None,
    implementation: str | None = None,
) -> tuple[TorchBackend, list[str]]:
    """Picks the backend for ``w`` and activations of ``dtype`` on ``device``.

    Returns:
        the backend and the reasons the others were skipped.

    Raises:
        ValueError: an explicitly requested backend (argument or ``JQUANT_KERNELS``) is unknown or
            declines: the caller asked for it, so a silent fallback would hide that.
    """
    device = torch.device(device)
    act_quant = aq.resolve(act_quant, w.k, w.block[1])
    call = f"{describe(w)} for {dtype} on {device}"
    b, skipped = choose(
        BACKENDS,
        sorted(BACKENDS.values(), key=lambda b: -b.priority),
        lambda b: b.supports(w, device, dtype, act_quant),
        forced=[implementation] if implementation else env_names("JQUANT_KERNELS", "torch_"),
        disabled=env_names("JQUANT_DISABLED_KERNELS", "torch_"),
        what="torch",
        call=call,
    )
    if b is None:
        raise ValueError(f"no torch backend runs {call}: {skipped}")
    return b, skipped


def explain(w: QArray, device: torch.device | str, dtype: torch.dtype, *, act_quant: str | None = None) -> str:
    """Which backend would run and why each one before it would not."""
    b, skipped = select(w, device, dtype, act_quant=act_quant)
    lines = [f"qmatmul {describe(w)} ({dtype} on {torch.device(device)}) -> {b.name}"]
    return "\n".join(lines + [f"  skipped {s}" for s in skipped])
