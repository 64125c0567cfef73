"""Times or profiles the CUDA W4A16 GEMM kernels (mma.sync or wgmma) for given shapes, M and launch configs.

python -m bench.profile_cuda_gemm --shapes 70b_o --ms 32,128          # heuristic config, table
python -m bench.profile_cuda_gemm --configs 128:2:2:3 --ms 128        # bm:wm:splits:stages
python -m bench.profile_cuda_gemm --kernel wgmma --configs 256:1:2    # bm:splits:variant (index)
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
    from kernels_cuda.w4a16_wgmma import w4a16_wgmma, wgmma_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--once", action="store_true", help="one call per case (for ncu)")
    p.add_argument("--shapes", default="70b_o")
    p.add_argument("--ms", default="32,64,128")
    p.add_argument("--kernel", choices=("gemm", "wgmma"), default="gemm")
    p.add_argument(
        "--configs",
        default="",
        help="comma list of bm:wm:splits:stages or (wgmma) bm:splits:variant (default: heuristic)",
    )
    args = p.parse_args(argv)
    op, heuristic = (w4a16_gemm, gemm_config) if args.kernel == "gemm" else (w4a16_wgmma, wgmma_config)
    rows = []
    for name in args.shapes.split(","):
        sh = SHAPES_BY_NAME[name]
        key = jax.random.PRNGKey(0)
        copies = make_qarray_copies(key, sh.n, sh.k, 4, 128, False, count=1 if args.once else None)
        for m in map(int, args.ms.split(",")):
            x = jax.random.normal(key, (m, sh.k), jnp.float32).astype(jnp.bfloat16)
            cfgs = [heuristic(m, sh.n, sh.k)]
            if args.configs:
                cfgs = [_parse(c, sh.k, args.kernel) for c in args.configs.split(",")]
            for cfg in cfgs:
                f = lambda x, w, cfg=cfg: op(x, w, cfg)  # noqa: E731
                if args.once:
                    jax.block_until_ready(jax.jit(f)(x, copies[0]))
                    continue
                us = jax_time_us(f, x, copies, iterations=10)
                tflops = 2 * m * sh.n * sh.k / (us * 1e-6) / 1e12
                rows.append(f"{name:12s} M={m:<5d} {us:8.2f} us {tflops:6.1f} TFLOP/s  {cfg}")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


def _parse(spec: str, k: int, kernel: str):
    from kernels_cuda.w4a16_gemm import STEP_K, GemmConfig
    from kernels_cuda.w4a16_wgmma import VARIANTS, WgmmaConfig

    v = [int(p) for p in spec.split(":")]
    if kernel == "wgmma":
        return WgmmaConfig(bm=v[0], k_split=-(-(k // STEP_K) // v[1]) * STEP_K, variant=VARIANTS[v[2]])
    bm, wm, splits, st = v
    return GemmConfig(bm=bm, wm=wm, k_split=-(-(k // STEP_K) // splits) * STEP_K, stages=st)


if __name__ == "__main__":
    sys.exit(main())
