"""``python -m bench.torch_qmatmul``: the Torch bridge's Triton kernels on every weight code type, same run, same card.

Weight-only rows: one (code type, shape, M), bf16 activations. Every code type the converters
produce (`KINDS`): GGUF types converted from random valid blocks by the real converter
(`jquant.formats.gguf.types.to_qarray`, as tests/pallas/test_wxa16_interpret.py builds them), the
others random codes of the right qtype / block / scale dtype / zero kind
(`tests.ops.qmatmul_suite.make_qarray`, as the shared qmatmul suite builds them). Weights of more
than `CONVERT_ROWS` rows are converted once for that many rows and tiled along N (the kernels
read every byte all the same; conversion on the host stays a few seconds per kind).

Columns (microseconds per product):

* ``triton``: ``jquant::qmatmul`` through the routed plan (`torch_bridge.ops.prepare`): the fused
  ``torch_triton_wxa16`` kernel below ``PREFILL_DEQUANT_M`` rows, ``torch_triton_dequant_dot``
  (Triton dequantization -> cuBLAS) from there; ``backend`` names the one that ran;
* ``fused``: at M = ``PREFILL_DEQUANT_M`` also the fused kernel forced, to place the crossover;
* ``torch_bf16``: ``F.linear`` on the dequantized bf16 weight (cuBLAS);
* ``speedup``: torch_bf16 / triton (> 1: faster than bf16);
* ``jax`` (``--jax``): ``jquant.ops.qmatmul`` as the JAX dispatcher routes the same weight, and
  ``triton/jax`` (the issue-15 target is <= 1.15).

W8A8 rows (``--w8a8``; dynamic per-token activation quantization *included* in ``triton``): fp8
e4m3 per-channel weights vs ``torch._scaled_mm`` (``scaled_mm``, ``scaled_mm+q`` with the same
quantization in front); int8 per-channel weights vs ``torch._int_mm`` plus the scale epilogue.

``--sweep``: the decode kernel on 8b_down M = 1 (uint4b8 g128) under a few explicit tile configs
next to the heuristic's, for tuning `torch_bridge.triton.configs`.

Method (BENCH.md): every method is checked against the f32 spec on sampled rows
(``||y - ref|| / ||ref||`` <= `bench.timing.REL_ERR_OK`) before it is timed; torch methods are
timed as CUDA-graph replays (``triton.testing.do_bench_cudagraph``, median) over enough weight
copies to exceed twice the L2, divided by the copies; the JAX column uses `bench.timing.jax_time_us`
(CUPTI, rotated copies). Writes ``<out>/torch_qmatmul.md`` and ``.json`` with card, versions and
commit after every row (a ``--budget-s`` stop or a timeout keeps what ran); prints the table last.

``--check-only`` (alias ``--dry``) runs every check and no timing on tiny shapes on the CPU under
``TRITON_INTERPRET=1``, the decode rows with a forced split-K config::

    python -m bench.torch_qmatmul [--shapes 8b_down,70b_o] [--ms 1,16,128,1024] [--kinds q4_k,nf4]
        [--budget-s 150] [--jax] [--w8a8] [--sweep] [--out DIR] [--check-only]
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
CHECK_ONLY = "--check-only" in sys.argv or "--dry" in sys.argv
if CHECK_ONLY:  # before triton / torch_bridge.triton are imported: @triton.jit reads it at decoration
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["JAX_PLATFORMS"] = "cpu"

import numpy as np  # noqa: E402

from bench.env import _log, env_info  # noqa: E402
from bench.shapes import SHAPES_BY_NAME, LinearShape  # noqa: E402
from bench.timing import check_then_time, rel_err  # noqa: E402

# Weights with more rows are converted for this many and tiled along N.
CONVERT_ROWS = 1024
DEFAULT_SHAPES = "8b_down,70b_o,8b_qkv,70b_gate_up"
DEFAULT_MS = "1,16,128,1024"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One weight code type: a GGUF type converted by jquant's converter, or synthetic codes.

    Attributes:
        name: row label.
        gguf: GGML type name (converted from random valid blocks), or None.
        synth: `tests.ops.qmatmul_suite.QCase` fields (qtype, block, zero, scale_dtype, scale2).
        note: what it stands for.
    """

    name: str
    gguf: str | None = None
    synth: tuple = ()
    note: str = ""


KINDS = {
    k.name: k
    for k in (
        Kind("uint4b8_g128", synth=(("qtype", "uint4b8"), ("block", (1, 128))), note="GPTQ / CT W4A16 sym"),
        Kind(
            "uint4_zero_g128", synth=(("qtype", "uint4"), ("block", (1, 128)), ("zero", "int")), note="AWQ / GPTQ asym"
        ),
        Kind("q4_0", gguf="Q4_0", note="GGUF Q4_0 (uint4b8 g32, f16 scales)"),
        Kind("q4_1", gguf="Q4_1", note="GGUF Q4_1 (f16 float zero, g32)"),
        Kind("q4_k", gguf="Q4_K", note="GGUF Q4_K (f32 d*sc, dmin*m, g32)"),
        Kind("q5_k", gguf="Q5_K", note="GGUF Q5_K (uint5 in bytes, float zero, g32)"),
        Kind("q6_k", gguf="Q6_K", note="GGUF Q6_K (uint6b32 in bytes, g16)"),
        Kind("q8_0", gguf="Q8_0", note="GGUF Q8_0 (int8, g32)"),
        Kind(
            "nf4",
            synth=(("qtype", "nf4"), ("block", (1, 64)), ("scale_dtype", "float32")),
            note="bitsandbytes NF4 g64",
        ),
        Kind(
            "bnb_fp4",
            synth=(("qtype", "bnb_fp4"), ("block", (1, 64)), ("scale_dtype", "float32")),
            note="bitsandbytes FP4 g64",
        ),
        Kind("iq4_nl", gguf="IQ4_NL", note="GGUF IQ4_NL (codebook, g32)"),
        Kind("mxfp4", gguf="MXFP4", note="MXFP4 (e2m1, e8m0 scales, g32)"),
        Kind("nvfp4", gguf="NVFP4", note="NVFP4 (e2m1, e4m3 scales, g16)"),
        Kind(
            "fp8_w8a16",
            synth=(("qtype", "fp8_e4m3"), ("block", "channel"), ("scale_dtype", "float32")),
            note="FP8 W8A16 per-channel",
        ),
        Kind(
            "gptq_2bit",
            synth=(("qtype", "uint2"), ("block", (1, 128)), ("zero", "int")),
            note="2-bit GPTQ asym g128",
        ),
    )
}


def gguf_qarray(name: str, n: int, k: int, seed: int = 0):
    """A canonical QArray converted from random valid GGUF blocks of type ``name`` (random bytes with
    finite fp16 / exponent fields: `tests.fixtures.gguf_files.random_blocks`' recipe)."""
    from jquant.formats.gguf.types import ggml_type, to_qarray
    from tests.fixtures.gguf_files import F16_FIELDS

    rng = np.random.default_rng(seed)
    t = ggml_type(name)
    b = rng.integers(0, 256, (n, k // t.block, t.nbytes), dtype=np.uint8)
    for off in F16_FIELDS.get(name, ()):
        d = (rng.uniform(0.5, 1.5, b.shape[:2]) * 0.05 * rng.choice([-1, 1], b.shape[:2])).astype("<f2")
        b[..., off : off + 2] = d.view(np.uint8).reshape(*b.shape[:2], 2)
    if name == "MXFP4":  # E8M0 exponents around 2^-7
        b[..., 0] = rng.integers(118, 124, b.shape[:2], dtype=np.uint8)
    if name == "NVFP4":  # UE4M3 sub-block scales below 0x7F
        b[..., 0:4] = rng.integers(0x08, 0x30, (*b.shape[:2], 4), dtype=np.uint8)
    return to_qarray(t, b.reshape(n, -1)).validate(name)


def make_weight(kind: Kind, n: int, k: int, seed: int = 0, rows: int = CONVERT_ROWS):
    """Host `QArray` [n, k] of ``kind``: ``min(n, rows)`` rows built by the converter (or the suite's
    random codes), tiled along N to ``n`` rows (every kind has one scale row per weight row)."""
    from jquant.core import QArray
    from tests.ops.qmatmul_suite import QCase, make_qarray

    r = min(n, rows)
    if kind.gguf is not None:
        w = gguf_qarray(kind.gguf, r, k, seed)
    else:
        w = make_qarray(QCase(m=1, n=r, k=k, seed=seed, **dict(kind.synth)))
    if r == n:
        return w
    if w.block[0] != 1:
        raise ValueError(f"{kind.name}: tiling needs one scale row per weight row, block {w.block}")
    reps = -(-n // r)

    def tile(a):
        return None if a is None else np.tile(np.asarray(a), (reps,) + (1,) * (np.ndim(a) - 1))[:n]

    out = QArray(
        data=tile(w.data),
        scale=tile(w.scale),
        zero=tile(w.zero),
        perm=w.perm,
        scale2=w.scale2,
        qtype=w.qtype,
        shape=(n, k),
        block=w.block,
    )
    return out.validate(kind.name)


def time_graph_us(fn, copies: int, dry: bool) -> float:
    """Median time of one ``fn()`` (which runs ``copies`` products) per product, in microseconds."""
    if dry:  # --check-only: the check ran; interpreter timings mean nothing
        return float("nan")
    import triton.testing

    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") / copies


def _copies(bytes_per_copy: int, dry: bool) -> int:
    if dry:
        return 2
    from bench.timing import copies_for

    return copies_for(bytes_per_copy)


class WeightSet:
    """One (kind, shape) weight on the device: rotated torch copies, dense bf16 copies, the f32 spec."""

    def __init__(self, kind: Kind, shape: LinearShape, dev, dry: bool):
        import torch

        import torch_bridge as tb

        self.kind, self.shape, self.dev, self.dry = kind, shape, dev, dry
        n, k = shape.n, shape.k
        self.host = make_weight(kind, n, k, seed=zlib.crc32(kind.name.encode()) % 1000)
        self.nbytes = int(self.host.nbytes)
        nq = _copies(self.nbytes, dry)
        self.copies = [tb.to_torch(self.host, dev) for _ in range(nq)]  # separate device buffers
        self.spec_w = tb.dequantize(self.copies[0])  # f32 [N, K], HF column order
        nd = _copies(2 * n * k, dry)
        d0 = self.spec_w.to(torch.bfloat16)
        self.dense = [d0] + [d0.clone() for _ in range(nd - 1)]
        self.prepared: dict = {}

    def plan(self, implementation=None):
        """Prepared (plan, tensors) of every copy (cached per implementation)."""
        import torch

        from torch_bridge.ops import prepare

        if implementation not in self.prepared:
            self.prepared[implementation] = [
                prepare(w, self.dev, torch.bfloat16, implementation=implementation) for w in self.copies
            ]
        return self.prepared[implementation]


def run_weight_only(ws: WeightSet, m: int, jax_col: bool, iters: int) -> dict:
    import torch

    from jquant.core.routing import by_m
    from torch_bridge.ops import load_plan, qmatmul_prepared
    from torch_bridge.triton.configs import PREFILL_DEQUANT_M

    dry, dev = ws.dry, ws.dev
    n, k = ws.shape.n, ws.shape.k
    label = f"{ws.shape.name} M={m} {ws.kind.name}"
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(label.encode()))
    xt = torch.randn(m, k, generator=g).to(dev, torch.bfloat16)
    rows = np.unique(np.linspace(0, m - 1, num=min(m, 16)).astype(int))
    ref = (xt[rows].float() @ ws.spec_w.T).cpu().numpy()
    res: dict = {"case": label, "kind": ws.kind.name, "shape": ws.shape.name, "m": m, "n": n, "k": k}
    res.update(weight_bytes=ws.nbytes, copies=len(ws.copies))

    def error(y) -> float:
        y = y.detach().float().cpu().numpy() if hasattr(y, "detach") else np.asarray(y, dtype=np.float32)
        return rel_err(y[rows], ref)

    lin = torch.nn.functional.linear
    check_then_time(
        res,
        "torch_bf16",
        lambda: error(lin(xt, ws.dense[0])),
        lambda: time_graph_us(lambda: [lin(xt, d) for d in ws.dense], len(ws.dense), dry),
    )
    impls = [("triton", None)] + ([("fused", "torch_triton_wxa16")] if m == PREFILL_DEQUANT_M else [])
    for col, impl in impls:
        prepared = ws.plan(impl)
        spec0, t0 = prepared[0]
        if col == "triton":
            res["backend"] = by_m(load_plan(spec0), m).backend.name
        check_then_time(
            res,
            col,
            lambda t0=t0, spec0=spec0: error(qmatmul_prepared(xt, t0, spec0)),
            lambda p=prepared: time_graph_us(lambda: [qmatmul_prepared(xt, t, s) for s, t in p], len(p), dry),
        )
    if jax_col:
        import jax
        import jax.numpy as jnp

        from bench.timing import jax_time_us
        from jquant.ops import qmatmul as jqmatmul

        x = jnp.asarray(xt.float().cpu().numpy()).astype(jnp.bfloat16)
        jcopies = [jax.device_put(ws.host) for _ in range(len(ws.copies))]
        f = lambda x, w: jqmatmul(x, w)  # noqa: E731
        check_then_time(
            res, "jax", lambda: error(jax.jit(f)(x, jcopies[0])), lambda: jax_time_us(f, x, jcopies, iterations=iters)
        )
        del jcopies
    base = res.get("torch_bf16")
    for col in ("triton", "fused"):
        if isinstance(res.get(col), float) and isinstance(base, float):
            res[f"{col}_speedup"] = base / res[col]
    if isinstance(res.get("triton"), float) and isinstance(res.get("jax"), float):
        res["triton_over_jax"] = res["triton"] / res["jax"]
    if isinstance(res.get("triton"), float):
        res["triton_TBps"] = (ws.nbytes + 2 * m * (k + n)) / (res["triton"] * 1e-6) / 1e12
    return res


# Decode / mid-M tile variants on 8b_down: (M, kinds, overrides of the heuristic's TileConfig); a
# variant's split_k is `split_k_for`'s choice for its tiles unless given.
SWEEP = (
    (1, ("uint4b8_g128", "q4_k", "nf4"), {}),
    (1, ("uint4b8_g128", "q4_k", "nf4"), {"swap_ab": True}),
    (1, ("uint4b8_g128",), {"block_k": 128}),
    (1, ("uint4b8_g128",), {"block_k": 512}),
    (1, ("uint4b8_g128",), {"num_warps": 8}),
    (1, ("uint4b8_g128",), {"num_stages": 2}),
    (1, ("uint4b8_g128",), {"num_stages": 4}),
    (1, ("uint4b8_g128",), {"block_n": 32}),
    (1, ("uint4b8_g128",), {"block_n": 128}),
    (1, ("uint4b8_g128",), {"block_n": 128, "swap_ab": True}),
    (1, ("uint4b8_g128",), {"split_k": 2}),
    (1, ("uint4b8_g128",), {"split_k": 8}),
    (1, ("uint4b8_g128",), {"split_k": 14}),
    (16, ("uint4b8_g128",), {}),
    (16, ("uint4b8_g128",), {"swap_ab": True}),
    (64, ("uint4b8_g128",), {}),
    (64, ("uint4b8_g128",), {"swap_ab": True}),
    (64, ("uint4b8_g128",), {"block_n": 128, "swap_ab": True, "num_stages": 3}),
    (127, ("uint4b8_g128",), {}),
    (127, ("uint4b8_g128",), {"swap_ab": True}),
    (127, ("uint4b8_g128",), {"block_m": 128, "num_warps": 8, "num_stages": 3, "swap_ab": True}),
)


def run_sweep(dev, dry: bool):
    """The fused kernel (`wxa16_matmul`) under tile variants (`SWEEP`) on 8b_down, bf16 activations;
    yields one result row per (variant, kind)."""
    import torch

    import torch_bridge as tb
    from torch_bridge.triton.backends import TritonWxA16
    from torch_bridge.triton.configs import split_k_for, wxa16_config
    from torch_bridge.triton.wxa16 import num_sms, wxa16_matmul

    shape = LinearShape("tiny", 512, 96) if dry else SHAPES_BY_NAME["8b_down"]
    n, k = shape.n, shape.k
    sets: dict = {}

    def operands(w):
        spec, t = tb.BACKENDS[TritonWxA16.name].prepare(w, dev, torch.bfloat16, None)
        return TritonWxA16.operands(None, t, spec)[1]

    for m, kinds, over in SWEEP[:3] if dry else SWEEP:
        g = torch.Generator(device="cpu").manual_seed(m)
        xt = torch.randn(m, k, generator=g).to(dev, torch.bfloat16)
        for kind in kinds:
            if kind not in sets:
                ws = WeightSet(KINDS[kind], shape, dev, dry)
                sets[kind] = (ws, [operands(w) for w in ws.copies])
            ws, ops = sets[kind]
            ref = (xt.float() @ ws.spec_w.T).cpu().numpy()
            w0 = ws.host
            cfg = wxa16_config(m, n, k, w0.block[1], 2, num_sms(xt), w0.qtype.container_bits)
            cfg = dataclasses.replace(cfg, **over)
            if "split_k" not in over:
                tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
                cfg = dataclasses.replace(cfg, split_k=split_k_for(tiles, -(-k // cfg.block_k), num_sms(xt)))
            if dry:
                cfg = dataclasses.replace(cfg, block_k=min(cfg.block_k, 128), num_stages=1, split_k=2)
            label = ", ".join(f"{a}={b}" for a, b in over.items()) or "heuristic"
            res = {"case": f"{shape.name} M={m} {kind} {label}", "m": m, "config": repr(cfg)}
            check_then_time(
                res,
                "triton",
                lambda x=xt, c=cfg, r=ref, o=ops: rel_err(wxa16_matmul(x, *o[0], config=c).float().cpu().numpy(), r),
                lambda x=xt, c=cfg, o=ops: time_graph_us(
                    lambda: [wxa16_matmul(x, *oi, config=c) for oi in o], len(o), dry
                ),
            )
            yield res


@dataclasses.dataclass(frozen=True)
class ACase:
    shape: LinearShape
    m: int
    scheme: str  # "fp8" / "int8"

    @property
    def label(self) -> str:
        return f"{self.shape.name} M={self.m} w8a8-{self.scheme}"


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


def w8a8_plan(dry: bool) -> list[ACase]:
    if dry:
        tiny = LinearShape("tiny", 256, 192)
        return [ACase(tiny, 7, "fp8"), ACase(tiny, 7, "int8")]
    return [
        ACase(SHAPES_BY_NAME[s], m, sc) for s in ("8b_o", "70b_o") for m in (32, 1024, 4096) for sc in ("fp8", "int8")
    ]


def _fmt(v) -> str:
    if isinstance(v, float) and v != v:  # NaN: --check-only (checked, not timed)
        return "ok"
    if isinstance(v, float):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return "-" if v is None else str(v)


def write_report(out: str, env: dict, wres: list[dict], sres: list[dict], ares: list[dict]) -> str:
    lines = [
        "# Torch bridge Triton kernels: bench/torch_qmatmul.py",
        "",
        f"card: {env['card']}; torch {env.get('torch')}, triton {env.get('triton')}, jax {env.get('jax')}, "
        f"python {env.get('python')}; commit {env['commit']}; {env.get('date_utc')} UTC",
        "",
        "Times in microseconds per product (CUDA-graph replays over weight copies > 2x L2, median; jax: CUPTI). "
        "triton: the routed plan (backend column); fused: the fused kernel forced at the prefill threshold. "
        "speedup = torch_bf16 / triton. TB/s: bytes of codes+scales+x+y over the triton time.",
        "",
        "## Weight-only (bf16 activations)",
        "",
        "| case | backend | triton | torch_bf16 | speedup | TB/s | fused | jax | triton/jax |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in wres:
        lines.append(
            f"| {r['case']} | {r.get('backend', '-')} | {_fmt(r.get('triton'))} | {_fmt(r.get('torch_bf16'))} | "
            f"{_fmt(r.get('triton_speedup'))}x | {_fmt(r.get('triton_TBps'))} | {_fmt(r.get('fused'))} | "
            f"{_fmt(r.get('jax'))} | {_fmt(r.get('triton_over_jax'))} |"
        )
    if sres:
        lines += [
            "",
            "## Tile sweep (fused kernel forced, 8b_down; overrides of the heuristic config)",
            "",
            "| case | triton | config |",
        ]
        lines.append("|---|---|---|")
        lines += [f"| {r['case']} | {_fmt(r.get('triton'))} | `{r['config']}` |" for r in sres]
    if ares:
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
                f"| {r['case']} | {_fmt(r.get('triton'))} | {_fmt(r.get('scaled_mm'))} | "
                f"{_fmt(r.get('scaled_mm+q'))} | {_fmt(r.get('int_mm'))} | {_fmt(r.get('int_mm+q'))} | {_fmt(ratio)} |"
            )
    text = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "torch_qmatmul.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "torch_qmatmul.json"), "w") as f:
        json.dump({"env": env, "weight_only": wres, "sweep": sres, "w8a8": ares}, f, indent=1, default=str)
    return text


def _shape(name: str) -> LinearShape:
    if name in SHAPES_BY_NAME:
        return SHAPES_BY_NAME[name]
    k, n = (int(v) for v in name.lower().split("x"))
    return LinearShape(f"{k}x{n}", k, n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results/local"))
    ap.add_argument(
        "--shapes", default=None, help=f"comma list of bench.shapes names or KxN (default {DEFAULT_SHAPES})"
    )
    ap.add_argument("--ms", default=None, help=f"comma list of M (default {DEFAULT_MS})")
    ap.add_argument(
        "--kinds", default=",".join(KINDS), help="comma list of code types (default: all; none: no weight-only rows)"
    )
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop starting rows after this many seconds (0: none)")
    ap.add_argument("--jax", action="store_true", help="add the JAX dispatcher's time on the same weight")
    ap.add_argument("--w8a8", action="store_true", help="also the W8A8 rows")
    ap.add_argument("--sweep", action="store_true", help="also the decode tile sweep on 8b_down")
    ap.add_argument("--check-only", action="store_true", help="checks only, tiny shapes, CPU interpreter")
    ap.add_argument("--dry", action="store_true", help="alias of --check-only")
    ap.add_argument("--quick", action="store_true", help="accepted for compatibility (the default set is quick)")
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    dry = args.check_only or args.dry

    import torch

    t_start = time.perf_counter()
    env = {"card": "cpu (check only, Triton interpreter)", "commit": os.environ.get("JQUANT_COMMIT", "unknown")}
    if not dry:
        env = env_info()
    else:
        import triton

        env.update(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0])
        env["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    _log(f"env: {env}")
    dev = torch.device("cpu" if dry else "cuda")
    shapes = [_shape(s) for s in (args.shapes or ("512x72" if dry else DEFAULT_SHAPES)).split(",")]
    ms = [int(v) for v in (args.ms or ("1,16,128" if dry else DEFAULT_MS)).split(",")]
    kinds = [KINDS[k] for k in args.kinds.split(",") if k and k != "none"]
    wres, sres, ares = [], [], []

    def over_budget() -> bool:
        return args.budget_s > 0 and time.perf_counter() - t_start > args.budget_s

    if args.sweep:
        for res in run_sweep(dev, dry):
            sres.append(res)
            write_report(args.out, env, wres, sres, ares)
            if over_budget():
                break
    for shape in shapes:
        for kind in kinds:
            if over_budget():
                break
            _log(f"{shape.name} {kind.name}")
            try:
                ws = WeightSet(kind, shape, dev, dry)
            except Exception as e:  # noqa: BLE001  (reported in the table)
                _log(f"  weight: ERROR {type(e).__name__}: {e}")
                wres.append({"case": f"{shape.name} {kind.name}", "triton": f"ERROR {type(e).__name__}"})
                continue
            for m in ms:
                if over_budget():
                    break
                _log(f"  M={m}")
                wres.append(run_weight_only(ws, m, args.jax, args.iters))
                write_report(args.out, env, wres, sres, ares)  # partial results survive a timeout
            del ws
            if not dry:
                torch.cuda.empty_cache()
    if args.w8a8:
        for c in w8a8_plan(dry):
            if over_budget():
                break
            _log(c.label)
            ares.append(run_w8a8(c, dev, dry))
    text = write_report(args.out, env, wres, sres, ares)
    if over_budget():
        _log(f"budget of {args.budget_s:.0f}s spent: later rows not run")
    print(text)
    bad = [r["case"] for r in wres + sres + ares if any(str(r.get(c, "")).startswith(("WRONG", "ERROR")) for c in r)]
    if bad:
        _log(f"{len(bad)} rows WRONG / ERROR: {bad}")
    return 1 if (dry and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
