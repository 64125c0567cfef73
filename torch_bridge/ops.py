"""``torch.ops.jquant.qmatmul``: the one custom op every backend runs behind, so torch.compile works.

The op takes the activations, a layer's prepared tensors and its plan as a string (one `KernelSpec`
per backend of `torch_bridge.backend.plan`: name, tensors, qtype, shape, block, activation scheme)
and runs the backend whose M range holds the call's rows (`jquant.core.routing.by_m` on the cached
parse: a loop over one or two entries). Routing per call thus happens inside the op, opaque to
dynamo and inductor (no guard or recompile on M), with a ``register_fake`` twin giving the output's
shape and dtype (gemlite's ``forward_functional`` pattern). Leading dimensions of ``x`` are
flattened around the backend.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import NamedTuple

import torch

from jquant.core.qarray import QArray
from jquant.core.routing import by_m
from torch_bridge import act_quant as aq
from torch_bridge.backend import BACKENDS, KernelSpec, TorchBackend, plan

__all__ = ["qmatmul", "qmatmul_prepared", "prepare", "load_plan"]


class PlanEntry(NamedTuple):
    spec: KernelSpec
    tensors: slice  # its tensors in the op's list

    @property
    def backend(self) -> TorchBackend:
        return BACKENDS[self.spec.backend]  # looked up per call: a re-registered name takes effect


def _tuples(v):
    return tuple(map(_tuples, v)) if isinstance(v, list) else v  # JSON lists back to the tuples they were


@functools.lru_cache(maxsize=1024)
def load_plan(spec: str) -> tuple[PlanEntry, ...]:
    """The entries of a plan string made by `prepare`, in plan order."""
    specs = [KernelSpec(**{k: _tuples(v) for k, v in d.items()}) for d in json.loads(spec)]
    return tuple(PlanEntry(s, slice(s.first, s.first + len(s.names))) for s in specs)


@torch.library.custom_op("jquant::qmatmul", mutates_args=())
def _qmatmul_op(x: torch.Tensor, tensors: list[torch.Tensor], spec: str) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    e = by_m(load_plan(spec), x2.shape[0])
    y = e.backend.run(x2, list(tensors[e.tensors]), e.spec)
    return y.reshape(*x.shape[:-1], e.spec.shape[0])


@_qmatmul_op.register_fake
def _(x, tensors, spec):
    return x.new_empty((*x.shape[:-1], load_plan(spec)[0].spec.shape[0]))


def prepare(
    w: QArray,
    device: torch.device | str,
    dtype: torch.dtype,
    *,
    act_quant=None,
    implementation: str | None = None,
) -> tuple[str, list[torch.Tensor]]:
    """Routes ``w`` for every M (`torch_bridge.backend.plan`) and derives the backends' tensors.

    Returns:
        ``(plan string, tensors)`` for `qmatmul_prepared`. Backends with the same ``prepare``
        method (the Triton kernel and its dequantize -> GEMM twin) share one set of tensors.
    """
    device = torch.device(device)
    act_quant = aq.resolve(act_quant, w.k, w.block[1])
    specs, tensors, made = [], [], {}
    for r in plan(w, device, dtype, act_quant=act_quant, implementation=implementation):
        how = type(r.backend).prepare
        if how not in made:
            spec, ts = r.backend.prepare(w, device, dtype, act_quant)
            made[how] = dataclasses.replace(spec, first=len(tensors))
            tensors += ts
        specs.append(dataclasses.replace(made[how], backend=r.backend.name))
    return json.dumps([dataclasses.asdict(s) for s in specs], sort_keys=True), tensors


def qmatmul_prepared(x: torch.Tensor, tensors: list[torch.Tensor], spec: str) -> torch.Tensor:
    """``act(x) @ dequantize(w).T`` from tensors made by `prepare` ([..., K] -> [..., N], x.dtype)."""
    return torch.ops.jquant.qmatmul(x, tensors, spec)


def qmatmul(
    x: torch.Tensor, w: QArray | torch.Tensor, *, act_quant=None, implementation: str | None = None
) -> torch.Tensor:
    """``x @ dequantize(w).T`` (f32 accumulation, result in ``x.dtype``) through the routed backend.

    Equivalent to ``x[..., perm] @ dequantize_permuted(w).T``; with ``act_quant`` (a checkpoint's
    `jquant.core.activation.ActQuant`, or "int8" / "fp8") the activations are quantized first
    (`torch_bridge.act_quant`). One-off calls prepare the weight every time; `QuantLinear` caches
    the prepared tensors.

    Args:
        x: [..., K] float16 / bfloat16 / float32 activations.
        w: canonical `QArray` with torch leaves (`to_torch`), or a dense [N, K] tensor.
        act_quant: None (weight-only), an `ActQuant`, or "int8" / "fp8".
        implementation: force a backend by name, for every M (raises if it cannot run this call).
    """
    if not isinstance(w, QArray):
        return torch.nn.functional.linear(x, w.to(x.dtype))
    spec, tensors = prepare(w, x.device, x.dtype, act_quant=act_quant, implementation=implementation)
    return qmatmul_prepared(x, tensors, spec)
