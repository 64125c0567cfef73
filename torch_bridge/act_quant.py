"""Dynamic activation quantization for W8A8 matmuls (the ``act`` of ``act(x) @ W.T``).

Schemes (symmetric, scales computed from the activations at run time, float32):

* ``"int8"``: per token: ``s = max|x| / 127``, ``q = round_half_even(x / s)`` clamped to [-127, 127]
  (vLLM ``scaled_int8_quant`` / compressed-tensors dynamic per-token int8).
* ``"fp8"``: fp8 e4m3 per token, or per (token, K-group) when the weight scales are blocked along K
  (DeepSeek-V3 style 1x128 activation groups against 128x128 weight blocks):
  ``s = max|x| / 448``, ``q = fp8_e4m3(x / s)`` (round to nearest even, saturating).

Done with plain torch ops on any device: exact (torch's fp32 -> fp8 / int8 conversions are IEEE
round-to-nearest-even), device-agnostic, fused by ``torch.compile``. (The Triton interpreter's
in-kernel fp32 -> fp8 cast is wrong, see notes/environment.md section 3, so no test could trust an
in-kernel version on CPU.) ``fake_quant`` returns ``q * s``: the activations every backend, the
dequantize + matmul reference included, multiplies when a W8A8 call is asked for.
"""

from __future__ import annotations

import torch

__all__ = ["SCHEMES", "act_group", "quantize", "fake_quant"]

SCHEMES = ("int8", "fp8")
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
INT8_MAX = 127.0
_TINY = 1e-12  # an all-zero row gets scale 1e-12 / qmax instead of 0 (no 0/0)


def act_group(scheme: str, k: int, weight_block_k: int) -> int:
    """Activation columns per scale: K, except fp8 against K-blocked weight scales (their bk)."""
    if scheme == "fp8" and weight_block_k < k:
        return weight_block_k
    return k


def quantize(x: torch.Tensor, scheme: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (codes [M, K] int8 / float8_e4m3fn, scales [M, ceil(K / group)] float32)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown activation quantization {scheme!r}; known: {SCHEMES}")
    m, k = x.shape
    g = -(-k // group)
    xf = x.float()
    if g * group != k:  # pad the last group with zeros (they do not change the max)
        xf = torch.nn.functional.pad(xf, (0, g * group - k))
    xg = xf.reshape(m, g, group)
    qmax = INT8_MAX if scheme == "int8" else FP8_MAX
    s = xg.abs().amax(-1, keepdim=True).clamp_min(_TINY) / qmax
    v = xg / s
    if scheme == "int8":
        q = torch.round(v).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    else:
        q = v.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.reshape(m, g * group)[:, :k].contiguous(), s.reshape(m, g)


def fake_quant(x: torch.Tensor, scheme: str, group: int) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float32: what a W8A8 kernel multiplies."""
    q, s = quantize(x, scheme, group)
    return q.float() * s.repeat_interleave(group, dim=1)[:, : x.shape[1]]
