"""The Triton kernels as `torch_bridge.backend` backends (GPU of any Triton vendor, or the CPU interpreter)."""

from __future__ import annotations

import math

import torch
import triton

from torch_bridge import act_quant as aq
from torch_bridge.backend import TorchBackend, register_backend
from torch_bridge.cpu import _spec
from torch_bridge.dequant import block_scale, codebook
from torch_bridge.triton.w8a8 import w8a8_matmul
from torch_bridge.triton.wxa16 import is_interpreter, wxa16_matmul

__all__ = ["TritonWxA16", "TritonW8A8"]

_ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _device_ok(device: torch.device) -> tuple[bool, str]:
    if device.type == "cpu":
        if is_interpreter():
            return True, ""
        return False, "Triton runs on the CPU only under TRITON_INTERPRET=1"
    if device.type == "meta":
        return False, "meta device"
    return True, ""  # cuda (NVIDIA and ROCm builds), xpu, ...: whatever Triton driver is active


def _fp8_dot_ok(device: torch.device) -> tuple[bool, str]:
    """fp8 tl.dot needs fp8 MMA: NVIDIA sm_89+, AMD gfx94x/gfx95x; the interpreter emulates it."""
    if device.type == "cpu":
        return True, ""
    try:
        target = triton.runtime.driver.active.get_current_target()
    except Exception as e:  # no usable driver: let the launch fail loudly instead of guessing
        return False, f"no active Triton driver ({type(e).__name__})"
    if target.backend == "cuda" and int(target.arch) < 89:
        return False, f"fp8 dot needs sm_89+, this is sm_{target.arch}"
    if target.backend == "hip" and not str(target.arch).startswith(("gfx94", "gfx95")):
        return False, f"fp8 dot needs gfx94x/gfx95x, this is {target.arch}"
    return True, ""


def _perm_tensors(w, device):
    return (["perm"], [w.perm.to(device).long()]) if w.perm is not None else ([], [])


class TritonWxA16(TorchBackend):
    """Weight-only kernel: every canonical qtype (int 1/2/4/8-bit, int8, fp8, codebooks), any block, zeros."""

    name = "torch_triton_wxa16"
    priority = 100

    def supports(self, w, device, dtype, act_quant=None):
        ok, why = _device_ok(device)
        if not ok:
            return False, why
        if act_quant is not None:
            return False, "weight-only kernel (activation quantization requested)"
        if dtype not in _ACT_DTYPES:
            return False, f"activations {dtype} are not fp16 / bf16 / fp32"
        return True, ""

    def prepare(self, w, device, dtype, act_quant):
        names = ["data", "scale"]
        tensors = [w.data.to(device).contiguous(), block_scale(w).to(device).contiguous()]
        if w.zero is not None:
            z = w.zero.to(device)
            names.append("zero")
            tensors.append((z.float() if z.dtype.is_floating_point else z).contiguous())
        if w.qtype.codebook is not None:
            names.append("lut")
            tensors.append(codebook(w.qtype, device))
        pn, pt = _perm_tensors(w, device)
        return _spec(self.name, w, names + pn), tensors + pt

    def run(self, x, tensors, spec):
        from torch_bridge.cpu import qtype_of

        t = dict(zip(spec.names, tensors))
        xp = x.index_select(-1, t["perm"]) if "perm" in t else x
        return wxa16_matmul(
            xp.contiguous(),
            t["data"],
            t["scale"],
            t.get("zero"),
            t.get("lut"),
            qtype_of(spec.qtype),
            spec.shape,
            spec.block,
        )


class TritonW8A8(TorchBackend):
    """W8A8 with dynamic activation quantization: fp8 e4m3 or int8 weights, fused scales."""

    priority = 100

    def __init__(self, scheme: str):
        self.scheme = scheme
        self.name = f"torch_triton_w8a8_{scheme}"

    def supports(self, w, device, dtype, act_quant=None):
        ok, why = _device_ok(device)
        if not ok:
            return False, why
        nat = aq.native(act_quant)
        if nat is None or nat[0] != self.scheme:
            return False, f"W8A8 {self.scheme} kernel: activation recipe {str(act_quant)[:80]!r}"
        if dtype not in _ACT_DTYPES:
            return False, f"activations {dtype} are not fp16 / bf16 / fp32"
        q = w.qtype
        if self.scheme == "fp8":
            if q.storage != "float8_e4m3fn":
                return False, f"qtype {q.name} is not fp8 e4m3"
            ok, why = _fp8_dot_ok(device)
            if not ok:
                return False, why
        elif not (q.kind == "int" and q.bits == 8 and (q.signed or q.bias == 128)):
            return False, f"qtype {q.name} is not int8 / uint8b128"
        if w.zero is not None:
            return False, "zero points are not supported by W8A8"
        kb = k_block(nat[1], w.block[1], w.k)
        if kb < w.k and kb % 32:
            return (
                False,
                f"K blocks of the scales (activations {nat[1] or w.k}, weights {w.block[1]}) share no multiple of 32",
            )
        return True, ""

    def prepare(self, w, device, dtype, act_quant):
        data = w.data.to(device)
        if w.qtype.kind == "int" and not w.qtype.signed:
            data = (data ^ 0x80).view(torch.int8)  # uint8b128 -> int8 value, lossless
        pn, pt = _perm_tensors(w, device)
        names = ["w", "w_scale"] + pn
        tensors = [data.contiguous(), block_scale(w).to(device).contiguous()] + pt
        return _spec(self.name, w, names, act_quant=act_quant), tensors

    def run(self, x, tensors, spec):
        t = dict(zip(spec.names, tensors))
        xp = x.index_select(-1, t["perm"]) if "perm" in t else x
        kind, group = aq.native(spec.act_quant)
        a, a_scale = aq.quantize(xp, kind, group)
        return w8a8_matmul(a, a_scale, group or spec.shape[1], t["w"], t["w_scale"], spec.block, x.dtype)


def k_block(act_group: int, weight_bk: int, k: int) -> int:
    """The K granularity both scales are constant over: K, or the gcd of the blocked ones."""
    blocks = [b for b in (act_group, weight_bk) if 0 < b < k]
    return math.gcd(*blocks) if blocks else k


register_backend(TritonWxA16())
register_backend(TritonW8A8("fp8"))
register_backend(TritonW8A8("int8"))
