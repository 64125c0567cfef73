"""``python -m bench.qmatmul_wxa16``: the general weight-only Pallas kernel (`jquant.pallas.wxa16`) per code type.

Rows: one (code type, shape, M). Columns (device-side medians, microseconds; `bench.timing`):

* ``jquant``: ``jquant.ops.qmatmul`` on this row's weight: what the dispatcher runs for the code
  type (the ``backend`` column names it; the CUDA decode kernel for 4-bit types at M <= 16).
* ``wxa16``: `jquant.pallas.wxa16.wxa16_qmatmul` with its heuristic tiles, on this row's weight.
* ``xla_dequant_dot``: the GPU fallback these code types run on today (dequantize to bf16 in
  XLA, then the dot), on the same weight.
* ``w4a16``: ``jquant.ops.qmatmul`` on a uint4b8 g128 weight of the same shape: what the 4-bit
  kernels the dispatcher picks (CUDA decode / GEMM / wgmma, else Pallas WNA16) reach; the
  ``w4a16_backend`` column names it. ``wna16``: the Pallas W4A16 kernel forced on that weight
  (decode tiles to M = 64, prefill above). With ``--kinds uint4b8_g128`` the wxa16 row of the
  same weight says whether the general kernel may precede the WNA16 ones in the routing table.
* ``xla_bf16`` / ``torch_bf16``: the dense bf16 weight through XLA / cuBLAS (``F.linear``).

Every column is checked against ``jquant.ops.reference_qmatmul`` (f32 HIGHEST; 16 sampled rows)
before it is timed; one further than `bench.timing.REL_ERR_OK` is ``WRONG`` and not timed. Weights
are random codes (never zeros) with the kind's scale dtype / zero kind, built on the device;
weight copies rotate beyond 2x L2 (`bench.timing.copies_for`).

Writes ``<out>/qmatmul_wxa16.md`` and ``.json`` (card, versions, commit); default out
``bench/results/<card>/``. Progress on stderr, a short table on stdout last::

    python -m bench.qmatmul_wxa16 [--shapes 70b_o,8b_qkv,70b_gate_up] [--ms 1,16,64]
        [--kinds q4_k,nf4,...] [--iters 10] [--budget-s 170] [--out DIR] [--check-only]

``--check-only`` runs every check and no timing (on CPU too: the kernel then runs interpreted;
use a small ``--shapes KxN``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import zlib

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card

import numpy as np  # noqa: E402

from bench.env import card_slug, env_info  # noqa: E402
from bench.shapes import SHAPES_BY_NAME, LinearShape  # noqa: E402
from bench.timing import check_then_time, copies_for, jax_time_us, rel_err, torch_time_us  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Kind:
    """One weight kind: qtype, scale block (bk = -1: per-channel), scale dtype, zero kind, scale2."""

    name: str
    qtype: str
    group: int
    scale_dtype: str
    zero: str | None = None  # None, "float" (offsets), "int" (uint8 codes)
    scale2: bool = False
    note: str = ""


KINDS = {
    k.name: k
    for k in (
        Kind("uint4b8_g128", "uint4b8", 128, "float16", note="GPTQ sym: the W4A16 kernels' own weight"),
        Kind("q4_0", "uint4b8", 32, "float16", note="GGUF Q4_0"),
        Kind("q4_1", "uint4", 32, "float16", "float", note="GGUF Q4_1 (f16 scales and mins)"),
        Kind("q4_k", "uint4", 32, "float32", "float", note="GGUF Q4_K (f32 scales and mins)"),
        Kind("q3_k", "uint3b4", 16, "float32", note="GGUF Q3_K (4-bit containers, g16)"),
        Kind("q5_k", "uint5", 32, "float32", "float", note="GGUF Q5_K (bytes)"),
        Kind("q8_0", "int8", 32, "float16", note="GGUF Q8_0"),
        Kind("iq4_nl", "iq4nl", 32, "float16", note="GGUF IQ4_NL (codebook)"),
        Kind("bnb_fp4", "bnb_fp4", 64, "float32", note="bitsandbytes FP4"),
        Kind("q6_k", "uint6b32", 16, "float32", note="GGUF Q6_K (bytes, g16)"),
        Kind("q2_k", "uint2", 16, "float32", "float", note="GGUF Q2_K"),
        Kind("nf4", "nf4", 64, "float32", note="bitsandbytes NF4"),
        Kind("mxfp4", "fp4_e2m1", 32, "float8_e8m0fnu", note="OCP MXFP4"),
        Kind("nvfp4", "fp4_e2m1", 16, "float8_e4m3fn", scale2=True, note="NVFP4 weights (scale2)"),
        Kind("fp8_channel", "fp8_e4m3", -1, "float32", note="FP8 W8A16 per-channel"),
    )
}
DEFAULT_KINDS = "uint4b8_g128,q4_k,nf4,nvfp4,fp8_channel"
COLS = ("jquant", "wxa16", "xla_dequant_dot", "w4a16", "wna16", "xla_bf16", "torch_bf16")


def _progress(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def parse_shape(name: str) -> LinearShape:
    """A `bench.shapes` name, or ``KxN`` (e.g. ``256x384``)."""
    if name in SHAPES_BY_NAME:
        return SHAPES_BY_NAME[name]
    k, n = (int(v) for v in name.lower().split("x"))
    return LinearShape(f"{k}x{n}", k, n)


def make_weight(key, n: int, k: int, kind: Kind):
    """A random canonical QArray of ``kind`` on the device (non-zero codes, finite scales)."""
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    from jquant.core.qarray import QArray, block_for
    from jquant.core.qtypes import get_qtype

    q = get_qtype(kind.qtype)
    kd, ks, kz = jax.random.split(key, 3)
    block = block_for(n, k, group_size=kind.group)
    sshape = (n, -(-k // block[1]))
    if q.storage is not None:  # fp8 codes: finite values, |v| in [1, 448]
        v = jnp.clip(64.0 * jax.random.normal(kd, (n, k), jnp.float32), -448.0, 448.0)
        data = jnp.where(jnp.abs(v) < 1, jnp.where(v < 0, -1.0, 1.0), v).astype(q.storage_dtype)
    else:
        data = jax.random.randint(kd, (n, k // q.codes_per_byte), 1, 256, dtype=jnp.int32)
        if q.container_bits == 8:
            data = data & ((1 << q.bits) - 1)
        data = data.astype(jnp.uint8)
    sdt = getattr(ml_dtypes, kind.scale_dtype, None) or np.dtype(kind.scale_dtype)
    if kind.scale_dtype == "float8_e8m0fnu":
        scale = (2.0 ** jax.random.randint(ks, sshape, -9, -5)).astype(jnp.float32).astype(sdt)
    elif kind.scale_dtype == "float8_e4m3fn":
        scale = jax.random.uniform(ks, sshape, jnp.float32, 0.5, 4.0).astype(sdt)
    else:
        scale = jax.random.uniform(ks, sshape, jnp.float32, 2e-3, 2e-2).astype(sdt)
    zero = None
    if kind.zero == "float":  # in the scale's dtype, as the GGUF converter stores mins
        zero = jax.random.uniform(kz, sshape, jnp.float32, -0.05, 0.05).astype(scale.dtype)
    elif kind.zero == "int":
        zero = jax.random.randint(kz, sshape, 0, 1 << q.bits, dtype=jnp.int32).astype(jnp.uint8)
    scale2 = jnp.full((1, 1), 4e-3, jnp.float32) if kind.scale2 else None
    return QArray(data=data, scale=scale, zero=zero, scale2=scale2, qtype=q, shape=(n, k), block=block)


class Checker:
    """Relative L2 error against the f32 spec, on 16 sampled rows when M > 16."""

    def __init__(self, x, w):
        import jax.numpy as jnp

        from jquant.ops import reference_qmatmul

        m = x.shape[0]
        self.rows = np.arange(m) if m <= 16 else np.unique(np.linspace(0, m - 1, num=16).astype(int))
        self.ref = np.asarray(reference_qmatmul(x[self.rows], w).astype(jnp.float32))

    def __call__(self, y) -> float:
        import jax.numpy as jnp

        if hasattr(y, "detach"):
            y = y.detach().float().cpu().numpy()
        else:
            y = np.asarray(jnp.asarray(y).astype(jnp.float32))
        return rel_err(y[self.rows], self.ref)


def run_group(shape: LinearShape, m: int, kinds, iters: int, timing: bool) -> list[dict]:
    """Every kind's columns at one (shape, M), plus the shared W4A16 and bf16 columns."""
    import jax
    import jax.numpy as jnp

    import jquant.pallas  # noqa: F401  (registers the backends)
    from jquant.core import jnp_dequant
    from jquant.ops import qmatmul
    from jquant.ops.backend import BACKENDS
    from jquant.ops.qmatmul import XlaDequantDot, load_kernel_packages, select
    from jquant.pallas.wxa16 import DECODE_MAX_M, config_for, wxa16_qmatmul

    gpu = jax.default_backend() == "gpu"
    if gpu:
        load_kernel_packages("gpu")
    n, k = shape.n, shape.k
    key = jax.random.PRNGKey(zlib.crc32(f"{shape.name} {m}".encode()))
    kx, kw4, kk = jax.random.split(key, 3)
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)

    def jtime(f, ws):
        return jax_time_us(f, x, ws, iterations=iters) if timing else float("nan")

    def copies(make):
        w0 = make(0)
        return [w0] + [make(i) for i in range(1, copies_for(w0.nbytes))]

    def jax_col(res, name, f, ws, chk):
        check_then_time(res, name, lambda: chk(jax.jit(f)(x, ws[0])), lambda: jtime(f, ws))

    shared: dict = {}
    w4 = copies(lambda i: make_weight(jax.random.fold_in(kw4, i), n, k, KINDS["uint4b8_g128"]))
    chk4 = Checker(x, w4[0])
    r = select(x, w4[0], platform="gpu" if gpu else None)
    shared["w4a16_backend"] = r.backend.name
    jax_col(shared, "w4a16", lambda x, w: qmatmul(x, w), w4, chk4)
    wna16 = "pallas_triton_wna16_" + ("decode" if m <= DECODE_MAX_M else "prefill")
    if gpu and wna16 in BACKENDS:
        jax_col(shared, "wna16", lambda x, w: qmatmul(x, w, implementation=wna16), w4, chk4)
    dense = [jax.jit(lambda w: jnp_dequant.dequantize(w, jnp.bfloat16))(w4[0])]
    dense += [dense[0] + jnp.bfloat16(0) for _ in range(copies_for(2 * n * k) - 1)]
    f_bf16 = lambda x, wd: jnp.dot(x, wd.T, preferred_element_type=jnp.float32).astype(x.dtype)  # noqa: E731
    jax_col(shared, "xla_bf16", f_bf16, dense, chk4)
    try:
        import torch

        xt, wdt = torch.from_dlpack(x), torch.from_dlpack(dense[0])
        run = lambda: torch.nn.functional.linear(xt, wdt)  # noqa: E731
        check_then_time(
            shared, "torch_bf16", lambda: chk4(run()), lambda: torch_time_us(run) if timing else float("nan")
        )
    except ImportError as e:
        shared["torch_bf16"] = f"n/a ({e})"
    del w4, dense

    out = []
    dequant_dot = XlaDequantDot()
    for kind in kinds:
        kkey = jax.random.fold_in(kk, zlib.crc32(kind.name.encode()))
        ws = copies(lambda i, kind=kind, kkey=kkey: make_weight(jax.random.fold_in(kkey, i), n, k, kind))
        res = {
            "kind": kind.name,
            "shape": shape.name,
            "case": f"{kind.name} {shape.name} M={m}",
            "m": m,
            "n": n,
            "k": k,
            "weight": repr(ws[0]),
            "weight_bytes": ws[0].nbytes,
            "copies": len(ws),
            "wxa16_config": repr(config_for(m, ws[0])),
            **shared,
        }
        chk = Checker(x, ws[0])
        res["backend"] = select(x, ws[0], platform="gpu" if gpu else None).backend.name
        jax_col(res, "jquant", lambda x, w: qmatmul(x, w), ws, chk)
        jax_col(res, "wxa16", lambda x, w: wxa16_qmatmul(x, w, interpret=not gpu), ws, chk)
        jax_col(res, "xla_dequant_dot", dequant_dot, ws, chk)
        out.append(res)
        del ws
    return out


def _num(v) -> float | None:
    return v if isinstance(v, float) and math.isfinite(v) else None


def ratios(r: dict) -> dict:
    """Speed-ups of wxa16 (other time / wxa16 time), and the routed path's standing: ``j_w4a16`` =
    jquant time / W4A16 time (target <= 1.2 for 4-bit types), ``j_bf16`` = faster bf16 / jquant."""
    j = _num(r.get("wxa16"))
    bf = [v for v in (_num(r.get("torch_bf16")), _num(r.get("xla_bf16"))) if v is not None]
    out = {}
    for key, col in (("x_deq", "xla_dequant_dot"), ("x_w4a16", "w4a16"), ("x_wna16", "wna16")):
        v = _num(r.get(col))
        out[key] = v / j if j and v else None
    out["x_bf16"] = min(bf) / j if j and bf else None
    jq, w4 = _num(r.get("jquant")), _num(r.get("w4a16"))
    out["j_w4a16"] = jq / w4 if jq and w4 else None
    out["j_bf16"] = min(bf) / jq if jq and bf else None
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if math.isfinite(v) else "ok"  # NaN: checked, not timed (--check-only)
    return "-" if v is None else str(v)


def _r(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def write_report(out: str, env: dict, results: list[dict], args_line: str) -> str:
    os.makedirs(out, exist_ok=True)
    lines = [
        "# General weight-only kernel (pallas_triton_wxa16) per code type",
        "",
        f"- card: {env['card']}",
        f"- jax {env['jax']} (jaxlib {env['jaxlib']}), torch {env['torch']}, triton {env['triton']}",
        f"- jquant commit: {env['commit']}, run {env['date_utc']} UTC; `{args_line}`",
        "- device-side median times in microseconds (JAX: CUPTI kernel time per call, weight copies rotated"
        " over >= 2x L2; torch: do_bench median, L2 flushed). `x/deq` = xla_dequant_dot / wxa16,"
        " `x/w4a16` = the dispatcher's 4-bit kernel on a uint4b8 g128 weight / wxa16, `x/wna16` = the"
        " Pallas WNA16 kernel on that weight / wxa16, `x/bf16` = faster bf16 / wxa16; `jq/w4a16` ="
        " jquant / w4a16 time (issue 15's target for 4-bit types: <= 1.2), `bf16/jq` = faster bf16 / jquant.",
        "",
        "| case | "
        + " | ".join(COLS)
        + " | jq/w4a16 | bf16/jq | x/deq | x/w4a16 | x/wna16 | x/bf16 | backend | w4a16 backend | wxa16 config |",
        "|---" * (len(COLS) + 10) + "|",
    ]
    for r in results:
        q = ratios(r)
        lines.append(
            f"| {r['case']} | "
            + " | ".join(_fmt(r.get(c)) for c in COLS)
            + f" | {_r(q['j_w4a16'])} | {_r(q['j_bf16'])}"
            + f" | {_r(q['x_deq'])} | {_r(q['x_w4a16'])} | {_r(q['x_wna16'])} | {_r(q['x_bf16'])}"
            + f" | {r.get('backend', '-')} | {r.get('w4a16_backend', '-')} | `{r.get('wxa16_config', '')}` |"
        )
    lines += ["", "Kinds:", ""] + [f"- `{k.name}`: {k.note}" for k in KINDS.values()]
    path = os.path.join(out, "qmatmul_wxa16.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "qmatmul_wxa16.json"), "w") as f:
        json.dump({"env": env, "args": args_line, "results": results}, f, indent=1, default=str)
    return path


def short_table(results: list[dict]) -> str:
    rows = [
        f"{'case':30s} {'jquant':>8s} {'wxa16':>8s} {'deq_dot':>8s} {'w4a16':>8s} {'bf16':>8s}  jq/w4 bf16/jq backend"
    ]
    for r in results:
        q = ratios(r)
        bf = min((v for v in (_num(r.get("torch_bf16")), _num(r.get("xla_bf16"))) if v is not None), default=None)
        bf = r.get("xla_bf16") if bf is None else bf
        rows.append(
            f"{r['case'][:30]:30s} {_fmt(r.get('jquant')):>8s} {_fmt(r.get('wxa16')):>8s}"
            f" {_fmt(r.get('xla_dequant_dot')):>8s} {_fmt(r.get('w4a16')):>8s} {_fmt(bf):>8s}"
            f"  {_r(q['j_w4a16']):>5s} {_r(q['j_bf16']):>7s} {r.get('backend', '-')}"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="results folder (default bench/results/<card>, cpu off a GPU)")
    p.add_argument("--log-dir", default=os.environ.get("OUT"), help="also copy the results here ($OUT on the device)")
    p.add_argument("--shapes", default="70b_o,8b_qkv,70b_gate_up", help="bench.shapes names or KxN")
    p.add_argument("--ms", default="1,16,64")
    p.add_argument("--kinds", default=DEFAULT_KINDS, help="comma list of " + ",".join(KINDS))
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=170.0, help="stop starting new (shape, M) groups after this")
    p.add_argument("--check-only", action="store_true", help="correctness checks only, no timing (runs on CPU)")
    args = p.parse_args(argv)
    t0 = time.time()
    import jax

    kinds = [KINDS[s] for s in args.kinds.split(",")]
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    env = env_info()
    slug = card_slug(env["card"]) if jax.default_backend() == "gpu" else "cpu"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", slug)
    args_line = "python -m bench.qmatmul_wxa16 " + " ".join(argv if argv is not None else sys.argv[1:])
    _progress(json.dumps(env))
    results: list[dict] = []
    with contextlib.redirect_stdout(sys.stderr):  # bench.timing logs to stdout: progress belongs on stderr
        for m in ms:  # every shape at the smallest M first, so a budget cut drops the largest M
            for shape in shapes:
                if time.time() - t0 > args.budget_s:
                    _progress(f"budget reached, skipping {shape.name} M={m} and the rest")
                    break
                _progress(f"{shape.name} M={m}  [{time.time() - t0:.0f}s]")
                results += run_group(shape, m, kinds, args.iters, timing=not args.check_only)
                write_report(out, env, results, args_line)  # keep partial results
    path = write_report(out, env, results, args_line)
    if args.log_dir and os.path.abspath(args.log_dir) != os.path.abspath(out):
        import shutil

        os.makedirs(args.log_dir, exist_ok=True)
        for f in ("qmatmul_wxa16.md", "qmatmul_wxa16.json"):
            shutil.copy(os.path.join(out, f), os.path.join(args.log_dir, f))
    _progress(f"wrote {path} in {time.time() - t0:.0f}s")
    print(f"{env['card']} | jax {env['jax']} | commit {env['commit'][:12]}")
    print(short_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
