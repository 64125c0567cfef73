"""Backends that need no Triton: torch's own CPU int4 / int8 kernels, and dequantize + matmul.

* ``torch_cpu_int4pack``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (tinygemm's CPU twin).
  Its weight is ``w = (q - 8) * s + zf`` with q the unsigned 4-bit code and a *float* zero ``zf``
  per group (aten/src/ATen/native/cpu/int4mm_kernel.cpp; torchao ``groupwise_affine_dequantize``
  with ``ZeroPointDomain.FLOAT``), scales and zeros in one [K / G, N, 2] tensor, G in
  {32, 64, 128, 256}, N a multiple of 16. Every canonical 4-bit integer layout maps onto it:
  with ``v = q - bias``, ``(v - z) * s = (q - 8) * s + (8 - bias - z) * s`` and
  ``v * s - z = (q - 8) * s + ((8 - bias) * s - z)``. The zero is folded in float32, and the kernel
  is run on float32 activations and scales: in bf16 the folded zero ``(8 - z) * s`` would be
  rounded to 8 mantissa bits, an error of up to ~3% of a quantization step per group (measured
  0.07 abs on logits of 27), which is not the checkpoint's function. The float32 fold differs from
  the spec's ``(q - z) * s`` by float32 rounding only. Per-channel / 2-D block scales are
  replicated to the largest allowed G dividing the block (lossless).
* ``torch_cpu_int8pack``: ``torch.ops.aten._weight_int8pack_mm`` (``x @ w.T * s[n]``, int8 w,
  per-channel s): int8 codes or ``uint8b128`` (GPTQ 8-bit symmetric, ``code ^ 0x80`` is the int8
  value), per-channel or per-tensor scales, no zero point. Also run in float32.
* ``torch_cpu_qmatmul``: jquant's own C++ CPU kernel (`kernels_cpu`, the one the JAX side routes
  as ``cpu_qmatmul``), built without its XLA handler (``ffi=False``: no JAX) and called through
  ctypes on the canonical tensors as stored (4-bit / 8-bit integer codes and 4-bit codebooks with
  per-row groups: GGUF Q4_0 / Q4_1 / Q5 / Q6 / Q8_0 / K-quants / IQ4, GPTQ, AWQ, NF4, ...): codes are
  read and scaled in registers, nothing is dequantized per call. f32 activations and accumulation
  (bf16 / f16 inputs are widened), the same function as the JAX path (f32 rounding only). Up to
  ``MAX_M`` = 32 rows (its declared M range); longer inputs (prefill) go to the next backend of the
  layer's plan (`torch_bridge.backend.plan`): torch's int8 pack kernel for 8-bit per-channel codes,
  else dequantize + matmul (torch's int4 kernel declares M <= 4, already covered here).
* ``torch_dequant_matmul``: the reference on any device: `torch_bridge.dequant` (bit-exact twin of
  the numpy spec) then a float32 matmul. Supports everything; tried last.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json

import torch

from jquant.core.qarray import ARRAY_FIELDS, QArray
from jquant.core.qtypes import QType
from jquant.core.routing import ANY, Capabilities
from kernels_cpu.caps import CAPS as KERNEL_CAPS
from kernels_cpu.caps import code_table as kernel_code_table
from kernels_cpu.caps import more_reasons as kernel_more_reasons
from torch_bridge import act_quant as aq
from torch_bridge.backend import KernelSpec, TorchBackend, register_backend
from torch_bridge.dequant import block_scale, dequantize_permuted, unpack_codes

__all__ = ["DequantMatmul", "CpuKernel", "CpuInt4Pack", "CpuInt8Pack", "qtype_of", "canonical_from"]

TINYGEMM_GROUPS = (256, 128, 64, 32)  # allowed qGroupSize of _weight_int4pack_mm_for_cpu, largest first


@functools.lru_cache(maxsize=256)
def qtype_of(spec_qtype: str) -> QType:
    return QType.from_json(json.loads(spec_qtype))


def _spec(backend: str, w: QArray, names, act_quant=None, **extra) -> KernelSpec:
    return KernelSpec(
        backend=backend,
        names=tuple(names),
        qtype=json.dumps(w.qtype.to_json(), sort_keys=True),
        shape=tuple(w.shape),
        block=tuple(w.block),
        act_quant=act_quant,
        extra=tuple(sorted(extra.items())),
    )


def perm_tensors(w: QArray, device) -> tuple[list[str], list[torch.Tensor]]:
    """``(["perm"], [perm as int64 on device])`` for an act-order weight, else two empty lists."""
    return (["perm"], [w.perm.to(device).long()]) if w.perm is not None else ([], [])


def canonical_from(tensors: list[torch.Tensor], spec: KernelSpec) -> QArray:
    """Rebuilds the canonical `QArray` from the tensors passed under the canonical field names."""
    fields = {n: t for n, t in zip(spec.names, tensors) if n in ARRAY_FIELDS}
    return QArray(**fields, qtype=qtype_of(spec.qtype), shape=spec.shape, block=spec.block)


def canonical_tensors(w: QArray, device) -> tuple[list[str], list[torch.Tensor]]:
    """The canonical leaves on ``device`` (no copy when already there) under their field names."""
    names = [f for f in ARRAY_FIELDS if getattr(w, f) is not None]
    return names, [getattr(w, f).to(device) for f in names]


def dequant_matmul(x: torch.Tensor, tensors: list[torch.Tensor], spec: KernelSpec) -> torch.Tensor:
    """``act(x[:, perm]) @ dequantize_permuted(w).T`` in float32, cast to ``x.dtype``."""
    w = canonical_from(tensors, spec)
    xa = x if w.perm is None else x.index_select(-1, w.perm.long())
    if spec.act_quant is not None:  # W8A8: the activation fake-quantization (float32)
        xa = aq.fake_quant(xa, spec.act_quant)
    return (xa.float() @ dequantize_permuted(w).T).to(x.dtype)


class DequantMatmul(TorchBackend):
    """``act(x[:, perm]) @ dequantize_permuted(w).T`` in float32; every qtype, every device."""

    name = "torch_dequant_matmul"
    caps = Capabilities.any_weight(ANY, act_dtypes=ANY, act=ANY)

    def prepare(self, w, device, dtype, act_quant):
        names, tensors = canonical_tensors(w, device)
        return _spec(self.name, w, names, act_quant), tensors

    def run(self, x, tensors, spec):
        return dequant_matmul(x, tensors, spec)


def _scale_columns(a: torch.Tensor, w: QArray, group: int) -> torch.Tensor:
    """A per-block array [ceil(N/bn), ceil(K/bk)] -> per (row, G-group) [N, K / G]."""
    bn, bk = w.block
    n, k = w.shape
    rows = a.repeat_interleave(bn, dim=0)[:n]
    cols = torch.arange(k // group, device=a.device) * group // bk
    return rows[:, cols]


def _int4_group(k: int, bk: int) -> int | None:
    """The largest tinygemm group dividing K and the scale block's K extent ``bk``."""
    bk = min(bk, k)
    return next((g for g in TINYGEMM_GROUPS if k % g == 0 and bk % g == 0), None)


class CpuInt4Pack(TorchBackend):
    """4-bit integer codes on CPU through ``_weight_int4pack_mm_for_cpu`` (see the module docstring).

    The float32 flavour of that kernel is a decode kernel: measured on this project's 2-core CPU
    box (torch 2.13), 4096x4096 g128 at M = 1 it beats dequantize + matmul 3.5x (103 vs 366 ms),
    at M = 40 it loses 6x (2.7 s vs 0.43 s; its bf16 flavour takes 38 ms but is not the
    checkpoint's function, see above). So it declares M <= `MAX_M`: a layer's plan hands larger M
    to the next backend (``torch_dequant_matmul``), and behind jquant's own CPU kernel (M <= 32) it is
    not in the plan at all, so its packed copy (0.75 bytes a weight: int4 tiles and f32 scale/zero
    pairs) is never made. Forced by name it still runs any M, larger ones by dequantize + matmul
    from the canonical tensors, which the prepared list shares with the layer (no extra copy).
    """

    MAX_M = 4

    name = "torch_cpu_int4pack"
    caps = Capabilities(
        platforms=frozenset({"cpu"}), codes=frozenset({"uint4"}), zeros=None, scale_dtypes=None, row_blocks=None,
        act_dtypes=None, m_max=MAX_M,
    )  # fmt: skip

    def why_not_more(self, call):
        if call.n % 16:
            return f"N={call.n} is not a multiple of 16"
        if _int4_group(call.k, call.block[1]) is None:
            return f"no group size in {TINYGEMM_GROUPS} divides K={call.k} and the scale block {call.block[1]}"
        return ""

    def unavailable(self, call):
        return (
            ""
            if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
            else "this torch has no _weight_int4pack_mm_for_cpu"
        )

    def prepare(self, w, device, dtype, act_quant):
        g = _int4_group(w.k, w.block[1])
        codes = unpack_codes(w.data.to(device), 4).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 8)
        s = _scale_columns(block_scale(w).to(device), w, g)  # [N, K/G] f32
        base = float(8 - w.qtype.bias)
        if w.zero is None:
            zf = base * s
        elif not w.zero.dtype.is_floating_point:
            zf = (base - _scale_columns(w.zero.to(device).float(), w, g)) * s
        else:
            zf = base * s - _scale_columns(w.zero.to(device).float(), w, g)
        sz = torch.stack([s.T, zf.T], dim=-1).contiguous()  # [K/G, N, 2] f32
        cnames, ctensors = canonical_tensors(w, device)
        names = ["packed", "scales_and_zeros", "perm_long"] + cnames
        perm = w.perm.to(device).long() if w.perm is not None else torch.empty(0, dtype=torch.long)
        return _spec(self.name, w, names, group=g), [packed, sz, perm] + ctensors

    def run(self, x, tensors, spec):
        if x.shape[0] > self.MAX_M:
            return dequant_matmul(x, tensors, spec)
        packed, sz, perm = tensors[0], tensors[1], tensors[2]
        xa = x.index_select(-1, perm) if perm.numel() else x
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xa.float().contiguous(), packed, spec.get("group"), sz)
        return y.to(x.dtype)


class CpuInt8Pack(TorchBackend):
    """8-bit integer codes with per-channel / per-tensor scales on CPU through ``_weight_int8pack_mm``."""

    name = "torch_cpu_int8pack"
    caps = Capabilities(
        platforms=frozenset({"cpu"}), codes=frozenset({"int8", "uint8"}), zeros=frozenset({"none"}),
        scale_dtypes=None, row_blocks=None, channel_only=True, act_dtypes=None,
    )  # fmt: skip

    def why_not_more(self, call):
        q = call.qtype
        return "" if q.signed or q.bias == 128 else f"qtype {q.name} is not int8 or uint8b128"

    def prepare(self, w, device, dtype, act_quant):
        data = w.data.to(device)
        wi8 = data if w.qtype.signed else (data ^ 0x80).view(torch.int8)  # uint8b128: code - 128
        s = block_scale(w).to(device).repeat_interleave(w.block[0], dim=0)[: w.n, 0].contiguous()
        pn, pt = perm_tensors(w, device)
        return _spec(self.name, w, ["w_int8", "scale"] + pn), [wi8.contiguous(), s] + pt

    def run(self, x, tensors, spec):
        xa = x.index_select(-1, tensors[2]) if len(tensors) > 2 else x
        return torch.ops.aten._weight_int8pack_mm(xa.float().contiguous(), tensors[0], tensors[1]).to(x.dtype)


_DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.uint8: 3}  # the kernel's dtype codes


@functools.cache
def _cpu_library() -> ctypes.CDLL:
    """kernels_cpu's library without the XLA handler, built on first use (raises BuildError)."""
    from kernels_cpu.build import load_library

    return load_library(ffi=False)


class CpuKernel(TorchBackend):
    """jquant's C++ CPU qmatmul (`kernels_cpu`) through ctypes; see the module docstring.

    ``prepare`` keeps the canonical tensors (contiguous, on the CPU) plus the 16-entry f32 code table;
    ``run`` calls ``jquant_cpu_qmatmul_raw`` on their data pointers (threads: ``JQUANT_CPU_THREADS``,
    default all cores, the kernel's own pool). Measured in bench/results/cpu/decode.md.
    """

    MAX_M = 32

    name = "torch_cpu_qmatmul"
    # Decode sizes only: from M = 33 a layer's plan hands the call to the next backend in `ROUTES`
    # (torch's int8 pack kernel, else one dequantization and the BLAS GEMM).
    caps = dataclasses.replace(KERNEL_CAPS, m_max=MAX_M, act_dtypes=None)

    why_not_more = staticmethod(kernel_more_reasons)

    def unavailable(self, call):
        from kernels_cpu.build import BuildError

        try:
            _cpu_library()
        except BuildError as e:
            return f"CPU kernel library unavailable: {str(e).splitlines()[0]}"
        return ""

    def prepare(self, w, device, dtype, act_quant):
        q = w.qtype
        cnames, ctensors = canonical_tensors(w, device)
        ctensors = [t.contiguous() for t in ctensors]
        table = torch.from_numpy(kernel_code_table(q))
        bias = 0 if q.signed or q.container_bits == 4 else q.bias
        return _spec(self.name, w, ["table"] + cnames, bits=q.container_bits, bias=bias), [table] + ctensors

    def run(self, x, tensors, spec):
        return self.bind(tensors, spec)(x)

    def bind(self, tensors, spec):
        """The kernel call with the layer's pointers and static arguments resolved once.

        A decode token makes ~200 of these calls on a small model, each ~20-80 us of kernel: the spec
        lookup, five ``data_ptr`` reads and dtype casts per call (what `run` still does, through the
        custom op) were a visible share of it. The closure holds ``tensors``, so the pointers stay
        valid while it lives.
        """
        i_data, i_scale, i_zero, i_perm, static = _kernel_args(spec)
        data, scale = tensors[i_data], tensors[i_scale]
        zero = tensors[i_zero] if i_zero >= 0 else None
        perm = tensors[i_perm].long() if i_perm >= 0 else None
        n, k = spec.shape
        fn = _cpu_library().jquant_cpu_qmatmul_raw
        w_args = (
            data.data_ptr(), int(data.dtype == torch.int8), scale.data_ptr(), _DT[scale.dtype],
            None if zero is None else zero.data_ptr(), 4 if zero is None else _DT[zero.dtype],
            tensors[0].data_ptr(), *static,
        )  # fmt: skip
        f32 = torch.float32

        def call(x: torch.Tensor, _keep=tuple(tensors)) -> torch.Tensor:
            xa = x if perm is None else x.index_select(-1, perm)
            if xa.dtype != f32 or not xa.is_contiguous():
                xa = xa.float().contiguous()
            m = xa.shape[0]
            y = torch.empty((m, n), dtype=f32)
            rc = fn(xa.data_ptr(), y.data_ptr(), m, n, k, *w_args)
            if rc != 0:  # unreachable after `supports`: the declarations and the kernel's checks disagree
                raise ValueError(f"torch_cpu_qmatmul: the kernel refused {spec.shape} {spec.block} (code {rc})")
            return y if x.dtype == f32 else y.to(x.dtype)

        return call


@functools.lru_cache(maxsize=1024)
def _kernel_args(spec: KernelSpec) -> tuple[int, int, int, int, tuple[int, int, int]]:
    """Per layer spec, once: where data / scale / zero / perm sit in the tensor list (-1: absent) and
    the kernel's static arguments (bits, group, bias); a decode call runs ~200 times per token."""
    pos = {n: i for i, n in enumerate(spec.names)}
    static = (spec.get("bits"), min(spec.block[1], spec.shape[1]), spec.get("bias"))
    return pos["data"], pos["scale"], pos.get("zero", -1), pos.get("perm", -1), static


register_backend(DequantMatmul())
register_backend(CpuKernel())
register_backend(CpuInt4Pack())
register_backend(CpuInt8Pack())
