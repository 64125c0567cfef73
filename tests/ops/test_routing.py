"""The routing table, pinned: which backend runs each code type x M x device.

Every change in routing shows up here as a diff of `EXPECTED`. Declarations only
(``runtime=False``: a CUDA library that did not build, or a missing GPU, would otherwise change the
answer on this host). Columns are M; ``+fq`` marks a weight-only backend running after the
activation recipe's XLA fake-quantization (the backend does not fuse that recipe).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jquant.pallas  # noqa: F401  (registers the Pallas backends)
from jquant.core.routing import Device
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
q4_1 uint4 g32 float zero  | sm_90 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
q4_1 uint4 g32 float zero  | sm_80 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
q4_1 uint4 g32 float zero  | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q6_k uint6b32 g16          | sm_90 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q6_k uint6b32 g16          | sm_80 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q6_k uint6b32 g16          | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
q8_0 int8 g32              | sm_90 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q8_0 int8 g32              | sm_80 | pl.dec    pl.dec    pl.dec    pl.dec    pl.dec    xla.deq   xla.deq   xla.deq   xla.deq
q8_0 int8 g32              | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nf4 g64                    | sm_90 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
nf4 g64                    | sm_80 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
nf4 g64                    | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
bnb_fp4 g64                | sm_90 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
bnb_fp4 g64                | sm_80 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
bnb_fp4 g64                | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
iq4nl g32                  | sm_90 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
iq4nl g32                  | sm_80 | xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq   xla.deq
iq4nl g32                  | cpu   | cpu.q     cpu.q     cpu.q     cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
mxfp4 g32                  | sm_90 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
mxfp4 g32                  | sm_80 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
mxfp4 g32                  | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nvfp4 w4a16                | sm_90 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
nvfp4 w4a16                | sm_80 | pl.wx     pl.wx     pl.wx     pl.wx     pl.wx     xla.deq   xla.deq   xla.deq   xla.deq
nvfp4 w4a16                | cpu   | cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk   cpu.chk
nvfp4 w4a4                 | sm_90 | pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
nvfp4 w4a4                 | sm_80 | pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  pl.wx+fq  xla.deq+fq xla.deq+fq xla.deq+fq xla.deq+fq
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
fp8 block128 w8a8          | sm_90 | xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8  xla.w8a8
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
