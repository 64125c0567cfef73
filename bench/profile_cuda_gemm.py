"""Times or profiles the CUDA W4A16 GEMM kernel for given shapes, M and launch configs.

python -m bench.profile_cuda_gemm --shapes 70b_o --ms 32,128          # heuristic config, table
python -m bench.profile_cuda_gemm --configs 128:2:4096:3 --ms 128     # bm:wm:k_split:stages
ncu --clock-control none -k regex:w4a16_gemm -c 2 python -m bench.profile_cuda_gemm --once ...
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    import jax
    import jax.numpy as jnp

    from bench.qmatmul import make_qarray_copies
    from bench.shapes import SHAPES_BY_NAME
    from bench.timing import jax_time_us
    from kernels_cuda.w4a16_gemm import gemm_config, w4a16_gemm

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--once", action="store_true", help="one call per case (for ncu)")
    p.add_argument("--shapes", default="70b_o")
    p.add_argument("--ms", default="32,64,128")
    p.add_argument("--configs", default="", help="comma list of bm:wm:splits:stages (default: the heuristic)")
    args = p.parse_args(argv)
    rows = []
    for name in args.shapes.split(","):
        sh = SHAPES_BY_NAME[name]
        key = jax.random.PRNGKey(0)
        copies = make_qarray_copies(key, sh.n, sh.k, 4, 128, False, count=1 if args.once else None)
        for m in map(int, args.ms.split(",")):
            x = jax.random.normal(key, (m, sh.k), jnp.float32).astype(jnp.bfloat16)
            cfgs = [gemm_config(m, sh.n, sh.k)]
            if args.configs:
                cfgs = [_parse(c, sh.k) for c in args.configs.split(",")]
            for cfg in cfgs:
                f = lambda x, w, cfg=cfg: w4a16_gemm(x, w, cfg)  # noqa: E731
                if args.once:
                    jax.block_until_ready(jax.jit(f)(x, copies[0]))
                    continue
                us = jax_time_us(f, x, copies, iterations=10)
                tflops = 2 * m * sh.n * sh.k / (us * 1e-6) / 1e12
                rows.append(f"{name:12s} M={m:<5d} {us:8.2f} us {tflops:6.1f} TFLOP/s  {cfg}")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


def _parse(spec: str, k: int):
    from kernels_cuda.w4a16_gemm import STEP_K, GemmConfig

    bm, wm, splits, st = (int(v) for v in spec.split(":"))
    return GemmConfig(bm=bm, wm=wm, k_split=-(-(k // STEP_K) // splits) * STEP_K, stages=st)


if __name__ == "__main__":
    sys.exit(main())
