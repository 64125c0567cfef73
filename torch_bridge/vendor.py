"""Vendor GEMMs as backends, where torch ships one that computes the checkpoint's function.

* ``torch_scaled_mm_fp8``: FP8 W8A8 (e4m3 weights with per-channel / per-tensor scales, dynamic
  per-token e4m3 activations) through ``torch._scaled_mm`` with row-wise scales (cuBLASLt /
  CUTLASS on sm_89+), after the same torch activation quantization as the Triton W8A8 kernel
  (`torch_bridge.act_quant.quantize`). Measured on H200 (bench/results/nvidia_h200, column
  ``scaled_mm+q``): 1.1-1.5x faster than the Triton fp8 kernel at M = 32..4096, so it ranks above
  it. Row-wise scaling needs bf16 output, K and N multiples of 16; rows below `MIN_M` (not
  measured) take the Triton kernel when it is there, else the reference arithmetic.
"""

from __future__ import annotations

import torch

from jquant.core.routing import Capabilities
from torch_bridge import act_quant as aq
from torch_bridge.backend import TorchBackend, register_backend
from torch_bridge.cpu import _spec, perm_tensors
from torch_bridge.dequant import block_scale

__all__ = ["ScaledMMFp8"]


class ScaledMMFp8(TorchBackend):
    """``fake_quant_fp8(x) @ W.T`` via ``torch._scaled_mm`` (row-wise scales, bf16 out)."""

    name = "torch_scaled_mm_fp8"
    MIN_M = 32
    caps = Capabilities.any_weight(
        frozenset({"cuda"}),
        cc_min=(8, 9),
        codes=frozenset({"fp8_e4m3"}),
        zeros=frozenset({"none"}),
        channel_only=True,
        k_multiple=16,
        act_dtypes=frozenset({"bfloat16"}),  # row-wise scaled_mm writes bf16 only
        act=frozenset({"fp8:token"}),
    )

    def why_not_more(self, call):
        return f"N={call.n} is not a multiple of 16" if call.n % 16 else ""

    def unavailable(self, call):
        return "" if hasattr(torch, "_scaled_mm") else "this torch has no _scaled_mm"

    def prepare(self, w, device, dtype, act_quant):
        s = block_scale(w).to(device).repeat_interleave(w.block[0], dim=0)[: w.n, 0]  # [N] f32
        pn, pt = perm_tensors(w, device)
        tensors = [w.data.to(device).t(), s.reshape(1, w.n).contiguous()]  # [K, N] column-major view
        return _spec(self.name, w, ["w_t", "scale_b"] + pn, act_quant=act_quant), tensors + pt

    def run(self, x, tensors, spec):
        w_t, scale_b = tensors[0], tensors[1]
        xp = x.index_select(-1, tensors[2]) if len(tensors) > 2 else x
        if xp.shape[0] < self.MIN_M:
            return self._small(xp, w_t, scale_b, x.dtype)
        q, s = aq.quantize(xp, "fp8", 0)
        return torch._scaled_mm(q, w_t, scale_a=s, scale_b=scale_b, out_dtype=x.dtype)

    @staticmethod
    def _small(xp, w_t, scale_b, dtype):
        try:
            from torch_bridge.triton.w8a8 import w8a8_matmul
        except ImportError:  # no Triton: the reference arithmetic
            xq = aq.fake_quant(xp, "fp8:0")
            return (xq @ (w_t.float() * scale_b)).to(dtype)
        q, s = aq.quantize(xp, "fp8", 0)
        n = w_t.shape[1]
        return w8a8_matmul(q, s, xp.shape[1], w_t.t(), scale_b.reshape(n, 1), (1, xp.shape[1]), dtype)


register_backend(ScaledMMFp8())
