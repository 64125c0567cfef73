"""Compiles every kernel specialization of `cases.KERNEL_CASES` for sm_90 and gfx942, on the CPU.

Invoked by `test_triton_aot.py` in a subprocess (the kernels must be imported as JIT functions,
i.e. without ``TRITON_INTERPRET=1``). Tiles are the GPU launchers' own choices (`configs`), for a
decode-sized (M = 1, split-K) and two mid-sized (M = 64, 100) problems in turn; the
``torch_triton_dequant_dot`` cases compile its `dequant_kernel`. Then the decode tiles of every
code type of `bench.torch_qmatmul` (``decode_<kind>``), ``swap_ab`` variants at M = 1 / 64
(``swap_m<M>_<kind>``) and the split-K reduction
(``splitk_reduce_<dtype>``). Prints one JSON line per (case, target).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/jquant-triton-aot-cache")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

from tests.torch_bridge.cases import KERNEL_CASES, act_group  # noqa: E402
from torch_bridge.triton.aot import TARGETS, DequantCase, ReduceCase, W8a8Case, Wxa16Case, compile_case  # noqa: E402
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


DECODE_K, DECODE_N = 14336, 4096  # 8b_down
SWAP_KINDS = ("uint4b8_g128", "q4_k", "nf4", "q8_0", "gptq_2bit")


def decode_cases() -> list[tuple[str, Wxa16Case | ReduceCase]]:
    """The decode (M = 1, split-K) specialization of every `bench.torch_qmatmul.KINDS` code type on
    8b_down with the launcher's own tiles (bf16 activations), and the split-K reduction kernel."""
    from bench.torch_qmatmul import KINDS, make_weight

    out = []
    for name, kind in KINDS.items():
        w = make_weight(kind, 16, DECODE_K)
        zero = ZeroKind.NONE if w.zero is None else ZeroKind.FLOAT if w.zero.dtype.kind == "f" else ZeroKind.INT
        cfg = wxa16_config(1, DECODE_N, DECODE_K, w.block[1], 2, 132, w.qtype.container_bits)
        div = ("M", "N", "K", "stride_xm", "stride_dn", "stride_sn", "stride_ys", "stride_ym")  # 8b_down, M = 16
        case = Wxa16Case(w.qtype, w.block, DECODE_K, zero, torch.bfloat16, cfg, divisible=div)
        out.append((f"decode_{name}", case))
    for name in SWAP_KINDS:  # swap_ab variants: decode tiles and the M = 64 ones
        w = make_weight(KINDS[name], 16, DECODE_K)
        zero = ZeroKind.NONE if w.zero is None else ZeroKind.FLOAT if w.zero.dtype.kind == "f" else ZeroKind.INT
        for m in (1, 64):
            cfg = wxa16_config(m, DECODE_N, DECODE_K, w.block[1], 2, 132, w.qtype.container_bits)
            cfg = dataclasses.replace(cfg, swap_ab=True)
            case = Wxa16Case(w.qtype, w.block, DECODE_K, zero, torch.bfloat16, cfg, divisible=div)
            out.append((f"swap_m{m}_{name}", case))
    out += [(f"splitk_reduce_{dt}", ReduceCase(5, getattr(torch, dt))) for dt in ("bfloat16", "float16", "float32")]
    return out


def main(names: list[str]) -> None:
    cases = [(c.name, aot_case(i, c)) for i, c in enumerate(KERNEL_CASES)] + decode_cases()
    for cname, case in cases:
        for tname in names:
            t0 = time.perf_counter()
            rec = {"case": cname, "target": tname, "config": repr(case.config)}
            try:
                k = compile_case(case, TARGETS[tname])
                asm = k.asm
                rec.update(ok=True, shared=k.metadata.shared, stages=sorted(asm))
                if tname == "sm_90":
                    rec["mma"] = "mma" in asm["ptx"]
                    rec["wgmma"] = "wgmma.mma_async" in asm["ptx"]
                    rec["i2f"] = len(re.findall(r"cvt\.rn\.f32\.[su]32", asm["ptx"]))  # int -> float conversions
            except Exception as e:  # reported per case by the test
                rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(TARGETS))
