"""`QuantLinear`: an ``nn.Linear`` stand-in over one canonical quantized weight."""

from __future__ import annotations

import torch
from torch import nn

from jquant.core.qarray import QArray
from torch_bridge.ops import load_plan, prepare, qmatmul_prepared
from torch_bridge.tensor import to_torch

__all__ = ["QuantLinear"]

_FIELDS = ("data", "scale", "zero", "perm", "scale2")


class QuantLinear(nn.Module):
    """``y = act(x) @ dequantize(w).T + bias`` without materializing ``dequantize(w)``.

    The canonical tensors are registered buffers (``weight_data``, ``weight_scale``, and
    ``weight_zero`` / ``weight_perm`` / ``weight_scale2`` when present), so ``.to(device)`` and
    ``state_dict`` see them. On the first call for a (device, activation dtype) the layer is
    routed for every M (`torch_bridge.ops.prepare`) and the backends' tensors are derived once;
    they are kept per (device, dtype). Call `prepare` before ``torch.compile`` so tracing finds
    them ready.

    Args:
        weight: canonical `QArray` [out_features, in_features] (numpy, torch or DLPack leaves).
        bias: optional [out_features] tensor.
        act_quant: the layer's input-activation recipe: None (weight-only), the checkpoint's
            `jquant.core.activation.ActQuant` (W8A8 / FP8 / FP4 layers), or "int8" / "fp8"
            (dynamic per-token W8A8 on a weight-only checkpoint).
        implementation: force a backend by name (raises if it cannot run).
        device: where to put the buffers (default: where the leaves are).

    Example::

        >>> lin = QuantLinear(ckpt.weights["model.layers.0.mlp.down_proj.weight"])
        >>> y = lin(torch.randn(2, lin.in_features))
    """

    def __init__(
        self,
        weight: QArray,
        bias: torch.Tensor | None = None,
        *,
        act_quant=None,
        implementation: str | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        w = to_torch(weight, device)
        self.qtype, self.block = w.qtype, tuple(w.block)
        self.out_features, self.in_features = w.shape
        self.act_quant = act_quant
        self.implementation = implementation
        for f in _FIELDS:
            a = getattr(w, f)
            if a is not None:
                # Memory-mapped checkpoint tensors are read-only: buffers never write to them.
                self.register_buffer(f"weight_{f}", a)
        bias_device = device if device is not None else w.data.device
        if bias is None or (isinstance(bias, nn.Parameter) and bias.device == torch.device(bias_device)):
            self.bias = bias  # the replaced nn.Linear's own parameter: shared, not copied
        else:
            self.bias = nn.Parameter(bias.detach().to(bias_device, copy=True), requires_grad=False)
        self._prepared: dict[tuple[torch.device, torch.dtype], tuple[str, list[torch.Tensor]]] = {}

    def qweight(self) -> QArray:
        """The canonical `QArray` with the buffers as leaves (on their current device)."""
        leaves = {f: getattr(self, f"weight_{f}", None) for f in _FIELDS}
        return QArray(**leaves, qtype=self.qtype, shape=(self.out_features, self.in_features), block=self.block)

    def prepare(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """Routes and prepares the layer for activations of ``dtype`` on ``device``; returns its backends."""
        device = torch.device(device)
        if device.type not in ("cpu", "meta") and device.index is None:  # "cuda" -> "cuda:0", "xpu" -> "xpu:0"
            device = torch.device(device.type, torch.get_device_module(device.type).current_device())
        key = (device, dtype)
        if key not in self._prepared:
            self._prepared[key] = prepare(
                self.qweight(), device, dtype, act_quant=self.act_quant, implementation=self.implementation
            )
        return _backends(self._prepared[key][0])

    @property
    def backend(self) -> str | None:
        """The backends of the most recent `prepare` (None before the first call)."""
        return _backends(next(reversed(self._prepared.values()))[0]) if self._prepared else None

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half() on a model: prepared tensors are re-derived lazily, and the
        # canonical buffers follow device moves only. A dtype cast would round fp32 scales to bf16
        # or turn fp8 codes into halves: not the checkpoint any more.
        self._prepared.clear()
        before = {k: b for k, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for k, old in before.items():
            new = self._buffers[k]
            if new.dtype != old.dtype:
                self._buffers[k] = old.to(new.device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._prepared:
            self.prepare(x.device, x.dtype)
        spec, tensors = self._prepared[key]
        y = qmatmul_prepared(x, tensors, spec)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype.name}, "
            f"block={self.block}, bias={self.bias is not None}, act_quant={self.act_quant}, backend={self.backend}"
        )


def _backends(spec: str) -> str:
    """The backends of a prepared plan by M: ``"a"``, or ``"a, b"`` (b takes the larger M)."""
    return ", ".join(e.backend.name for e in load_plan(spec))
