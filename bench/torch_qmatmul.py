"""``python -m bench.torch_qmatmul``: the Torch bridge's Triton kernels against their peers, same run, same card.

Weight-only (W4A16 g128 symmetric unless noted; random codes and fp16 scales, bf16 activations):

* ``torch_bf16``: ``F.linear`` on the dequantized bf16 weight (cuBLAS), the baseline;
* ``triton``: ``torch_bridge`` ``torch_triton_wxa16`` through the ``jquant::qmatmul`` custom op;
* ``pallas``: ``jquant.ops.qmatmul`` (the Pallas kernel the JAX dispatcher picks), when importable;
* ``tinygemm``: ``torch.ops.aten._weight_int4pack_mm`` (bf16 scales, symmetric 4-bit only).

W8A8 (dynamic per-token activation quantization *included* in ``triton``):

* fp8 e4m3 per-channel weights vs ``torch._scaled_mm`` (row-wise scales) on pre-quantized
  activations (``scaled_mm``) and with the same torch quantization in front (``scaled_mm+q``);
* int8 per-channel weights vs ``torch._int_mm`` plus the scale epilogue, with the quantization
  (``int_mm+q``).

Method (BENCH.md): every method is checked against the f32 spec on sampled rows
(``||y - ref|| / ||ref||`` <= 1e-2 for bf16 outputs) before it is timed; torch methods are timed
as CUDA-graph replays (``triton.testing.do_bench_cudagraph``, median) over enough weight copies
to exceed twice the L2, divided by the copies, so neither host launch overhead nor L2 residency
flatters a kernel; the Pallas column uses `bench.timing.jax_time_us` (CUPTI, rotated copies).
Writes ``<out>/torch_qmatmul.md`` and ``.json`` with card, versions and commit; prints a short
table last. ``--dry`` runs tiny shapes on the CPU (Triton interpreter) to check the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import zlib

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card
if "--dry" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402

from bench.env import _log, env_info  # noqa: E402
from bench.qmatmul import Case as WCase  # noqa: E402  (the weight-only case, shared with the Pallas bench)
from bench.qmatmul import make_qarray_copies  # noqa: E402
from bench.shapes import M_TABLE, SHAPES, SHAPES_BY_NAME, LinearShape  # noqa: E402
from bench.timing import check_then_time, rel_err  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ACase:
    shape: LinearShape
    m: int
    scheme: str  # "fp8" / "int8"

    @property
    def label(self) -> str:
        return f"{self.shape.name} M={self.m} w8a8-{self.scheme}"


def time_graph_us(fn, copies: int, dry: bool) -> float:
    """Median time of one ``fn()`` (which runs ``copies`` products) per product, in microseconds."""
    if dry:
        t0 = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t0) / copies
    import triton.testing

    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") / copies


def _copies(bytes_per_copy: int, dry: bool) -> int:
    if dry:
        return 2
    from bench.timing import copies_for

    return copies_for(bytes_per_copy)


def run_weight_only(case: WCase, dev, iters: int, dry: bool, pallas: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import torch_bridge as tb
    from torch_bridge.ops import prepare, qmatmul_prepared

    n, k, m = case.shape.n, case.shape.k, case.m
    key = jax.random.PRNGKey(zlib.crc32(case.label.encode()))
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
    jcopies = make_qarray_copies(kw, n, k, case.bits, case.group, case.zero, count=2 if dry else None)
    w0, nq = jcopies[0], len(jcopies)
    nd = _copies(2 * n * k, dry)
    xt = torch.from_dlpack(x).to(dev)
    tcopies = [tb.to_torch(w, dev) for w in jcopies]  # DLPack: the JAX buffers themselves on the GPU
    rows = np.unique(np.linspace(0, m - 1, num=min(m, 16)).astype(int))
    wd0 = tb.dequantize(tcopies[0])  # f32 [N, K]: the spec
    ref = (xt[rows].float() @ wd0.T).cpu().numpy()
    dense = [tb.dequantize(w, torch.bfloat16) for w in tcopies[:nd]]
    while len(dense) < nd:
        dense.append(dense[-1].clone())
    del wd0
    res: dict = {"case": case.label, "m": m, "n": n, "k": k, "weight_bytes": w0.nbytes, "copies": nq}

    def error(y) -> float:
        y = y.detach().float().cpu().numpy() if hasattr(y, "detach") else np.asarray(y, dtype=np.float32)
        return rel_err(y[rows], ref)

    def timed(name, run_once, run_all, copies):
        check_then_time(res, name, lambda: error(run_once()), lambda: run_all(copies))

    lin = torch.nn.functional.linear
    timed(
        "torch_bf16",
        lambda: lin(xt, dense[0]),
        lambda c: time_graph_us(lambda: [lin(xt, d) for d in dense], len(dense), dry),
        nd,
    )
    prepared = [prepare(w, dev, torch.bfloat16, implementation="torch_triton_wxa16") for w in tcopies]
    spec = prepared[0][0]
    timed(
        "triton",
        lambda: qmatmul_prepared(xt, prepared[0][1], spec),
        lambda c: time_graph_us(lambda: [qmatmul_prepared(xt, t, s) for s, t in prepared], len(prepared), dry),
        nq,
    )
    if case.bits == 4 and not case.zero and case.group in (32, 64, 128, 256) and not dry:
        packs = []
        for w in tcopies:
            d = w.data
            swapped = ((d & 0xF) << 4) | (d >> 4)  # canonical even column low nibble; tinygemm's high
            p = torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), 8)
            s = w.scale.to(torch.bfloat16)
            packs.append((p, torch.stack([s.t(), torch.zeros_like(s.t())], dim=-1).contiguous()))
        g = case.group
        mm = torch.ops.aten._weight_int4pack_mm
        timed(
            "tinygemm",
            lambda: mm(xt, packs[0][0], g, packs[0][1]),
            lambda c: time_graph_us(lambda: [mm(xt, p, g, sz) for p, sz in packs], len(packs), dry),
            nq,
        )
    if pallas:
        from bench.timing import jax_time_us
        from jquant.ops import qmatmul as ops_qmatmul

        f = lambda x, w: ops_qmatmul(x, w)  # noqa: E731
        timed("pallas", lambda: jax.jit(f)(x, w0), lambda c: jax_time_us(f, x, jcopies, iterations=iters), nq)
    for name in ("triton", "tinygemm", "pallas"):
        if isinstance(res.get(name), float) and isinstance(res.get("torch_bf16"), float):
            res[f"{name}_speedup"] = res["torch_bf16"] / res[name]
    if isinstance(res.get("triton"), float) and isinstance(res.get("pallas"), float):
        res["triton_over_pallas"] = res["triton"] / res["pallas"]
    if isinstance(res.get("triton"), float):
        res["triton_TBps"] = (w0.nbytes + 2 * m * (k + n)) / (res["triton"] * 1e-6) / 1e12
    return res


def run_w8a8(case: ACase, dev, dry: bool) -> dict:
    import torch

    import torch_bridge as tb
    from jquant.core.qarray import QArray
    from jquant.core.qtypes import fp8_e4m3, int8
    from torch_bridge import act_quant as aq
    from torch_bridge.ops import prepare, qmatmul_prepared

    n, k, m = case.shape.n, case.shape.k, case.m
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(case.label.encode()))
    x = torch.randn(m, k, generator=g).to(dev, torch.bfloat16)
    nq = _copies(n * k, dry)
    ws = []
    for i in range(nq):
        gi = torch.Generator(device="cpu").manual_seed(i)
        if case.scheme == "fp8":
            codes = (torch.randn(n, k, generator=gi) * 2).to(torch.float8_e4m3fn)
            qt = fp8_e4m3
        else:
            codes = torch.randint(-127, 128, (n, k), generator=gi, dtype=torch.int8)
            qt = int8
        scale = torch.rand(n, 1, generator=gi) * 0.01 + 0.001
        ws.append(QArray(data=codes.to(dev), scale=scale.to(dev), qtype=qt, shape=(n, k), block=(1, k)))
    rows = np.unique(np.linspace(0, m - 1, num=min(m, 16)).astype(int))
    desc = aq.resolve(case.scheme, k, k)
    ref = (aq.fake_quant(x[rows], desc) @ tb.dequantize(ws[0]).T).cpu().numpy()
    res: dict = {"case": case.label, "m": m, "n": n, "k": k, "copies": nq}

    def timed(name, run_once, run_all):
        check_then_time(res, name, lambda: rel_err(run_once().float().cpu().numpy()[rows], ref), run_all)

    impl = f"torch_triton_w8a8_{case.scheme}"
    prepared = [prepare(w, dev, torch.bfloat16, act_quant=case.scheme, implementation=impl) for w in ws]
    timed(
        "triton",
        lambda: qmatmul_prepared(x, prepared[0][1], prepared[0][0]),
        lambda: time_graph_us(lambda: [qmatmul_prepared(x, t, s) for s, t in prepared], nq, dry),
    )
    if not dry:
        wt = [(w.data.t(), w.scale.reshape(1, n).float()) for w in ws]  # column-major B for cuBLASLt
        kind = "fp8" if case.scheme == "fp8" else "int8"
        xq, xs = aq.quantize(x, kind, 0)
        if case.scheme == "fp8":
            smm = torch._scaled_mm
            one = lambda xq, xs, b, bs: smm(xq, b, scale_a=xs, scale_b=bs, out_dtype=torch.bfloat16)  # noqa: E731
            timed(
                "scaled_mm",
                lambda: one(xq, xs, *wt[0]),
                lambda: time_graph_us(lambda: [one(xq, xs, *p) for p in wt], nq, dry),
            )

            def with_q(b, bs):
                q, s = aq.quantize(x, "fp8", 0)
                return one(q, s, b, bs)

            timed(
                "scaled_mm+q", lambda: with_q(*wt[0]), lambda: time_graph_us(lambda: [with_q(*p) for p in wt], nq, dry)
            )
        else:

            def int_mm_q(b, bs):
                q, s = aq.quantize(x, "int8", 0)
                return (torch._int_mm(q, b).float() * s * bs).to(torch.bfloat16)

            timed(
                "int_mm+q", lambda: int_mm_q(*wt[0]), lambda: time_graph_us(lambda: [int_mm_q(*p) for p in wt], nq, dry)
            )
            timed(
                "int_mm",
                lambda: (torch._int_mm(xq, wt[0][0]).float() * xs * wt[0][1]).to(torch.bfloat16),
                lambda: time_graph_us(lambda: [torch._int_mm(xq, b) for b, _ in wt], nq, dry),
            )
    peer = "scaled_mm" if case.scheme == "fp8" else "int_mm"
    for p in (peer, f"{peer}+q"):
        if isinstance(res.get("triton"), float) and isinstance(res.get(p), float):
            res[f"triton_vs_{p}"] = res[p] / res["triton"]
    return res


def plan(quick: bool, dry: bool) -> tuple[list[WCase], list[ACase]]:
    if dry:
        tiny = LinearShape("tiny", 256, 192)
        return [WCase(tiny, 1), WCase(tiny, 33, zero=True), WCase(tiny, 130), WCase(tiny, 5, bits=8, group=-1)], [
            ACase(tiny, 7, "fp8"),
            ACase(tiny, 7, "int8"),
        ]
    w = []
    shapes = [SHAPES_BY_NAME[s] for s in ("8b_qkv", "8b_down", "70b_o", "70b_gate_up")] if quick else list(SHAPES)
    for s in shapes:
        for m in M_TABLE:
            w.append(WCase(s, m))
    o = SHAPES_BY_NAME["70b_o"]
    w += [
        WCase(o, 1, zero=True),
        WCase(o, 16, zero=True),
        WCase(o, 1, bits=8, group=-1),
        WCase(o, 16, bits=8, group=-1),
    ]
    a = [ACase(SHAPES_BY_NAME[s], m, sc) for s in ("8b_o", "70b_o") for m in (32, 1024, 4096) for sc in ("fp8", "int8")]
    return w, a


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return "-" if v is None else str(v)


def write_report(out: str, env: dict, wres: list[dict], ares: list[dict]) -> str:
    lines = [
        "# Torch bridge Triton kernels: bench/torch_qmatmul.py",
        "",
        f"card: {env['card']}; torch {env['torch']}, triton {env['triton']}, jax {env['jax']}, "
        f"python {env['python']}; commit {env['commit']}; {env['date_utc']} UTC",
        "",
        "Times in microseconds per product (CUDA-graph replays over weight copies > 2x L2, median; "
        "pallas: CUPTI). speedup = torch_bf16 / method. TB/s: bytes of codes+scales+x+y over the triton time.",
        "",
        "## Weight-only (bf16 activations)",
        "",
        "| case | torch_bf16 | triton | speedup | TB/s | pallas | triton/pallas | tinygemm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in wres:
        lines.append(
            f"| {r['case']} | {_fmt(r.get('torch_bf16'))} | {_fmt(r.get('triton'))} | {_fmt(r.get('triton_speedup'))}x | "
            f"{_fmt(r.get('triton_TBps'))} | {_fmt(r.get('pallas'))} | {_fmt(r.get('triton_over_pallas'))} | "
            f"{_fmt(r.get('tinygemm'))} |"
        )
    lines += [
        "",
        "## W8A8 (dynamic per-token activation quantization included in triton)",
        "",
        "| case | triton | scaled_mm | scaled_mm+q | int_mm | int_mm+q | peer / triton |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ares:
        ratio = r.get("triton_vs_scaled_mm+q", r.get("triton_vs_int_mm+q"))
        lines.append(
            f"| {r['case']} | {_fmt(r.get('triton'))} | {_fmt(r.get('scaled_mm'))} | {_fmt(r.get('scaled_mm+q'))} | "
            f"{_fmt(r.get('int_mm'))} | {_fmt(r.get('int_mm+q'))} | {_fmt(ratio)} |"
        )
    text = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "torch_qmatmul.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "torch_qmatmul.json"), "w") as f:
        json.dump({"env": env, "weight_only": wres, "w8a8": ares}, f, indent=1, default=str)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/local"))
    ap.add_argument("--quick", action="store_true", help="4 shapes instead of 8")
    ap.add_argument("--dry", action="store_true", help="tiny shapes on the CPU interpreter (checks the script)")
    ap.add_argument("--no-pallas", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)

    import torch

    env = {"card": "cpu (dry run)", "commit": os.environ.get("JQUANT_COMMIT", "unknown")}
    if not args.dry:
        env = env_info()
    else:
        import jax
        import triton

        env.update(
            torch=torch.__version__, triton=triton.__version__, jax=jax.__version__, python=sys.version.split()[0]
        )
        env["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    _log(f"env: {env}")
    dev = torch.device("cpu" if args.dry else "cuda")
    pallas = not args.no_pallas
    if pallas:
        try:
            import jquant.pallas  # noqa: F401  (registers the Pallas backends)
        except Exception as e:  # noqa: BLE001
            _log(f"pallas column off: {type(e).__name__}: {e}")
            pallas = False
    wcases, acases = plan(args.quick, args.dry)
    wres, ares = [], []
    for c in wcases:
        _log(c.label)
        wres.append(run_weight_only(c, dev, args.iters, args.dry, pallas))
        write_report(args.out, env, wres, ares)  # partial results survive a timeout
    for c in acases:
        _log(c.label)
        ares.append(run_w8a8(c, dev, args.dry))
        write_report(args.out, env, wres, ares)
    text = write_report(args.out, env, wres, ares)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
