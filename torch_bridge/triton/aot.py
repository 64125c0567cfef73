"""Ahead-of-time compilation of the kernels for real GPU targets, on any machine (no GPU needed).

``triton.compile(ASTSource(...), target=GPUTarget(...))`` runs the whole backend pipeline (TTIR ->
TTGIR -> LLVM -> PTX/cubin or AMDGCN/hsaco) on the host, so CPU CI can check that every kernel
configuration the launchers can produce compiles for sm_90 and gfx942, which the interpreter
(permissive about layouts, dtypes and shared memory) cannot. Requires the kernels to have been
imported *without* ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from jquant.core.qtypes import QType
from torch_bridge.triton.configs import TileConfig
from torch_bridge.triton.w8a8 import w8a8_constexprs, w8a8_kernel
from torch_bridge.triton.wxa16 import (
    REDUCE_BLOCK,
    ZeroKind,
    dequant_kernel,
    kernel_constexprs,
    lut_is_f16,
    splitk_reduce_kernel,
    weight_constexprs,
    wxa16_kernel,
)

__all__ = ["TARGETS", "Wxa16Case", "DequantCase", "ReduceCase", "W8a8Case", "compile_case"]

TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}

_PTR = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.uint8: "*u8",
    torch.int8: "*i8",
}
_ZERO_PTR = {ZeroKind.NONE: "*fp32", ZeroKind.INT: "*u8", ZeroKind.FLOAT: "*fp32"}  # absent: the scale stands in


def _weight_ptrs(qtype: QType, zero: ZeroKind) -> list[str]:
    """`_dequant_tile`'s data / scale / zero / lut pointer types (fp8 codes travel as uint8 bits;
    codebooks exact in float16 as a float16 table, `lut_table`)."""
    lut = "*fp16" if qtype.codebook is not None and lut_is_f16(qtype) else "*fp32"
    return ["*i8" if qtype.signed else "*u8", "*fp32", _ZERO_PTR[zero], lut]


@dataclasses.dataclass(frozen=True)
class Wxa16Case:
    """One weight-only kernel specialization: qtype, scale block, K, zero kind, activation dtype, tiles."""

    qtype: QType
    block: tuple[int, int]
    k: int
    zero: ZeroKind
    x_dtype: torch.dtype
    config: TileConfig
    divisible: tuple[str, ...] = ()  # int arguments the JIT would see divisible by 16 (shape-dependent)

    def signature_and_constexprs(self) -> tuple[dict, dict]:
        consts = kernel_constexprs(self.qtype, self.block, self.k, self.zero, self.x_dtype, self.config, dot_f32=None)
        consts["DOT_F32"] = self.x_dtype == torch.float32  # what a GPU launch uses (not the interpreter's)
        consts.update(UNIT_STRIDES_WXA16)
        y_ptr = "*fp32" if self.config.split_k > 1 else _PTR[self.x_dtype]
        ptrs = [_PTR[self.x_dtype], *_weight_ptrs(self.qtype, self.zero), y_ptr]
        return _signature(wxa16_kernel, ptrs, consts), consts


@dataclasses.dataclass(frozen=True)
class DequantCase:
    """One `dequant_kernel` specialization (the prefill path): weight description, output dtype, tiles."""

    qtype: QType
    block: tuple[int, int]
    k: int
    zero: ZeroKind
    out_dtype: torch.dtype
    config: TileConfig
    divisible: tuple[str, ...] = ()  # as `Wxa16Case.divisible`

    def signature_and_constexprs(self) -> tuple[dict, dict]:
        consts = weight_constexprs(self.qtype, self.block, self.k, self.zero, self.config.block_k)
        consts.update(BLOCK_N=self.config.block_n, BLOCK_K=self.config.block_k, **UNIT_STRIDES_DEQUANT)
        ptrs = [*_weight_ptrs(self.qtype, self.zero), _PTR[self.out_dtype]]
        return _signature(dequant_kernel, ptrs, consts), consts


@dataclasses.dataclass(frozen=True)
class ReduceCase:
    """`splitk_reduce_kernel` (the split-K decode's second launch): splits and output dtype."""

    split_k: int
    out_dtype: torch.dtype
    config: TileConfig = TileConfig(num_warps=4, num_stages=1)

    def signature_and_constexprs(self) -> tuple[dict, dict]:
        consts = dict(SPLIT_K=self.split_k, BLOCK=REDUCE_BLOCK)
        return _signature(splitk_reduce_kernel, ["*fp32", _PTR[self.out_dtype]], consts), consts


@dataclasses.dataclass(frozen=True)
class W8a8Case:
    """One W8A8 kernel specialization."""

    is_int8: bool
    a_bk: int
    w_block: tuple[int, int]
    k: int
    out_dtype: torch.dtype
    config: TileConfig

    def signature_and_constexprs(self) -> tuple[dict, dict]:
        consts = w8a8_constexprs(self.a_bk, self.w_block, self.k, self.is_int8, self.config)
        code = "*i8" if self.is_int8 else "*u8"
        ptrs = [code, "*fp32", code, "*fp32", _PTR[self.out_dtype]]
        return _signature(w8a8_kernel, ptrs, consts), consts


# The launchers pass contiguous tensors, whose innermost strides the JIT specializes to the constant 1
# (Triton specializes int arguments equal to 1), which is what lets it vectorize the code loads.
UNIT_STRIDES_WXA16 = dict(stride_xk=1, stride_dk=1, stride_yn=1)
UNIT_STRIDES_DEQUANT = dict(stride_dk=1, stride_ok=1)


def _signature(kernel, ptr_types: list[str], consts: dict) -> dict:
    sig = {}
    ptrs = iter(ptr_types)
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = next(ptrs)
        else:
            sig[name] = "i32"
    return sig


def compile_case(case: Wxa16Case | DequantCase | ReduceCase | W8a8Case, target: GPUTarget):
    """Compiles one case for ``target``; returns the `triton.compiler.CompiledKernel`."""
    kernels = {Wxa16Case: wxa16_kernel, DequantCase: dequant_kernel, ReduceCase: splitk_reduce_kernel}
    kernel = {**kernels, W8a8Case: w8a8_kernel}[type(case)]
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1; AOT compilation needs JIT functions")
    sig, consts = case.signature_and_constexprs()
    # Fresh torch allocations are 16-byte aligned: the JIT's pointer divisibility specialization.
    # So are int arguments divisible by 16 (``divisible``: the shape's; the JIT checks the values).
    div = set(getattr(case, "divisible", ()))
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if sig[name].startswith("*") or (name in div and sig[name] == "i32")
    }
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(
        src, target=target, options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages}
    )
