"""Triton kernels == the numpy spec, run on the CPU by the Triton interpreter (in a subprocess).

``x @ dequantize(w).T`` (W8A8: ``fake_quant(x) @ dequantize(w).T``) within a bound scaled with
sqrt(K) (`cases.tolerance`), for every qtype family, zero kind, scale block and straddling shape
in `cases.KERNEL_CASES`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.torch_bridge.cases import KERNEL_CASES, make_weight, make_x, reference, tolerance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    out = tmp_path_factory.mktemp("interp") / "out.npz"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torch_bridge.run_interpreted", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return dict(np.load(out))


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.name)
def test_kernel_matches_spec(interpreted, case):
    from torch_bridge import act_quant as aq

    x = make_x(case)
    x_used = None
    if case.act_quant is not None:
        w = make_weight(case)
        xp = x[:, w.perm] if w.perm is not None else x
        xt = torch.from_numpy(xp).to(getattr(torch, case.x_dtype))
        xq = aq.fake_quant(xt, aq.resolve(case.act_quant, case.k, case.block[1])).numpy()
        # the kernel sees x[:, perm] against data-order columns; undo the column order for the reference
        x_used = np.empty_like(xq)
        x_used[:, w.perm if w.perm is not None else slice(None)] = xq
    ref = reference(case, x, x_used)
    got = interpreted[case.name]
    err = np.abs(got.astype(np.float64) - ref)
    tol = tolerance(case, x, ref)
    worst = np.unravel_index(np.argmax(err / tol), err.shape)
    assert (err <= tol).all(), f"{case.name}: max err {err.max():.3g}, at {worst}: {err[worst]:.3g} > {tol[worst]:.3g}"
    assert np.abs(ref).max() > 0  # a zero problem would pass anything


def test_interpreter_env_did_not_leak():
    assert os.environ.get("TRITON_INTERPRET") in (None, "", "0")
