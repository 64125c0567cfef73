"""`QuantLinear`: an ``nn.Linear`` stand-in over one canonical quantized weight."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from jquant.core.qarray import ARRAY_FIELDS, QArray
from torch_bridge.ops import load_plan, prepare, qmatmul_prepared
from torch_bridge.tensor import to_torch

__all__ = ["QuantLinear", "fuse"]


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
        for f in ARRAY_FIELDS:
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
        leaves = {f: getattr(self, f"weight_{f}", None) for f in ARRAY_FIELDS}
        return QArray(**leaves, qtype=self.qtype, shape=(self.out_features, self.in_features), block=self.block)

    def prepare(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """Routes and prepares the layer for activations of ``dtype`` on ``device``; returns its backends."""
        device = _device(device)
        key = (device, dtype)
        if key not in self._prepared:
            self._prepared[key] = prepare(
                self.qweight(), device, dtype, act_quant=self.act_quant, implementation=self.implementation
            )
        return _backends(self._prepared[key][0])

    def runner(self, device: torch.device | str, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
        """`forward` for activations of ``dtype`` on ``device`` as a plain callable: the same backends,
        tensors and arithmetic, without the ``jquant::qmatmul`` custom-op dispatch and with each
        backend's per-call argument handling done once (`TorchBackend.bind`): 31 vs 45 us a call for
        SmolLM2's 576 x 576 Q4_1 layer at M = 1 on one thread (eager, inference mode).

        For eager decode loops (`torch_bridge.patch.Decoder`); under ``torch.compile`` use the module.
        The callable holds the tensors prepared now: make a new one after ``.to()``.
        """
        key = (_device(device), dtype)
        self.prepare(*key)
        spec, tensors = self._prepared[key]
        entries = [(e.backend.caps, e.backend.bind(list(tensors[e.tensors]), e.spec)) for e in load_plan(spec)]
        n, k = self.out_features, self.in_features
        bias = None if self.bias is None else self.bias.detach().to(dtype)

        def run(x: torch.Tensor) -> torch.Tensor:
            x2 = x.reshape(-1, k)
            m = x2.shape[0]
            fn = entries[-1][1]  # `jquant.core.routing.by_m`: the first taking M, else the last
            for caps, f in entries:
                if caps.takes_m(m):
                    fn = f
                    break
            y = fn(x2).reshape(*x.shape[:-1], n)
            return y if bias is None else y + bias

        return run

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


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "meta") and device.index is None:  # "cuda" -> "cuda:0", "xpu" -> "xpu:0"
        device = torch.device(device.type, torch.get_device_module(device.type).current_device())
    return device


def fuse(linears: Sequence[QuantLinear]) -> QuantLinear | None:
    """One `QuantLinear` over the row-concatenation of ``linears``' weights (q / k / v, gate / up):
    ``fuse(ls)(x) == cat([l(x) for l in ls], -1)``, one kernel call instead of ``len(ls)``.

    Each output row of a weight is computed from its own codes and scales (every backend here is
    row-independent), so the fused layer computes the same numbers. Fusable: weight-only layers of one
    qtype, input size and scale block with one scale row per weight row (``block[0] == 1``), no
    ``perm`` / ``scale2``, leaves of equal dtypes on one device, biases on all or none. The inputs'
    buffers are re-pointed at row slices of the fused leaves (contiguous views), so the weights are
    held once; their prepared tensors are dropped and re-derived on their next call.

    Args:
        linears: two or more `QuantLinear` reading the same input.

    Returns:
        the fused layer, or None where the layers cannot be fused (the caller runs them one by one).
    """
    if len(linears) < 2 or not all(isinstance(m, QuantLinear) for m in linears):
        return None
    a = linears[0]
    fields = [f for f in ARRAY_FIELDS if getattr(a, f"weight_{f}", None) is not None]
    for m in linears:
        mine = [f for f in ARRAY_FIELDS if getattr(m, f"weight_{f}", None) is not None]
        if (
            mine != fields
            or "perm" in fields
            or "scale2" in fields
            or m.act_quant is not None
            or (m.qtype, m.block, m.in_features, m.implementation)
            != (a.qtype, a.block, a.in_features, a.implementation)
            or m.block[0] != 1
            or (m.bias is None) != (a.bias is None)
            or any(getattr(m, f"weight_{f}").dtype != getattr(a, f"weight_{f}").dtype for f in fields)
            or any(getattr(m, f"weight_{f}").device != a.weight_data.device for f in fields)
            or any(getattr(m, f"weight_{f}").shape[0] != m.out_features for f in fields)
        ):
            return None
    n = sum(m.out_features for m in linears)
    leaves = {f: torch.cat([getattr(m, f"weight_{f}") for m in linears]) for f in fields}
    w = QArray(**leaves, qtype=a.qtype, shape=(n, a.in_features), block=a.block)
    bias = None if a.bias is None else torch.cat([m.bias.detach() for m in linears])
    fused = QuantLinear(w, bias, implementation=a.implementation)
    row = 0
    for m in linears:  # the inputs now read their rows of the fused leaves (views, no second copy)
        for f in fields:
            m._buffers[f"weight_{f}"] = leaves[f][row : row + m.out_features]
        m._prepared.clear()
        row += m.out_features
    return fused


def _backends(spec: str) -> str:
    """The backends of a prepared plan by M: ``"a"``, or ``"a, b"`` (b takes the larger M)."""
    return ", ".join(e.backend.name for e in load_plan(spec))
