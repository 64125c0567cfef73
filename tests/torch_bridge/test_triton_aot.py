"""Every Triton kernel specialization compiles for real GPUs (sm_90 PTX/cubin, gfx942 hsaco) on the CPU.

The interpreter accepts things GPU backends reject (layouts, mixed dtypes, shared memory budget);
this compiles the exact constexpr sets the launchers produce, with their GPU tile configs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.torch_qmatmul import KINDS
from tests.torch_bridge.cases import KERNEL_CASES
from tests.torch_bridge.run_aot import SWAP_KINDS

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("sm_90", "gfx942")
SMEM_LIMIT = {"sm_90": 232448, "gfx942": 65536}  # bytes of shared memory / LDS per block


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=env.get("TRITON_CACHE_DIR", "/tmp/jquant-triton-aot-cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torch_bridge.run_aot", *TARGETS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {(r["case"], r["target"]): r for r in recs}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.name)
def test_compiles_for_gpu(compiled, case, target):
    rec = compiled.get((case.name, target))
    assert rec is not None, f"no compile record for {case.name} on {target}"
    assert rec["ok"], f"{case.name} on {target} with {rec['config']}: {rec.get('error')}"
    assert rec["shared"] <= SMEM_LIMIT[target], rec
    binary = "cubin" if target == "sm_90" else "hsaco"
    assert binary in rec["stages"], rec["stages"]
    if target == "sm_90" and case.x_dtype != "float32" and case.impl != "torch_triton_dequant_dot":  # no dot there
        assert rec["mma"], f"{case.name}: no tensor-core mma in the sm_90 PTX"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_decode_split_k_compiles_for_gpu(compiled, kind, target):
    """The launcher's M = 1 tiles (split-K, 128 code bytes per K step) of every code type, on 8b_down."""
    rec = compiled.get((f"decode_{kind}", target))
    assert rec is not None, f"no compile record for decode_{kind} on {target}"
    assert rec["ok"], f"decode_{kind} on {target} with {rec['config']}: {rec.get('error')}"
    assert "split_k=1," not in rec["config"], rec["config"]  # 8b_down at M = 1 splits K
    assert rec["shared"] <= SMEM_LIMIT[target], rec
    if target == "sm_90":
        assert rec["mma"], f"decode_{kind}: no tensor-core mma in the sm_90 PTX"
        # The dequantization stays in registers: no shared-memory stage of the tile's values (a
        # codebook gathered in 4-byte loads took 140 KB) and no int -> float conversion per code.
        assert rec["shared"] <= 48 * 1024, rec
        assert rec["i2f"] == 0, f"decode_{kind}: {rec['i2f']} int -> float conversions in the PTX"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_splitk_reduce_compiles_for_gpu(compiled, dtype, target):
    rec = compiled.get((f"splitk_reduce_{dtype}", target))
    assert rec is not None and rec["ok"], rec


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("m", [1, 64])
@pytest.mark.parametrize("kind", SWAP_KINDS)
def test_swap_ab_compiles_for_gpu(compiled, kind, m, target):
    """``swap_ab`` tiles (y.T = W' @ x.T) at M = 1 and 64; on sm_90 both take Hopper's wgmma."""
    rec = compiled.get((f"swap_m{m}_{kind}", target))
    assert rec is not None and rec["ok"], rec
    assert "swap_ab=True" in rec["config"]
    assert rec["shared"] <= SMEM_LIMIT[target], rec
    if target == "sm_90":
        assert rec["wgmma"], f"swap_m{m}_{kind}: no wgmma in the sm_90 PTX"
