"""``torch.ops.jquant.qmatmul``: the one custom op every backend runs behind, so torch.compile works.

The op takes the activations, the backend's prepared tensors and a `KernelSpec` string (the
backend's name, the tensors' names, qtype, shape, block, activation scheme): opaque to dynamo and
inductor, with a ``register_fake`` twin giving the output's shape and dtype (gemlite's
``forward_functional`` pattern). Leading dimensions of ``x`` are flattened around the backend.
"""

from __future__ import annotations

import functools

import torch

from jquant.core.qarray import QArray
from torch_bridge import act_quant as aq
from torch_bridge.backend import BACKENDS, KernelSpec, select

__all__ = ["qmatmul", "qmatmul_prepared", "prepare"]


@functools.lru_cache(maxsize=1024)
def _spec(spec: str) -> KernelSpec:
    return KernelSpec.loads(spec)


@torch.library.custom_op("jquant::qmatmul", mutates_args=())
def _qmatmul_op(x: torch.Tensor, tensors: list[torch.Tensor], spec: str) -> torch.Tensor:
    s = _spec(spec)
    y = BACKENDS[s.backend].run(x.reshape(-1, x.shape[-1]), list(tensors), s)
    return y.reshape(*x.shape[:-1], s.shape[0])


@_qmatmul_op.register_fake
def _(x, tensors, spec):
    return x.new_empty((*x.shape[:-1], _spec(spec).shape[0]))


def prepare(
    w: QArray,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    act_quant=None,
    implementation: str | None = None,
) -> tuple[str, list[torch.Tensor]]:
    """Selects a backend for ``w`` and derives its tensors: ``(spec string, tensors)``."""
    device = torch.device(device)
    act_quant = aq.resolve(act_quant, w.k, w.block[1])
    backend = select(w, device, dtype, act_quant=act_quant, implementation=implementation).backend
    spec, tensors = backend.prepare(w, device, dtype, act_quant)
    return spec.dumps(), tensors


def qmatmul_prepared(x: torch.Tensor, tensors: list[torch.Tensor], spec: str) -> torch.Tensor:
    """``act(x) @ dequantize(w).T`` from tensors made by `prepare` ([..., K] -> [..., N], x.dtype)."""
    return torch.ops.jquant.qmatmul(x, tensors, spec)


def qmatmul(
    x: torch.Tensor, w: QArray | torch.Tensor, *, act_quant=None, implementation: str | None = None
) -> torch.Tensor:
    """``x @ dequantize(w).T`` (f32 accumulation, result in ``x.dtype``) through the best backend.

    Equivalent to ``x[..., perm] @ dequantize_permuted(w).T``; with ``act_quant`` (a checkpoint's
    `jquant.core.activation.ActQuant`, or "int8" / "fp8") the activations are quantized first
    (`torch_bridge.act_quant`). One-off calls
    prepare the weight every time; `QuantLinear` caches the prepared tensors.

    Args:
        x: [..., K] float16 / bfloat16 / float32 activations.
        w: canonical `QArray` with torch leaves (`to_torch`), or a dense [N, K] tensor.
        act_quant: None (weight-only), an `ActQuant`, or "int8" / "fp8".
        implementation: force a backend by name (raises if it cannot run this call).
    """
    if not isinstance(w, QArray):
        return torch.nn.functional.linear(x, w.to(x.dtype))
    spec, tensors = prepare(w, x.device, x.dtype, act_quant=act_quant, implementation=implementation)
    return qmatmul_prepared(x, tensors, spec)
