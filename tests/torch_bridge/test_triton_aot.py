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

from tests.torch_bridge.cases import KERNEL_CASES

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
