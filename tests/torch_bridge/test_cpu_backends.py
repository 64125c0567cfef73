"""CPU backends (torch int4 / int8 pack kernels, dequantize + matmul) == the numpy spec; dispatcher rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import torch_bridge as tb
from jquant.core import qtypes as qt
from tests.torch_bridge.cases import Case, make_weight, make_x, reference, tolerance

F32, BF16 = "float32", "bfloat16"
INT4 = "torch_cpu_int4pack"
INT8 = "torch_cpu_int8pack"
DEQ = "torch_dequant_matmul"

CPU_CASES = [
    Case("int4_sym_g128", qt.uint4b8, 64, 256, (1, 128), 4, F32, impl=INT4),
    Case("int4_sym_g128_m7_takes_dequant", qt.uint4b8, 64, 256, (1, 128), 7, F32, impl=INT4),
    Case("int4_awq_intzero_g32", qt.uint4, 48, 128, (1, 32), 1, F32, zero="int", impl=INT4),
    Case(
        "int4_floatzero_g64_bf16", qt.uint4, 32, 256, (1, 64), 129, BF16, zero="float", scale_dtype="float16", impl=INT4
    ),  # fmt: skip
    Case("int4_per_channel_replicated", qt.uint4b8, 32, 512, (1, 512), 3, F32, impl=INT4),
    Case("int4_2d_block", qt.uint4, 48, 256, (16, 64), 5, F32, zero="int", impl=INT4),
    Case("int4_actorder", qt.uint4b8, 16, 128, (1, 32), 2, F32, perm=True, impl=INT4),
    Case("int8_per_channel", qt.int8, 33, 96, (1, 96), 7, F32, impl=INT8),
    Case("w8_uint8b128_per_tensor_bf16", qt.uint8b128, 17, 64, (17, 64), 129, BF16, impl=INT8),
    Case("deq_nf4_g64", qt.nf4, 33, 128, (1, 64), 7, F32, scale2=True, impl=DEQ),
    Case("deq_fp8_block", qt.fp8_e4m3, 130, 256, (128, 128), 1, BF16, impl=DEQ),
    Case("deq_w3_g32_perm", qt.int_type(3, bias=4), 20, 64, (1, 32), 3, F32, perm=True, impl=DEQ),
    Case("deq_w8a8_int8", qt.int8, 24, 64, (1, 64), 5, F32, impl=DEQ, act_quant="int8"),
]


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.name)
def test_cpu_backend_matches_spec(case):
    w = tb.to_torch(make_weight(case))
    x = make_x(case)
    xt = torch.from_numpy(x).to(getattr(torch, case.x_dtype))
    y = tb.qmatmul(xt, w, implementation=case.impl, act_quant=case.act_quant)
    assert y.dtype == xt.dtype and y.shape == (case.m, case.n)
    x_used = None
    if case.act_quant:
        from torch_bridge import act_quant as aq

        x_used = aq.fake_quant(xt, aq.resolve(case.act_quant, case.k, case.block[1])).numpy()
    ref = reference(case, x, x_used)
    # the CPU kernels compute in float32 whatever the activation dtype; only the output is rounded
    f32 = dataclasses.replace(case, x_dtype=F32)
    tol = tolerance(f32, x, ref) + (np.abs(ref) * 2.0**-8 if case.x_dtype == BF16 else 0)
    err = np.abs(y.float().numpy().astype(np.float64) - ref)
    assert (err <= tol).all(), f"max err {err.max():.3g}"


def test_int4pack_zero_fold_needs_float32():
    """The folded zero (8 - z) * s in bf16 (tinygemm's usual dtype) is measurably not the checkpoint's function."""
    case = next(c for c in CPU_CASES if c.name == "int4_awq_intzero_g32")
    w = tb.to_torch(make_weight(case))
    x = torch.from_numpy(make_x(case))
    ref = torch.from_numpy(reference(case, make_x(case)))
    y_ours = tb.qmatmul(x, w, implementation=INT4).double()
    spec, tensors = tb.BACKENDS[INT4].prepare(w, torch.device("cpu"), torch.float32, None)
    packed, sz = tensors[0], tensors[1]
    y_bf16 = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, 32, sz.bfloat16()).double()
    assert (y_ours - ref).abs().max() < 1e-4
    assert (y_bf16 - ref).abs().max() > 10 * (y_ours - ref).abs().max()


def _w(q, n, k, block, **kw):
    return tb.to_torch(make_weight(Case("x", q, n, k, block, 1, F32, **kw)))


@pytest.mark.parametrize(
    "name,w,reason",
    [
        (INT4, lambda: _w(qt.uint4b8, 40, 128, (1, 32)), "multiple of 16"),
        (INT4, lambda: _w(qt.uint4b8, 32, 128, (1, 16)), "no group size"),
        (INT4, lambda: _w(qt.nf4, 32, 128, (1, 32)), "the kernel reads uint4"),
        (INT8, lambda: _w(qt.uint8, 32, 128, (1, 128), zero="int"), "zero dtype uint8"),
        (INT8, lambda: _w(qt.uint8, 32, 128, (1, 128)), "not int8 or uint8b128"),
        (INT8, lambda: _w(qt.uint8b128, 32, 128, (1, 32)), "not per-channel"),
        ("torch_triton_wxa16", lambda: _w(qt.uint4b8, 32, 128, (1, 32)), "TRITON_INTERPRET"),
        ("torch_triton_w8a8_int8", lambda: _w(qt.int8, 32, 128, (1, 128)), "activation recipe none is not fused"),
    ],
)
def test_backends_decline_with_reason(name, w, reason):
    if name.startswith("torch_triton") and name not in tb.BACKENDS:
        pytest.skip("triton not installed")
    ok, why = tb.BACKENDS[name].supports(w(), torch.device("cpu"), torch.float32)
    assert not ok and reason in why
    with pytest.raises(ValueError, match=reason):
        tb.qmatmul(torch.zeros(1, w().shape[1]), w(), implementation=name)


def test_dispatch_order_and_env(monkeypatch):
    w4 = _w(qt.uint4b8, 32, 128, (1, 32))
    # jquant's C++ kernel takes decode sizes (M <= 32); torch's int4 kernel (M <= 4) adds nothing after it.
    assert tb.select(w4, "cpu", torch.bfloat16).backend.name == "torch_cpu_qmatmul"
    assert "torch_cpu_qmatmul (M 1..32), torch_dequant_matmul (M 1..)" in tb.explain(w4, "cpu", torch.float32)
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", "torch_cpu_qmatmul")  # below: the torch kernels' order
    assert tb.select(w4, "cpu", torch.bfloat16).backend.name == INT4
    assert tb.select(_w(qt.nf4, 32, 128, (1, 32)), "cpu", torch.float32).backend.name == DEQ
    assert tb.select(_w(qt.int8, 32, 128, (1, 128)), "cpu", torch.float32).backend.name == INT8
    assert tb.select(_w(qt.int8, 32, 128, (1, 128)), "cpu", torch.float32, act_quant="int8").backend.name == DEQ
    text = tb.explain(w4, "cpu", torch.float32)
    assert INT4 in text.splitlines()[0] and "TRITON_INTERPRET" in text
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", f"torch_cpu_qmatmul,{INT4}")
    assert tb.select(w4, "cpu", torch.float32).backend.name == DEQ
    monkeypatch.setenv("JQUANT_KERNELS", "pallas_triton_w4a16")  # a JAX-side name: not the torch side's business
    assert tb.select(w4, "cpu", torch.float32).backend.name == DEQ
    monkeypatch.setenv("JQUANT_KERNELS", f"pallas_triton_w4a16,{INT8}")
    with pytest.raises(ValueError, match="the kernel reads int8/uint8"):
        tb.select(w4, "cpu", torch.float32)


def test_scaled_mm_fp8_backend_arithmetic():
    """The CUDA-only ``torch._scaled_mm`` backend's prepare / run, exercised through CPU ``_scaled_mm``."""
    from torch_bridge import act_quant as aq

    case = Case("x", qt.fp8_e4m3, 64, 128, (1, 128), 40, BF16)
    w = tb.to_torch(make_weight(case))
    b = tb.BACKENDS["torch_scaled_mm_fp8"]
    ok, why = b.supports(w, torch.device("cpu"), torch.bfloat16, "fp8:0")
    assert not ok and "runs on cuda, not cpu" in why
    spec, tensors = b.prepare(w, torch.device("cpu"), torch.bfloat16, "fp8:0")
    x = torch.from_numpy(make_x(case)).bfloat16()
    y = b.run(x, tensors, spec)
    ref = reference(case, make_x(case), aq.fake_quant(x, "fp8:0").numpy())
    err = np.abs(y.float().numpy() - ref)
    assert y.dtype == torch.bfloat16 and (err <= 2.0**-7 * (np.abs(ref) + np.abs(ref).max() * 0.05)).all(), err.max()


@pytest.mark.parametrize("device", ["hpu", "mps", "meta"])
def test_devices_without_triton_take_the_reference(device):
    """Gaudi (hpu) and other devices have no Triton driver: the Triton backends decline there."""
    w = _w(qt.uint4b8, 32, 128, (1, 32))
    assert tb.select(w, torch.device(device), torch.bfloat16).backend.name == DEQ
    ok, why = tb.BACKENDS["torch_triton_wxa16"].supports(w, torch.device(device), torch.bfloat16)
    assert not ok and f"runs on cpu/cuda/xpu, not {device}" in why


def test_jquant_kernels_prints_the_torch_table(capsys):
    from jquant.cli import main

    assert main(["kernels", "--torch", "hpu"]) == 0
    out = capsys.readouterr().out
    assert "torch_dequant_matmul" in out and "torch_triton" not in out
