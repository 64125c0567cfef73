"""Activation quantization for W8A8 / FP8 / FP4 layers (the ``act`` of ``act(x) @ W.T``).

The recipe comes from the checkpoint: `jquant.core.activation.ActQuant` (``<module>.input_quant``
in ``Checkpoint.weights``), whose numpy ``fake_quantize`` is the spec. Callers may also name the
two common dynamic recipes by string: ``"int8"`` (per token) and ``"fp8"`` (e4m3 per token, or per
128-column group against K-blocked weight scales, DeepSeek-V3 style).

Every recipe is resolved once per layer into a short *descriptor* that travels in the kernel spec:

* ``"int8:0"`` / ``"fp8:0"``: dynamic symmetric per token; ``"fp8:G"``: per (token, G columns).
  These are what the Triton W8A8 kernels compute natively (`quantize` below, torch ops:
  ``s = max|x| / qmax``, codes ``round_half_even(x / s)`` clamped for int8, the RNE fp8 cast
  (saturating) for e4m3; an all-zero unit gets codes 0). Same rule as the spec.
* ``"ref:<json>"``: any other recipe (static scales, asymmetric int8, NVFP4 / MX fp4): applied by
  the spec itself (numpy round trip on the host); only the dequantize + matmul backend takes it.

Quantizing with torch ops rather than inside a Triton kernel keeps it exact and device-agnostic
(the interpreter's in-kernel fp32 -> fp8 cast is wrong: notes/environment.md section 3).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch

from jquant.core.activation import ActQuant, fake_quantize, scale_divisor

__all__ = ["SCHEMES", "resolve", "native", "quantize", "fake_quant"]

SCHEMES = ("int8", "fp8")
_QMAX = {"int8": 127.0, "fp8": 448.0}
_TINY = 1e-30  # amax floor: an all-zero unit keeps codes 0 without 0 / 0


def resolve(act: str | ActQuant | None, k: int, weight_block_k: int) -> str | None:
    """A recipe -> its descriptor for a weight with K columns and K-block ``weight_block_k``."""
    if act is None:
        return None
    if isinstance(act, str):
        if act == "int8":
            return "int8:0"
        if act == "fp8":
            return f"fp8:{weight_block_k if weight_block_k < k else 0}"
        if act.startswith(("int8:", "fp8:", "ref:")):
            return act
        raise ValueError(f"unknown activation quantization {act!r}; known: {SCHEMES} or a jquant ActQuant")
    kind = {"int8": "int8", "fp8_e4m3": "fp8"}.get(act.qtype.name)
    # Native kernels divide by qmax (vLLM's rule); other divisors (compressed-tensors' int8 127.5) go to the spec.
    same_divisor = kind is not None and scale_divisor(act.qtype.name, act.scale_rule) == _QMAX[kind]
    plain = act.dynamic and act.symmetric and act.scale_dtype is None and act.amax_ub is None and same_divisor
    if kind is not None and plain and act.granularity == "token":
        return f"{kind}:0"
    if kind is not None and plain and act.granularity == "group":
        return f"{kind}:{act.group_size}"
    arrays = {f: [np.asarray(a).dtype.str, np.asarray(a).tolist()] for f, a in act.arrays().items()}
    return "ref:" + json.dumps({"static": act.static_json(), "arrays": arrays}, sort_keys=True)


def native(desc: str | None) -> tuple[str, int] | None:
    """``(kind, group)`` of a kernel-native descriptor (group 0 = per token), else None."""
    if desc is None or desc.startswith("ref:"):
        return None
    kind, _, g = desc.partition(":")
    return kind, int(g)


@functools.lru_cache(maxsize=256)
def _decode(desc: str) -> ActQuant:
    d = json.loads(desc[4:])
    arrays = {f: np.asarray(v, dtype=np.dtype(dt)) for f, (dt, v) in d["arrays"].items()}
    return ActQuant.from_json(d["static"], arrays).validate()


def quantize(x: torch.Tensor, kind: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (codes [M, K] int8 / float8_e4m3fn, float32 scales [M, ceil(K / g)]); g = K if 0."""
    m, k = x.shape
    g = group or k
    n_units = -(-k // g)
    xf = x.float()
    if n_units * g != k:  # zero-pad the last unit (zeros do not change its max)
        xf = torch.nn.functional.pad(xf, (0, n_units * g - k))
    xu = xf.reshape(m, n_units, g)
    s = xu.abs().amax(-1, keepdim=True).clamp_min(_TINY) / _QMAX[kind]
    v = xu / s
    if kind == "int8":
        q = torch.round(v).clamp_(-127.0, 127.0).to(torch.int8)
    else:
        q = v.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q.reshape(m, n_units * g)[:, :k].contiguous(), s.reshape(m, n_units)


def fake_quant(x: torch.Tensor, desc: str) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float32 [M, K]: what a layer with this recipe multiplies."""
    nat = native(desc)
    if nat is None:
        out = fake_quantize(x.detach().float().cpu().numpy(), _decode(desc))
        return torch.from_numpy(out).to(x.device)
    kind, group = nat
    q, s = quantize(x, kind, group)
    return q.float() * s.repeat_interleave(group or x.shape[1], dim=1)[:, : x.shape[1]]
