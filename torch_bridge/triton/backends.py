"""The Triton kernels as `torch_bridge.backend` backends (GPU of any Triton vendor, or the CPU interpreter)."""

from __future__ import annotations

import dataclasses

import torch
import triton

from jquant.core.routing import Capabilities
from torch_bridge import act_quant as aq
from torch_bridge.backend import TorchBackend, register_backend
from torch_bridge.cpu import _spec, perm_tensors, qtype_of
from torch_bridge.dequant import block_scale
from torch_bridge.triton.configs import PREFILL_DEQUANT_M
from torch_bridge.triton.w8a8 import k_block, w8a8_matmul
from torch_bridge.triton.wxa16 import dequantize_weight, is_interpreter, lut_table, wxa16_matmul

__all__ = ["TritonWxA16", "TritonDequantDot", "TritonW8A8"]

_ACT_DTYPES = frozenset({"float16", "bfloat16", "float32"})
# Wherever a Triton driver runs: NVIDIA and ROCm ("cuda"), Intel ("xpu"); the CPU under the interpreter.
_PLATFORMS = frozenset({"cuda", "xpu", "cpu"})


def _unavailable(call) -> str:
    if call.device.platform == "cpu" and not is_interpreter():
        return "Triton runs on the CPU only under TRITON_INTERPRET=1"
    return ""


def _no_fp8_dot() -> str:
    """Why this GPU has no fp8 tl.dot ("" if it has): fp8 MMA is NVIDIA sm_89+, AMD gfx94x/gfx95x."""
    try:
        target = triton.runtime.driver.active.get_current_target()
    except Exception as e:  # no usable driver: let the launch fail loudly instead of guessing
        return f"no active Triton driver ({type(e).__name__})"
    if target.backend == "cuda" and int(target.arch) < 89:
        return f"fp8 dot needs sm_89+, this is sm_{target.arch}"
    if target.backend == "hip" and not str(target.arch).startswith(("gfx94", "gfx95")):
        return f"fp8 dot needs gfx94x/gfx95x, this is {target.arch}"
    return ""


class TritonWxA16(TorchBackend):
    """Weight-only kernel: every canonical qtype (int 1/2/4/8-bit, int8, fp8, codebooks), any block, zeros."""

    name = "torch_triton_wxa16"
    caps = Capabilities.any_weight(_PLATFORMS, act_dtypes=_ACT_DTYPES, m_max=PREFILL_DEQUANT_M - 1)

    def unavailable(self, call):
        return _unavailable(call)

    def prepare(self, w, device, dtype, act_quant):
        names = ["data", "scale"]
        tensors = [w.data.to(device).contiguous(), block_scale(w).to(device).contiguous()]
        if w.zero is not None:
            z = w.zero.to(device)
            names.append("zero")
            tensors.append((z.float() if z.dtype.is_floating_point else z).contiguous())
        if w.qtype.codebook is not None:
            names.append("lut")
            tensors.append(lut_table(w.qtype, device))
        pn, pt = perm_tensors(w, device)
        return _spec(self.name, w, names + pn), tensors + pt

    @staticmethod
    def operands(x, tensors, spec):
        """``(x[:, perm], (data, scale, zero, lut, qtype, shape, block))`` from the prepared tensors."""
        t = dict(zip(spec.names, tensors))
        xp = x.index_select(-1, t["perm"]) if "perm" in t else x
        return xp, (t["data"], t["scale"], t.get("zero"), t.get("lut"), qtype_of(spec.qtype), spec.shape, spec.block)

    def run(self, x, tensors, spec):
        xp, w = self.operands(x, tensors, spec)
        return wxa16_matmul(xp.contiguous(), *w)


class TritonDequantDot(TritonWxA16):
    """Two-stage, from `PREFILL_DEQUANT_M` rows on: `dequant_kernel` writes the weight once in the
    activation dtype (the same tile code, one pass over the codes), then the vendor GEMM. The Torch
    twin of ``xla_dequant_dot``; the fused kernel's tensors, a transient [N, K] per call."""

    name = "torch_triton_dequant_dot"
    caps = dataclasses.replace(TritonWxA16.caps, m_min=PREFILL_DEQUANT_M, m_max=None)

    def run(self, x, tensors, spec):
        xp, w = self.operands(x, tensors, spec)
        return torch.nn.functional.linear(xp, dequantize_weight(*w, x.dtype))


class TritonW8A8(TorchBackend):
    """W8A8 with dynamic activation quantization: fp8 e4m3 or int8 weights, fused scales."""

    def __init__(self, scheme: str):
        self.scheme = scheme
        self.name = f"torch_triton_w8a8_{scheme}"
        self.caps = Capabilities.any_weight(
            _PLATFORMS,
            codes=frozenset({"fp8_e4m3"} if scheme == "fp8" else {"int8", "uint8"}),
            zeros=frozenset({"none"}),
            act_dtypes=_ACT_DTYPES,
            act=frozenset({f"{scheme}:token", f"{scheme}:group*"}),
        )

    def why_not_more(self, call):
        q = call.qtype
        if self.scheme == "int8" and not (q.signed or q.bias == 128):
            return f"qtype {q.name} is not int8 / uint8b128"
        group = int(call.act.partition(":group")[2] or 0)  # 0: per token
        kb = k_block(group, call.block[1], call.k)
        if kb < call.k and kb % 32:
            return f"K blocks of the scales (activations {group or call.k}, weights {call.block[1]}) share no multiple of 32"
        return ""

    def unavailable(self, call):
        fp8_gpu = self.scheme == "fp8" and call.device.platform != "cpu"  # the interpreter emulates fp8 dots
        return (fp8_gpu and _no_fp8_dot()) or _unavailable(call)

    def prepare(self, w, device, dtype, act_quant):
        data = w.data.to(device)
        if w.qtype.kind == "int" and not w.qtype.signed:
            data = (data ^ 0x80).view(torch.int8)  # uint8b128 -> int8 value, lossless
        pn, pt = perm_tensors(w, device)
        names = ["w", "w_scale"] + pn
        tensors = [data.contiguous(), block_scale(w).to(device).contiguous()] + pt
        return _spec(self.name, w, names, act_quant=act_quant), tensors

    def run(self, x, tensors, spec):
        t = dict(zip(spec.names, tensors))
        xp = x.index_select(-1, t["perm"]) if "perm" in t else x
        kind, group = aq.native(spec.act_quant)
        a, a_scale = aq.quantize(xp, kind, group)
        return w8a8_matmul(a, a_scale, group or spec.shape[1], t["w"], t["w_scale"], spec.block, x.dtype)


register_backend(TritonWxA16())
register_backend(TritonDequantDot())
register_backend(TritonW8A8("fp8"))
register_backend(TritonW8A8("int8"))
