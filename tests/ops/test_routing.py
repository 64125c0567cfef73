"""The routing tables, pinned: which backend runs each code type x M x device (JAX and Torch).

Every change in routing shows up here as a diff of `EXPECTED` / `EXPECTED_TORCH`. Declarations only
(``runtime=False``: a CUDA library that did not build, or a missing GPU, would otherwise change the
answer on this host). Columns are M; ``+fq`` marks a weight-only backend running after the
activation recipe's XLA fake-quantization (the backend does not fuse that recipe).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jquant.pallas  # noqa: F401  (registers the Pallas backends)
from jquant.core.routing import Device, by_m
from jquant.ops.qmatmul import select
from tests.ops.routing_cases import CASES, K

pytest.importorskip("kernels_cuda")  # registers the CUDA backends (their build is not needed here)

MS = (1, 16, 17, 40, 64, 128, 129, 1024, 4096)
DEVICES = {"sm_90": Device("gpu", cc=(9, 0)), "sm_80": Device("gpu", cc=(8, 0)), "cpu": Device("cpu")}
ABBREV = {
    "cu.dec": "cuda_w4a16_decode",
    "cu.gemm": "cuda_w4a16_gemm",
    "cu.wgmma": "cuda_w4a16_wgmma",
    "pl.w8a8": "pallas_triton_w8a8",
    "xla.w8a8": "xla_w8a8",
    "pl.dec": "pallas_triton_wna16_decode",
    "pl.pre": "pallas_triton_wna16_prefill",
    "pl.wx": "pallas_triton_wxa16",
    "xla.deq": "xla_dequant_dot",
    "cpu.q": "cpu_qmatmul",
    "cpu.chk": "xla_cpu_chunked",
    "ref": "xla_reference",
}

# case | device | backend at M = 1 16 17 40 64 128 129 1024 4096
EXPECTED = """
uint4b8 g128               | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
uint4b8 g128               | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
uint4b8 g128               | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint4 g128 zero            | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
uint4 g128 zero            | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
uint4 g128 zero            | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint4b8 g128 act-order     | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
uint4b8 g128 act-order     | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
uint4b8 g128 act-order     | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint4b8 channel            | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
uint4b8 channel            | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
uint4b8 channel            | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint8b128 channel          | sm_90 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
uint8b128 channel          | sm_80 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
uint8b128 channel          | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint2 g64 zero             | sm_90 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
uint2 g64 zero             | sm_80 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
uint2 g64 zero             | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
uint3b4 g128               | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
uint3b4 g128               | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
uint3b4 g128               | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q4_0 uint4b8 g32           | sm_90 | cu.dec    cu.dec    cu.gemm   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
q4_0 uint4b8 g32           | sm_80 | cu.dec    cu.dec    cu.gemm   cu.gemm   cu.gemm   cu.gemm   xla.deq   xla.deq   xla.deq
q4_0 uint4b8 g32           | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q4_1 uint4 g32 float zero  | sm_90 | cu.dec    cu.dec    pl.wx     cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
q4_1 uint4 g32 float zero  | sm_80 | cu.dec    cu.dec    pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
q4_1 uint4 g32 float zero  | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q6_k uint6b32 g16          | sm_90 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q6_k uint6b32 g16          | sm_80 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q6_k uint6b32 g16          | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q8_0 int8 g32              | sm_90 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q8_0 int8 g32              | sm_80 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q8_0 int8 g32              | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nf4 g64                    | sm_90 | cu.dec    cu.dec    xla.deq   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
nf4 g64                    | sm_80 | cu.dec    cu.dec    xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
nf4 g64                    | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
bnb_fp4 g64                | sm_90 | cu.dec    cu.dec    xla.deq   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
bnb_fp4 g64                | sm_80 | cu.dec    cu.dec    xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
bnb_fp4 g64                | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
iq4nl g32                  | sm_90 | cu.dec    cu.dec    xla.deq   cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
iq4nl g32                  | sm_80 | cu.dec    cu.dec    xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
iq4nl g32                  | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
mxfp4 g32                  | sm_90 | cu.dec    cu.dec    pl.wx     cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
mxfp4 g32                  | sm_80 | cu.dec    cu.dec    pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
mxfp4 g32                  | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nvfp4 w4a16                | sm_90 | cu.dec    cu.dec    pl.wx     cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma  cu.wgmma
nvfp4 w4a16                | sm_80 | cu.dec    cu.dec    pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
nvfp4 w4a16                | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nvfp4 w4a4                 | sm_90 | cu.dec+fq cu.dec+fq pl.wx+fq  cu.wgmma+fq cu.wgmma+fq cu.wgmma+fq cu.wgmma+fq cu.wgmma+fq cu.wgmma+fq
nvfp4 w4a4                 | sm_80 | cu.dec+fq cu.dec+fq pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
nvfp4 w4a4                 | cpu   | cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
fp8 channel w8a16          | sm_90 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
fp8 channel w8a16          | sm_80 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
fp8 channel w8a16          | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
fp8 channel w8a8           | sm_90 | xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8
fp8 channel w8a8           | sm_80 | pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
fp8 channel w8a8           | cpu   | cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
fp8 tensor static          | sm_90 | xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8
fp8 tensor static          | sm_80 | pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
fp8 tensor static          | cpu   | cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
fp8 block128 w8a8          | sm_90 | xla.w8a8  pl.w8a8   pl.w8a8   pl.w8a8   pl.w8a8   pl.w8a8   pl.w8a8   pl.w8a8   pl.w8a8
fp8 block128 w8a8          | sm_80 | pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
fp8 block128 w8a8          | cpu   | cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
int8 channel w8a8          | sm_90 | xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8
int8 channel w8a8          | sm_80 | xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8
int8 channel w8a8          | cpu   | cpu.q+fq  cpu.q+fq  cpu.q+fq  cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
int8 channel w8a8 asym     | sm_90 | pl.dec+fq pl.dec+fq pl.dec+fq pl.dec+fq pl.dec+fq xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
int8 channel w8a8 asym     | sm_80 | pl.dec+fq pl.dec+fq pl.dec+fq pl.dec+fq pl.dec+fq xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
int8 channel w8a8 asym     | cpu   | cpu.q+fq  cpu.q+fq  cpu.q+fq  cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq cpu.chk+fq
"""


def _rows():
    for line in EXPECTED.strip().splitlines():
        case, dev, cols = (s.strip() for s in line.split("|"))
        yield case, dev, cols.split()


@pytest.mark.parametrize("case, dev, want", list(_rows()), ids=lambda v: v if isinstance(v, str) else None)
def test_routing_is_pinned(case, dev, want):
    w, act = CASES[case]
    got = []
    for m in MS:
        r = select(jax.ShapeDtypeStruct((m, K), jnp.bfloat16), w, act, device=DEVICES[dev], runtime=False)
        got.append(next(k for k, v in ABBREV.items() if v == r.backend.name) + ("+fq" if r.composed else ""))
    assert got == want, dict(zip(MS, got))


def test_every_case_and_device_is_pinned():
    assert {(c, d) for c, d, _ in _rows()} == {(c, d) for c in CASES for d in DEVICES}


def test_the_spec_is_no_gpu_path():
    """On a GPU nothing routes to the f32 reference unless forced (DESIGN: the spec is not a path)."""
    assert all("ref" not in cols for _, dev, cols in _rows() if dev != "cpu")


def test_readme_table_is_jquant_kernels_output():
    """The README embeds `jquant kernels --device gpu --sm 90 --markdown`; a routing change must update it."""
    from pathlib import Path

    from jquant.cli.kernels import markdown

    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = text.split("<!-- jquant kernels: begin -->\n")[1].split("\n<!-- jquant kernels: end -->")[0]
    assert block == markdown(DEVICES["sm_90"])


# ---- the Torch bridge's table -------------------------------------------------------------------
# A layer is routed once, before M is known (`torch_bridge.backend.plan`); the op picks by M per call
# (`by_m`). "cpu" is a CPU without TRITON_INTERPRET (the Triton backends are not there).

TORCH_MS = (1, 16, 128, 129, 1024)
TORCH_DEVICES = {"sm_90": Device("cuda", cc=(9, 0)), "sm_80": Device("cuda", cc=(8, 0)), "cpu": Device("cpu")}
TORCH_ABBREV = {
    "mm.fp8": "torch_scaled_mm_fp8",
    "tr.fp8": "torch_triton_w8a8_fp8",
    "tr.int8": "torch_triton_w8a8_int8",
    "tr.wx": "torch_triton_wxa16",
    "tr.deq": "torch_triton_dequant_dot",
    "cpu.i4": "torch_cpu_int4pack",
    "cpu.i8": "torch_cpu_int8pack",
    "cpu.q": "torch_cpu_qmatmul",
    "ref": "torch_dequant_matmul",
}

# case | device | backend at M = 1 16 128 129 1024
EXPECTED_TORCH = """
uint4b8 g128               | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 g128               | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 g128               | cpu   | cpu.q     cpu.q     ref       ref       ref
uint4 g128 zero            | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4 g128 zero            | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4 g128 zero            | cpu   | cpu.q     cpu.q     ref       ref       ref
uint4b8 g128 act-order     | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 g128 act-order     | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 g128 act-order     | cpu   | cpu.q     cpu.q     ref       ref       ref
uint4b8 channel            | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 channel            | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint4b8 channel            | cpu   | cpu.q     cpu.q     ref       ref       ref
uint8b128 channel          | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint8b128 channel          | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint8b128 channel          | cpu   | cpu.q     cpu.q     cpu.i8    cpu.i8    cpu.i8
uint2 g64 zero             | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint2 g64 zero             | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint2 g64 zero             | cpu   | ref       ref       ref       ref       ref
uint3b4 g128               | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint3b4 g128               | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
uint3b4 g128               | cpu   | cpu.q     cpu.q     ref       ref       ref
q4_0 uint4b8 g32           | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q4_0 uint4b8 g32           | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q4_0 uint4b8 g32           | cpu   | cpu.q     cpu.q     ref       ref       ref
q4_1 uint4 g32 float zero  | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q4_1 uint4 g32 float zero  | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q4_1 uint4 g32 float zero  | cpu   | cpu.q     cpu.q     ref       ref       ref
q6_k uint6b32 g16          | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q6_k uint6b32 g16          | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q6_k uint6b32 g16          | cpu   | cpu.q     cpu.q     ref       ref       ref
q8_0 int8 g32              | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q8_0 int8 g32              | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
q8_0 int8 g32              | cpu   | cpu.q     cpu.q     ref       ref       ref
nf4 g64                    | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
nf4 g64                    | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
nf4 g64                    | cpu   | cpu.q     cpu.q     ref       ref       ref
bnb_fp4 g64                | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
bnb_fp4 g64                | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
bnb_fp4 g64                | cpu   | cpu.q     cpu.q     ref       ref       ref
iq4nl g32                  | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
iq4nl g32                  | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
iq4nl g32                  | cpu   | cpu.q     cpu.q     ref       ref       ref
mxfp4 g32                  | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
mxfp4 g32                  | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
mxfp4 g32                  | cpu   | ref       ref       ref       ref       ref
nvfp4 w4a16                | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
nvfp4 w4a16                | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
nvfp4 w4a16                | cpu   | ref       ref       ref       ref       ref
nvfp4 w4a4                 | sm_90 | ref       ref       ref       ref       ref
nvfp4 w4a4                 | sm_80 | ref       ref       ref       ref       ref
nvfp4 w4a4                 | cpu   | ref       ref       ref       ref       ref
fp8 channel w8a16          | sm_90 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
fp8 channel w8a16          | sm_80 | tr.wx     tr.wx     tr.deq    tr.deq    tr.deq
fp8 channel w8a16          | cpu   | ref       ref       ref       ref       ref
fp8 channel w8a8           | sm_90 | mm.fp8    mm.fp8    mm.fp8    mm.fp8    mm.fp8
fp8 channel w8a8           | sm_80 | tr.fp8    tr.fp8    tr.fp8    tr.fp8    tr.fp8
fp8 channel w8a8           | cpu   | ref       ref       ref       ref       ref
fp8 tensor static          | sm_90 | ref       ref       ref       ref       ref
fp8 tensor static          | sm_80 | ref       ref       ref       ref       ref
fp8 tensor static          | cpu   | ref       ref       ref       ref       ref
fp8 block128 w8a8          | sm_90 | tr.fp8    tr.fp8    tr.fp8    tr.fp8    tr.fp8
fp8 block128 w8a8          | sm_80 | tr.fp8    tr.fp8    tr.fp8    tr.fp8    tr.fp8
fp8 block128 w8a8          | cpu   | ref       ref       ref       ref       ref
int8 channel w8a8          | sm_90 | tr.int8   tr.int8   tr.int8   tr.int8   tr.int8
int8 channel w8a8          | sm_80 | tr.int8   tr.int8   tr.int8   tr.int8   tr.int8
int8 channel w8a8          | cpu   | ref       ref       ref       ref       ref
int8 channel w8a8 asym     | sm_90 | ref       ref       ref       ref       ref
int8 channel w8a8 asym     | sm_80 | ref       ref       ref       ref       ref
int8 channel w8a8 asym     | cpu   | ref       ref       ref       ref       ref
"""


def _torch_route(case: str, dev: str) -> list[str]:
    import torch

    from torch_bridge import act_quant as aq
    from torch_bridge import backend as tbb

    w, act = CASES[case]
    no_triton = [n for n in tbb.REGISTRY.backends if n.startswith("torch_triton")] if dev == "cpu" else []
    plan = tbb.plan(w, TORCH_DEVICES[dev], torch.bfloat16, act_quant=act, runtime=False, disabled=no_triton)
    layer = tbb.torch_call(w, TORCH_DEVICES[dev], torch.bfloat16, aq.resolve(act, w.k, w.block[1]))
    for m in TORCH_MS:  # the per-layer plan picks what routing each call by its M would
        per_call = tbb.REGISTRY.route(dataclasses.replace(layer, m=m), runtime=False, disabled=no_triton, compose=False)
        assert by_m(plan, m).backend is per_call.backend, (m, per_call)
    return [next(k for k, v in TORCH_ABBREV.items() if v == by_m(plan, m).backend.name) for m in TORCH_MS]


def _torch_rows():
    for line in EXPECTED_TORCH.strip().splitlines():
        case, dev, cols = (s.strip() for s in line.split("|"))
        yield case, dev, cols.split()


@pytest.mark.parametrize("case, dev, want", list(_torch_rows()), ids=lambda v: v if isinstance(v, str) else None)
def test_torch_routing_is_pinned(case, dev, want):
    assert _torch_route(case, dev) == want


def test_every_torch_case_and_device_is_pinned():
    assert {(c, d) for c, d, _ in _torch_rows()} == {(c, d) for c in CASES for d in TORCH_DEVICES}


def test_plan_covers_every_m_once():
    """`Registry.plan`: the backends that together take every M, none fully shadowed; `by_m` picks per call."""
    from jquant.core.routing import Backend, Call, Capabilities, Registry

    class B(Backend):
        def __init__(self, name, lo=1, hi=None):
            self.name, self.caps = name, Capabilities(platforms=None, m_min=lo, m_max=hi, act_dtypes=None)

    reg = Registry("test", {"x": ("a", "b", "c", "d")})
    for b in (B("a", 1, 16), B("b", 8, 32), B("c", 10, 20), B("d", 30)):
        reg.register(b)
    call = Call.of(None, "bfloat16", CASES["uint4b8 g128"][0], Device("x"))
    plan = reg.plan(call, forced=[], disabled=[])
    assert [r.backend.name for r in plan] == ["a", "b", "d"]  # c's 10..20 is taken by a and b
    assert [by_m(plan, m).backend.name for m in (1, 16, 17, 32, 33, 10**6)] == ["a", "a", "b", "b", "d", "d"]
    gap = reg.plan(call, forced=[], disabled=["d"])  # nothing takes M >= 33: the last route says why
    assert [r.backend and r.backend.name for r in gap] == ["a", "b", None]
    assert "d: disabled" in gap[-1].skipped[-1]
    forced = reg.plan(call, forced=["c"], disabled=[])  # a forced backend takes every M
    assert [r.backend.name for r in forced] == ["c"] and by_m(forced, 1000).backend.name == "c"
