"""The W8A8 paths on a real GPU (skipped on CPU CI): the Pallas-Triton kernel and the XLA 8-bit dot.

Correctness: M across tile edges (1 .. 4096), odd N, K off the 256-column decode step; outputs
written into NaN-poisoned buffers; tolerance scaled with sqrt(K) against
``reference_qmatmul(fake_quantize(x, act), w)``; `quantize_act` bit-exact with `fake_quantize` on
the device.

Timing (``test_gpu_w8a8_timing``, printed with ``-s``): the Pallas kernel, the XLA W8A8 path, a
bf16 dense dot (cuBLAS) and today's path (f32 fake-quant + dequantize + HIGHEST dot) on the
BENCH.md shapes named by ``JQUANT_W8A8_SHAPES`` (default ``70b_o,8b_gate_up``), device time per
call through `bench.timing.jax_time_us` (CUPTI, weight copies rotated past the L2).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import jnp_dequant
from jquant.ops import reference_qmatmul
from jquant.ops.act_quant import fake_quantize, quantize_act
from jquant.ops.xla_w8a8 import xla_w8a8_matmul
from jquant.pallas.w8a8 import config_for, layout_of, pallas_w8a8_qmatmul, why_not
from tests.ops.w8a8_cases import ACTS, WEIGHTS_BY_NAME, check_against_spec, make_w8, make_x, reconstruct
from tests.ops.w8a8_cases import to_device as dev

pytestmark = pytest.mark.gpu

M_GPU = (1, 7, 16, 127, 128, 129, 1024, 4096)
GPU_CASES = [
    "fp8-tensor-static",
    "fp8-channel-bf16",
    "fp8-block128",
    "fp8-block128-e8m0-token",
    "int8-channel",
    "int8-channel-perm",
    "uint8b128-channel",
]


@pytest.mark.parametrize("m", M_GPU)
@pytest.mark.parametrize("wname", GPU_CASES)
def test_gpu_matches_spec(wname, m):
    case = WEIGHTS_BY_NAME[wname]
    rng = np.random.default_rng(m * 31 + len(wname))
    n, k = 1003, 2176  # odd N; K = 17 blocks of 128, 8.5 decode steps of 256
    w = make_w8(rng, n, k, case)
    act = ACTS[case.act]
    x = make_x(rng, (m, k))
    wd = dev(w)
    assert why_not(x, w, act) == ""
    y = jax.jit(functools.partial(pallas_w8a8_qmatmul, act=act, poison=True))(x, wd)
    check_against_spec(y, x, w, act, what=f"pallas {wname} m={m} {config_for(m, layout_of(w, act))}")
    y2 = jax.jit(functools.partial(xla_w8a8_matmul, act=act))(x, wd)
    check_against_spec(y2, x, w, act, what=f"xla {wname} m={m}")


@pytest.mark.parametrize("wname", ["fp8-channel-bf16", "int8-channel"])
def test_gpu_f16_and_3d_input(wname):
    case = WEIGHTS_BY_NAME[wname]
    rng = np.random.default_rng(2)
    w = make_w8(rng, 777, 4096, case)
    act = ACTS[case.act]
    x = make_x(rng, (2, 33, 4096), jnp.float16)
    y = jax.jit(functools.partial(pallas_w8a8_qmatmul, act=act, poison=True))(x, dev(w))
    assert y.shape == (2, 33, 777) and y.dtype == jnp.float16
    check_against_spec(y, x, w, act, what=wname)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_gpu_quantize_act_bit_exact(name):
    act = jax.device_put(ACTS[name])
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal((64, 1024)) * rng.uniform(1e-3, 30, (64, 1))).astype(np.float32)
    x[0] = 0.0
    x[1, :5] *= 1e4
    for dt in (jnp.bfloat16, jnp.float16, jnp.float32):
        xj = jnp.asarray(x, dt)
        codes, scales = jax.jit(quantize_act)(xj, act)
        got = reconstruct(codes, scales).astype(dt)
        ref = jax.jit(fake_quantize)(xj, act)
        np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(ref.astype(jnp.float32)))


def test_gpu_w8a8_timing():
    """Device time (us) per call: Pallas W8A8, XLA W8A8, bf16 dense dot, f32 fake-quant reference."""
    from bench.shapes import SHAPES_BY_NAME
    from bench.timing import copies_for, jax_time_us, rel_err

    shapes = os.environ.get("JQUANT_W8A8_SHAPES", "70b_o,8b_gate_up").split(",")
    ms = [int(v) for v in os.environ.get("JQUANT_W8A8_MS", "1,16,128,1024,4096").split(",")]
    rng = np.random.default_rng(0)
    rows = []
    for sname in shapes:
        sh = SHAPES_BY_NAME[sname]
        for wname in ("fp8-channel-bf16", "fp8-block128", "int8-channel"):
            case = WEIGHTS_BY_NAME[wname]
            act = ACTS[case.act]
            w = dev(make_w8(rng, sh.n, sh.k, case))
            copies = [jax.tree_util.tree_map(jnp.copy, w) for _ in range(copies_for(sh.n * sh.k))]
            dense = jax.jit(lambda w: jnp_dequant.dequantize(w, jnp.bfloat16))(w)  # [N, K] bf16
            dense_copies = [jnp.copy(dense) for _ in range(copies_for(2 * sh.n * sh.k))]
            del dense
            for m in ms:
                x = make_x(rng, (m, sh.k))
                fns = {
                    "pallas": functools.partial(pallas_w8a8_qmatmul, act=act),
                    "xla_w8a8": functools.partial(xla_w8a8_matmul, act=act),
                    "f32_ref": lambda x, w, act=act: reference_qmatmul(fake_quantize(x, act), w),
                }
                ref = jax.jit(fns["f32_ref"])(x, w)
                row = {"shape": sname, "w": wname, "m": m}
                for name, fn in fns.items():
                    if name == "f32_ref" and m > 1024:
                        continue  # HIGHEST-precision f32 is slow at this size; the point is made below it
                    err = rel_err(np.asarray(jax.jit(fn)(x, w), np.float32), np.asarray(ref, np.float32))
                    assert err < 2e-2, (name, sname, wname, m, err)
                    row[name] = jax_time_us(fn, x, copies)
                row["bf16_dense"] = jax_time_us(lambda x, wb: x @ wb.T, x, dense_copies)
                rows.append(row)
                print(
                    f"{sname:>12} {wname:>18} M={m:<5}"
                    + "".join(
                        f" {k}={row[k]:9.1f}us" for k in ("pallas", "xla_w8a8", "bf16_dense", "f32_ref") if k in row
                    ),
                    flush=True,
                )
    assert rows and all(r["pallas"] > 0 and r["xla_w8a8"] > 0 for r in rows)
