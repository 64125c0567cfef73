"""The Triton kernels as `torch_bridge.backend` backends (GPU of any Triton vendor, or the CPU interpreter)."""

from __future__ import annotations

import math

import torch
import triton

from jquant.core.routing import Capabilities
from torch_bridge import act_quant as aq
from torch_bridge.backend import TorchBackend, register_backend
from torch_bridge.cpu import _spec
from torch_bridge.dequant import block_scale, codebook
from torch_bridge.triton.w8a8 import w8a8_matmul
from torch_bridge.triton.wxa16 import is_interpreter, wxa16_matmul

__all__ = ["TritonWxA16", "TritonW8A8"]

_ACT_DTYPES = frozenset({"float16", "bfloat16", "float32"})
# Wherever a Triton driver runs: NVIDIA and ROCm ("cuda"), Intel ("xpu"); the CPU under the interpreter.
_PLATFORMS = frozenset({"cuda", "xpu", "cpu"})


def _unavailable(call) -> str:
    if call.device.platform == "cpu" and not is_interpreter():
        return "Triton runs on the CPU only under TRITON_INTERPRET=1"
    return ""


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
    caps = Capabilities(
        platforms=_PLATFORMS, zeros=None, scale_dtypes=None, scale2=True, row_blocks=None, act_dtypes=_ACT_DTYPES
    )

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

    def __init__(self, scheme: str):
        self.scheme = scheme
        self.name = f"torch_triton_w8a8_{scheme}"
        self.caps = Capabilities(
            platforms=_PLATFORMS,
            codes=frozenset({"fp8_e4m3"} if scheme == "fp8" else {"int8", "uint8"}),
            zeros=frozenset({"none"}),
            scale_dtypes=None,
            scale2=True,
            row_blocks=None,
            act_dtypes=_ACT_DTYPES,
            act=frozenset({f"{scheme}:token", f"{scheme}:group*"}),
        )

    def why_not_more(self, call):
        q = call.qtype
        if self.scheme == "int8" and not (q.signed or q.bias == 128):
            return f"qtype {q.name} is not int8 / uint8b128"
        group = int(call.act.partition(":group")[2] or 0) if ":group" in call.act else 0
        kb = k_block(group, call.block[1], call.k)
        if kb < call.k and kb % 32:
            return f"K blocks of the scales (activations {group or call.k}, weights {call.block[1]}) share no multiple of 32"
        return ""

    def unavailable(self, call):
        if self.scheme == "fp8" and call.device.platform != "cpu":
            ok, why = _fp8_dot_ok(torch.device(call.device.platform))
            if not ok:
                return why
        return _unavailable(call)

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
