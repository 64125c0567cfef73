"""Compiles every kernel specialization of `cases.KERNEL_CASES` for sm_90 and gfx942, on the CPU.

Invoked by `test_triton_aot.py` in a subprocess (the kernels must be imported as JIT functions,
i.e. without ``TRITON_INTERPRET=1``). Tiles are the GPU launchers' own choices (`configs`), for a
decode-sized (M = 1, split-K) and two mid-sized (M = 64, 100) problems in turn; the
``torch_triton_dequant_dot`` cases compile its `dequant_kernel`. Prints one JSON line per (case,
target).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/jquant-triton-aot-cache")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

from tests.torch_bridge.cases import KERNEL_CASES, act_group  # noqa: E402
from torch_bridge.triton.aot import TARGETS, DequantCase, W8a8Case, Wxa16Case, compile_case  # noqa: E402
from torch_bridge.triton.configs import dequant_config, w8a8_config, wxa16_config  # noqa: E402
from torch_bridge.triton.wxa16 import ZeroKind  # noqa: E402


def aot_case(i, c):
    m = (1, 64, 100)[i % 3]
    x_dtype = getattr(torch, c.x_dtype)
    if c.act_quant is None:
        zero = {None: ZeroKind.NONE, "int": ZeroKind.INT, "float": ZeroKind.FLOAT}[c.zero]
        if c.impl == "torch_triton_dequant_dot":  # dequant_kernel (+ the vendor GEMM)
            return DequantCase(c.qtype, c.block, c.k, zero, x_dtype, dequant_config(c.k, c.block[1]))
        cfg = wxa16_config(m, 4096, 4096, c.block[1] if c.block[1] < c.k else 4096, x_dtype.itemsize)
        return Wxa16Case(c.qtype, c.block, c.k, zero, x_dtype, cfg)
    group = act_group(c)
    kb = min(group, c.block[1])
    cfg = w8a8_config(m, 4096, 4096, kb if kb < c.k else 4096)
    return W8a8Case(c.act_quant == "int8", group, c.block, c.k, x_dtype, cfg)


def main(names: list[str]) -> None:
    for i, c in enumerate(KERNEL_CASES):
        case = aot_case(i, c)
        for tname in names:
            t0 = time.perf_counter()
            rec = {"case": c.name, "target": tname, "config": repr(case.config)}
            try:
                k = compile_case(case, TARGETS[tname])
                asm = k.asm
                rec.update(ok=True, shared=k.metadata.shared, stages=sorted(asm))
                if tname == "sm_90":
                    rec["mma"] = "mma" in asm["ptx"]
            except Exception as e:  # reported per case by the test
                rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(TARGETS))
