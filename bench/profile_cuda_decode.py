"""Profiles the CUDA W4A16 decode kernel alone: device time of the kernel without the split-K
reduction, per config, for ``ncu`` runs and the reduction's share (bench/results/<card>/).

    python -m bench.profile_cuda_decode            # table of kernel-only vs full op times
    ncu --clock-control none -k regex:w4a16 --launch-count 2 -c 2 python -m bench.profile_cuda_decode --once
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
    from kernels_cuda.w4a16 import blocks_per_sm_query, decode_config, tile_codes, w4a16_decode

    p = argparse.ArgumentParser()
    p.add_argument("--once", action="store_true", help="one call per case (for ncu)")
    p.add_argument("--shapes", default="70b_o,8b_gate_up")
    p.add_argument("--ms", default="1,16")
    p.add_argument(
        "--no-math",
        action="store_true",
        help="also time a build with -DJQUANT_EXPERIMENT_NO_MATH (loads and staging only, wrong results)",
    )
    args = p.parse_args(argv)
    rows = []
    if args.no_math:
        _register_no_math()
    for name in args.shapes.split(","):
        sh = SHAPES_BY_NAME[name]
        key = jax.random.PRNGKey(0)
        copies = make_qarray_copies(key, sh.n, sh.k, 4, 128, False)
        w = copies[0]
        tiled = [(c, tile_codes(c.data, sh.n, sh.k)) for c in copies]
        for m in map(int, args.ms.split(",")):
            x = jax.random.normal(key, (m, sh.k), jnp.float32).astype(jnp.bfloat16)
            occ = blocks_per_sm_query(x.dtype, w.scale.dtype, m, 128, 4, 8)
            cfg = decode_config(m, sh.n, sh.k, blocks_per_sm=occ)
            print(f"{name} M={m}: {cfg}, blocks/SM {occ(cfg.k_split) if occ else '?'}", flush=True)
            variants = {
                "op": lambda x, wt, cfg=cfg: w4a16_decode(x, wt[0], cfg),
                "kernel": lambda x, wt, cfg=cfg: w4a16_decode(x, wt[0], cfg, partials=True),
                "op tiled": lambda x, wt, cfg=cfg: w4a16_decode(x, wt[0], cfg, tiled=wt[1]),
                "kernel tiled": lambda x, wt, cfg=cfg: w4a16_decode(x, wt[0], cfg, tiled=wt[1], partials=True),
            }
            if args.no_math:
                variants["no-math kernel"] = lambda x, wt, cfg=cfg: _no_math_call(x, wt[0], cfg)
                variants["no-math kernel tiled"] = lambda x, wt, cfg=cfg: _no_math_call(x, wt[0], cfg, wt[1])
            for vname, f in variants.items():
                if args.once:
                    jax.block_until_ready(jax.jit(f)(x, tiled[0]))
                    continue
                us = jax_time_us(f, x, tiled, iterations=10)
                gbs = w.nbytes / (us * 1e-6) / 1e9
                rows.append(f"{name:12s} M={m:<3d} {vname:13s} {us:7.2f} us {gbs:7.0f} GB/s  {cfg}")
                print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


def _register_no_math() -> None:
    """Builds the experiment variant of the library and registers it as ``jquant_w4a16_decode_nomath``."""
    import ctypes
    import subprocess
    import tempfile
    from pathlib import Path

    import jax

    from kernels_cuda import build

    out = Path(tempfile.mkdtemp()) / "libjquant_cuda_nomath.so"
    cmd = build.nvcc_command(out, extra=("-DJQUANT_EXPERIMENT_NO_MATH",))
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    jax.ffi.register_ffi_target("jquant_w4a16_decode_nomath", jax.ffi.pycapsule(lib.JquantW4A16Decode), platform="CUDA")


def _no_math_call(x, w, cfg, tiled=None):
    import jax
    import jax.numpy as jnp
    import numpy as np

    m, k = x.shape
    call = jax.ffi.ffi_call(
        "jquant_w4a16_decode_nomath", jax.ShapeDtypeStruct((cfg.splits(k), m, w.shape[0]), jnp.float32)
    )
    return call(
        x,
        w.data if tiled is None else tiled,
        w.scale,
        jnp.zeros((1,), jnp.uint8),
        group=np.int64(min(w.block[1], k)),
        k_split=np.int64(cfg.k_split),
        bias=np.int64(8),
        has_zero=np.int64(0),
        stages=np.int64(cfg.stages),
        warps=np.int64(cfg.warps),
        tiled=np.int64(tiled is not None),
    )


if __name__ == "__main__":
    sys.exit(main())
