"""Runs every `cases.KERNEL_CASES` problem through the Triton kernels on the CPU interpreter.

Invoked by `test_triton_interpreter.py` in a subprocess (``--decode OUT``: `test_triton_decode.py`'s
split-K cases instead): ``TRITON_INTERPRET=1`` must be set before
the kernels are decorated (import time) and must not leak into other test modules. Writes the
outputs as float32 arrays to the ``.npz`` named on the command line; the test compares them.
"""

from __future__ import annotations

import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import torch_bridge as tb  # noqa: E402
from jquant.core.routing import by_m  # noqa: E402
from tests.torch_bridge.cases import KERNEL_CASES, make_weight, make_x  # noqa: E402
from torch_bridge.cpu import DequantMatmul  # noqa: E402
from torch_bridge.ops import load_plan, prepare  # noqa: E402
from torch_bridge.triton import TileConfig, is_interpreter, wxa16_matmul  # noqa: E402


def run_case(c) -> np.ndarray:
    w = tb.to_torch(make_weight(c))
    x = torch.from_numpy(make_x(c)).to(getattr(torch, c.x_dtype))
    if c.split_k > 1:  # the launcher only picks split-K for GPU shapes: force it through the config
        spec, t = tb.BACKENDS["torch_triton_wxa16"].prepare(w, torch.device("cpu"), x.dtype, None)
        td = dict(zip(spec.names, t))
        cfg = TileConfig(block_m=16, block_n=32, block_k=32, split_k=c.split_k, num_stages=1)
        y = wxa16_matmul(x, td["data"], td["scale"], td.get("zero"), None, w.qtype, w.shape, w.block, cfg)
    else:
        y = tb.qmatmul(x, w, implementation=c.impl, act_quant=c.act_quant)
    assert y.dtype == x.dtype and y.shape == (c.m, c.n), (y.dtype, y.shape)
    return y.float().numpy()


def run_decode(out_path: str) -> None:
    """`test_triton_decode`'s cases: `wxa16_matmul` with their explicit split-K tiles (or the launcher's)."""
    from tests.torch_bridge.test_triton_decode import DECODE_CASES, DEQUANT_CASES, activations, weight
    from torch_bridge.triton.backends import TritonWxA16
    from torch_bridge.triton.configs import interpret_wxa16_config
    from torch_bridge.triton.wxa16 import dequantize_weight

    results = {}
    for c in DECODE_CASES + DEQUANT_CASES:
        t0 = time.perf_counter()
        w = tb.to_torch(weight(c))
        dt = getattr(torch, c.x_dtype)
        spec, t = tb.BACKENDS[TritonWxA16.name].prepare(w, torch.device("cpu"), dt, None)
        x = torch.from_numpy(activations(c)).to(dt)
        xp, ops = TritonWxA16.operands(x, t, spec)
        if c in DEQUANT_CASES:
            y = dequantize_weight(*ops, torch.float32, config=c.config)
        else:
            cfg = c.config or interpret_wxa16_config(c.m, c.n, c.k)
            y = wxa16_matmul(xp.contiguous(), *ops, config=c.config)
            assert y.dtype == x.dtype and y.shape == (c.m, c.n), (y.dtype, y.shape)
            results[f"{c.name}.split_k"] = np.array(cfg.split_k)
        results[c.name] = y.float().numpy()
        print(f"{c.name:45s} {time.perf_counter() - t0:6.2f}s")
    np.savez(out_path, **results)


def main(out_path: str) -> None:
    assert is_interpreter(), "TRITON_INTERPRET=1 did not take effect"
    w = tb.to_torch(make_weight(KERNEL_CASES[0]))
    assert tb.select(w, "cpu", torch.float32).backend.name == "torch_triton_wxa16"
    assert tb.select(w, "cpu", torch.float32, m=128).backend.name == "torch_triton_dequant_dot"
    spec, tensors = prepare(w, "cpu", torch.float32)  # one plan, one set of tensors for both backends
    picked = {m: by_m(load_plan(spec), m).backend.name for m in (1, 127, 128, 4096)}
    assert picked == {
        1: "torch_triton_wxa16",
        127: "torch_triton_wxa16",
        128: "torch_triton_dequant_dot",
        4096: "torch_triton_dequant_dot",
    }, picked
    assert len(tensors) == 2, [t.shape for t in tensors]  # data + scale, shared
    table = tb.backend.ROUTES["cpu"]
    assert table.index("torch_triton_wxa16") < table.index(DequantMatmul.name)
    results, times = {}, {}
    for c in KERNEL_CASES:
        t0 = time.perf_counter()
        results[c.name] = run_case(c)
        times[c.name] = time.perf_counter() - t0
    np.savez(out_path, **results)
    for name, t in times.items():
        print(f"{name:45s} {t:6.2f}s")


if __name__ == "__main__":
    if sys.argv[1] == "--decode":
        run_decode(sys.argv[2])
    else:
        main(sys.argv[1])
