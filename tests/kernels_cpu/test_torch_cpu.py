"""The Torch bridge's ``torch_cpu_qmatmul`` (kernels_cpu's C++ kernel through ctypes, no JAX) against the
numpy spec, on every weight kind the kernel reads, decode and prefill row counts, f32 and bf16 inputs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_bridge as tb  # noqa: E402
from jquant.core import qtypes as qt  # noqa: E402
from kernels_cpu import build  # noqa: E402
from tests.torch_bridge.cases import Case, make_weight, make_x, reference, tolerance  # noqa: E402

NAME = "torch_cpu_qmatmul"
F32, BF16 = "float32", "bfloat16"
ROOT = Path(__file__).resolve().parents[2]

CASES = [
    Case("q4_1_floatzero_g32_m1", qt.uint4, 33, 128, (1, 32), 1, F32, zero="float", scale_dtype="float16"),
    Case("q4_0_g32_m2", qt.uint4b8, 64, 96, (1, 32), 2, F32, scale_dtype="float16"),
    Case("gptq_g128_perm_m7", qt.uint4b8, 40, 256, (1, 128), 7, F32, perm=True),
    Case("awq_intzero_g64_bf16", qt.uint4, 24, 128, (1, 64), 3, BF16, zero="int", scale_dtype="bfloat16"),
    Case("nf4_g64_m16", qt.nf4, 17, 128, (1, 64), 16, F32),
    Case("iq4nl_g32", qt.iq4nl, 32, 64, (1, 32), 1, F32, scale_dtype="float16"),
    Case("q8_0_int8_g32", qt.int8, 33, 96, (1, 32), 1, F32, scale_dtype="float16"),
    Case("q6_uint8b32_g16", qt.int_type(8, bias=32), 20, 64, (1, 16), 5, F32),
    Case("w8_per_channel_m32", qt.uint8b128, 24, 64, (1, 64), 32, F32),
    Case("prefill_m33_takes_dequant", qt.uint4, 24, 64, (1, 32), 33, F32, zero="float"),
]


@pytest.fixture(scope="module")
def lib():
    try:
        return build.load_library(ffi=False)
    except build.BuildError as e:
        pytest.skip(f"kernels_cpu library unavailable: {e}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_spec(lib, case):
    w = tb.to_torch(make_weight(case))
    assert tb.BACKENDS[NAME].supports(w, "cpu", getattr(torch, case.x_dtype))[0]
    x = make_x(case)
    xt = torch.from_numpy(x).to(getattr(torch, case.x_dtype))
    y = tb.qmatmul(xt, w, implementation=NAME)
    assert y.dtype == xt.dtype and y.shape == (case.m, case.n)
    ref = reference(case, x)
    f32 = dataclasses.replace(case, x_dtype=F32)  # the kernel computes in f32; only the output is rounded
    tol = tolerance(f32, x, ref) + (np.abs(ref) * 2.0**-8 if case.x_dtype == BF16 else 0)
    err = np.abs(y.float().numpy().astype(np.float64) - ref)
    assert (err <= tol).all(), f"{case.name}: max err {err.max():.3g}"


def test_declines_what_the_kernel_cannot_read(lib):
    w = tb.to_torch(make_weight(Case("x", qt.uint4b8, 16, 64, (1, 16), 1, F32)))
    ok, why = tb.BACKENDS[NAME].supports(w, "cpu", torch.float32)
    assert not ok and "multiple of 32" in why
    w = tb.to_torch(make_weight(Case("x", qt.fp8_e4m3, 16, 64, (1, 64), 1, F32)))
    assert not tb.BACKENDS[NAME].supports(w, "cpu", torch.float32)[0]


def test_library_variant_builds_without_jax(tmp_path):
    """``ffi=False`` compiles with -DJQ_NO_FFI and never imports JAX (the Torch bridge's environment)."""
    if build.compiler_path() is None:
        pytest.skip("no C++ compiler on this host")
    code = (
        "import sys; sys.modules['jax'] = None; sys.modules['jaxlib'] = None\n"
        "from kernels_cpu import build\n"
        "p = build.build(ffi=False); lib = build.load_library(ffi=False)\n"
        "assert 'noffi' in p.name and lib.jquant_cpu_get_isa() in (0, 1, 2)\n"
        "assert sys.modules.get('jax') is None\n"
        "print('ok')\n"
    )
    env = {"JQUANT_CPU_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
