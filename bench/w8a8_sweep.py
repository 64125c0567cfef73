"""``python -m bench.w8a8_sweep``: the Pallas W8A8 kernel's launch configs and fp8 accumulation modes, on a GPU.

For each (scheme, shape, M) it times `jquant.pallas.w8a8.pallas_w8a8_qmatmul` under several
`W8A8Config`s (tiles, warps, stages, ``imprecise_acc``), the XLA W8A8 path (`xla_w8a8_matmul`),
the activation quantization alone (`quantize_act`) and the kernel alone on pre-quantized codes,
and checks every output against the spec (``reference_qmatmul(fake_quantize(x, act), w)``:
max |err| within the sqrt(K) tolerance of tests/ops/qmatmul_suite.py, rel. L2). Device time per
call (`bench.timing.jax_time_us`, weights rotated past the L2). Writes ``<out>/w8a8_sweep.md`` and
``.json``; prints the table last::

    python -m bench.w8a8_sweep [--shapes 8b_qkv,70b_o] [--ms 1024,4096] [--schemes fp8_pc,fp8_b128] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

from bench.env import env_info  # noqa: E402
from bench.shapes import SHAPES_BY_NAME  # noqa: E402
from bench.timing import copies_for, jax_time_us, rel_err  # noqa: E402

# scheme -> (tests.ops.w8a8_cases weight case, activation recipe)
SCHEMES = {"fp8_pc": "fp8-channel-bf16", "fp8_b128": "fp8-block128", "int8_pc": "int8-channel"}
ACCS = (0, 128, 2**30)


def configs(m: int, accs=ACCS):
    """Candidate `W8A8Config`s for M rows (prefill tiles; decode tiles below 64 rows)."""
    from jquant.pallas.w8a8_triton import W8A8Config

    if m <= 64:
        tiles = [(16, 64, 256, 1, 4, 4), (16, 64, 128, 1, 4, 4), (16, 128, 256, 1, 4, 3), (16, 32, 256, 1, 4, 4)]
        tiles = [(min(max(16, m), 64),) + t[1:] for t in tiles]
    else:
        tiles = [(64, 128, 128, 1, 4, 4), (128, 128, 128, 1, 8, 3), (128, 256, 128, 1, 8, 3)]
    out = []
    for bm, bn, bk, split, warps, stages in tiles:
        for acc in accs:
            out.append(
                W8A8Config(bm=bm, bn=bn, bk=bk, split_k=split, num_warps=warps, num_stages=stages, imprecise_acc=acc)
            )
    return out


def _quantize_only(x, w, act):
    from jquant.ops.act_quant import quantize_act

    del w
    return quantize_act(x, act)[0]


def _record(rows: list, ctx: dict, name: str, fn, *, check: bool = True) -> None:
    """Checks ``fn(x, w)`` against the spec (unless ``check`` is False), times it, appends a row."""
    import jax

    row = dict(ctx["base"], variant=name)
    try:
        if check:
            y = np.asarray(jax.jit(fn)(ctx["x"], ctx["w"]), np.float32)
            row["rel_l2"] = rel_err(y, ctx["ref"])
            row["max_err"] = float(np.abs(y - ctx["ref"]).max())
            row["ok"] = bool((np.abs(y - ctx["ref"]) <= ctx["tol"]).all())
        row["us"] = jax_time_us(fn, ctx["x"], ctx["copies"], iterations=ctx["iters"])
    except Exception as e:  # a config that does not compile: say so, keep going
        row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
    rows.append(row)
    us = f"{row['us']:9.1f}" if "us" in row else "    error"
    b = ctx["base"]
    print(
        f"{b['scheme']:9} {b['shape']:12} M={b['m']:<5} {name:44} {us} {row.get('rel_l2', '')} "
        f"{row.get('ok', row.get('error', ''))}",
        file=sys.stderr,
        flush=True,
    )


def main(argv=None) -> int:
    import jax
    import jax.numpy as jnp

    from jquant.core import jnp_dequant
    from jquant.ops import reference_qmatmul
    from jquant.ops.act_quant import fake_quantize
    from jquant.ops.xla_w8a8 import xla_w8a8_matmul
    from jquant.pallas.w8a8 import config_for, layout_of, pallas_w8a8_qmatmul
    from tests.ops.w8a8_cases import ACTS, WEIGHTS_BY_NAME, make_w8, make_x, to_device

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="8b_qkv,70b_o,70b_gate_up")
    p.add_argument("--ms", default="1024,4096")
    p.add_argument("--schemes", default="fp8_pc,fp8_b128")
    p.add_argument("--accs", default=",".join(map(str, ACCS)), help="W8A8Config.imprecise_acc values")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    cfg_accs = [int(a) for a in args.accs.split(",")]
    t0 = time.time()
    rng = np.random.default_rng(0)
    rows = []
    for scheme in args.schemes.split(","):
        case = WEIGHTS_BY_NAME[SCHEMES[scheme]]
        act = ACTS[case.act]
        for sname in args.shapes.split(","):
            sh = SHAPES_BY_NAME[sname]
            w = to_device(make_w8(rng, sh.n, sh.k, case))
            copies = [jax.tree_util.tree_map(jnp.copy, w) for _ in range(copies_for(sh.n * sh.k))]
            for m in (int(v) for v in args.ms.split(",")):
                if time.time() - t0 > args.budget_s:
                    print(f"budget reached before {scheme} {sname} M={m}", file=sys.stderr)
                    break
                x = make_x(rng, (m, sh.k))
                fq = jax.jit(fake_quantize)(x, act)
                ref = np.asarray(jax.jit(reference_qmatmul)(fq, w), np.float32)
                # tests.pallas.helpers.assert_close's rule: 2^-7 |ref| + 2^-5 sqrt(K) rms(x) rms(W)
                rms_w = float(jnp.sqrt(jnp.mean(jnp_dequant.dequantize(w) ** 2)))
                rms_x = float(jnp.sqrt(jnp.mean(fq.astype(jnp.float32) ** 2)))
                tol = 2.0**-7 * np.abs(ref) + 2.0**-5 * np.sqrt(sh.k) * rms_x * rms_w
                lay = layout_of(w, act)
                base = {"scheme": scheme, "shape": sname, "m": m}

                ctx = dict(base=base, x=x, w=w, copies=copies, ref=ref, tol=tol, iters=args.iters)
                record = functools.partial(_record, rows, ctx)
                record("xla_w8a8", functools.partial(xla_w8a8_matmul, act=act))
                record("quantize_act only", functools.partial(_quantize_only, act=act), check=False)
                record(f"pallas default {config_for(m, lay)}", functools.partial(pallas_w8a8_qmatmul, act=act))
                for cfg in configs(m, tuple(int(a) for a in args.accs.split(","))):
                    if lay.k_blocked and lay.kblk % cfg.bk:
                        continue
                    if not lay.is_int or cfg.imprecise_acc == cfg_accs[0]:
                        c = dataclasses.asdict(cfg)
                        name = "pallas bm{bm} bn{bn} bk{bk} w{num_warps} s{num_stages} acc{imprecise_acc}".format(**c)
                        record(name, functools.partial(pallas_w8a8_qmatmul, act=act, cfg=cfg))
    os.makedirs(args.out, exist_ok=True)
    info = env_info()
    with open(os.path.join(args.out, "w8a8_sweep.json"), "w") as f:
        json.dump({"env": info, "rows": rows}, f, indent=1)
    lines = [
        f"# Pallas W8A8 launch-config / fp8 accumulation sweep\n\n{info}\n",
        "| scheme | shape | M | variant | us | rel L2 | within tol |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        us = f"{r['us']:.1f}" if "us" in r else r.get("error", "")
        lines.append(
            f"| {r['scheme']} | {r['shape']} | {r['m']} | {r['variant']} | {us} | {r.get('rel_l2', '')} | {r.get('ok', '')} |"
        )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "w8a8_sweep.md"), "w") as f:
        f.write(text)
    best = {}
    for r in rows:
        if r["variant"].startswith("pallas bm") and r.get("ok") and "us" in r:
            k = (r["scheme"], r["shape"], r["m"])
            if k not in best or r["us"] < best[k]["us"]:
                best[k] = r
    for r in rows:
        if r["variant"] in ("xla_w8a8",) or r["variant"].startswith("pallas default"):
            k = (r["scheme"], r["shape"], r["m"])
            b = best.get(k)
            print(
                f"{k} {r['variant'][:40]:40} {r.get('us', float('nan')):8.1f}  best pallas: {b['variant'] if b else '-'} {b['us'] if b else float('nan'):8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
