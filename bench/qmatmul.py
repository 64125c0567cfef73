"""``python -m bench.qmatmul``: W4A16 / W8A16 qmatmul against cuBLAS and peers, same run, same card.

Columns (all device-side times, microseconds; see `bench.timing`):

* ``torch_bf16``: ``torch.nn.functional.linear`` on the dequantized bf16 weight (cuBLAS).
* ``xla_bf16``: ``x @ W.T`` in XLA on the same bf16 weight (cuBLAS through XLA).
* ``xla_deq``: XLA dequantize the QArray to bf16, then dot (what plain JAX does with the codes).
* ``xla_ref``: ``jquant.ops.reference_qmatmul`` (f32 HIGHEST, the spec; decode M only).
* ``jquant``: the registered Pallas backend the dispatcher picks (decode M <= 64, prefill above).
* ``gemlite``: gemlite ``A16Wn`` (Triton; source carried in ``.bench_vendor/``), if importable.
* ``tinygemm``: ``torch.ops.aten._weight_int4pack_mm`` (4-bit, bf16, groups 32..256).

Every method is checked against the spec (f32 reference on a sample of rows, ||y-ref||/||ref||)
before it is timed; a method that fails the check is reported as ``WRONG`` and not timed.
Weights are random codes and scales (never zeros), activations random normal.

Writes ``<out>/qmatmul.md`` (+ ``qmatmul.png``, ``qmatmul.json``, ``sweep.md``) with the card,
versions and commit; prints a short table last.
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

import numpy as np  # noqa: E402

from bench.env import _log, card_slug, env_info  # noqa: E402
from bench.shapes import M_TABLE, M_VALUES, SHAPES, SHAPES_BY_NAME, LinearShape  # noqa: E402
from bench.timing import REL_ERR_OK, check_then_time, rel_err  # noqa: E402

# Relative L2 error accepted for bf16 outputs of a K-long f32-accumulated dot (bf16 rounding of
# the output alone is 2^-9 = 2e-3; bf16 weights add about as much).


@dataclasses.dataclass
class Case:
    shape: LinearShape
    m: int
    bits: int = 4
    group: int = 128  # -1: per-channel
    zero: bool = False

    @property
    def label(self) -> str:
        g = "pc" if self.group == -1 else f"g{self.group}"
        return f"{self.shape.name} M={self.m} w{self.bits}{g}{'z' if self.zero else ''}"


# ---------------------------------------------------------------------------------------------
# problem construction (on device, random, never zeros)
# ---------------------------------------------------------------------------------------------


def make_qarray(key, n: int, k: int, bits: int, group: int, zero: bool):
    """A random canonical QArray on the device: uint4b8 / uint4+zero / uint8b128 / uint8+zero."""
    import jax
    import jax.numpy as jnp

    from jquant.core.qarray import QArray, block_for
    from jquant.core.qtypes import int_type

    kd, ks, kz = jax.random.split(key, 3)
    block = block_for(n, k, group_size=group)
    ng = -(-k // block[1])
    data = jax.random.randint(kd, (n, k * bits // 8), 0, 256, dtype=jnp.int32).astype(jnp.uint8)
    scale = jax.random.uniform(ks, (n, ng), jnp.float32, 0.002, 0.02).astype(jnp.float16)
    if zero:
        qt = int_type(bits)
        z = jax.random.randint(kz, (n, ng), 0, 1 << bits, dtype=jnp.int32).astype(jnp.uint8)
    else:
        qt = int_type(bits, bias=1 << (bits - 1))
        z = None
    return QArray(data=data, scale=scale, zero=z, qtype=qt, shape=(n, k), block=block)


def make_qarray_copies(key, n: int, k: int, bits: int, group: int, zero: bool, count: int | None = None) -> list:
    """``count`` independent random QArrays to rotate through while timing (default: enough to
    exceed L2, `bench.timing.copies_for`); the first is ``make_qarray(key, ...)``, checked against
    the spec by the callers."""
    import jax

    from bench.timing import copies_for

    w0 = make_qarray(key, n, k, bits, group, zero)
    count = copies_for(w0.nbytes) if count is None else count
    return [w0] + [make_qarray(jax.random.fold_in(key, i), n, k, bits, group, zero) for i in range(1, count)]


# ---------------------------------------------------------------------------------------------
# one case: every method, checked then timed
# ---------------------------------------------------------------------------------------------


def run_case(case: Case, methods: list[str], iters: int, gemlite_mod=None) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    import jquant.pallas  # noqa: F401  (registers the backends)
    from bench.timing import copies_for, jax_time_us, torch_time_us
    from jquant.core import jnp_dequant
    from jquant.ops import qmatmul as ops_qmatmul
    from jquant.ops import reference_qmatmul
    from jquant.ops.backend import BACKENDS
    from jquant.ops.qmatmul import load_kernel_packages, select

    load_kernel_packages("gpu")

    n, k, m = case.shape.n, case.shape.k, case.m
    key = jax.random.PRNGKey(zlib.crc32(case.label.encode()))
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
    qcopies = make_qarray_copies(kw, n, k, case.bits, case.group, case.zero)
    w0, n_q = qcopies[0], len(qcopies)
    qbytes = w0.nbytes
    n_d = copies_for(2 * n * k)
    deq = jax.jit(lambda w: jnp_dequant.dequantize(w, jnp.bfloat16))
    dense = [deq(w) for w in qcopies[: min(n_d, n_q)]]
    while len(dense) < n_d:
        dense.append(dense[-1] + jnp.bfloat16(0))  # distinct buffers, same values

    # the spec on a sample of rows (f32 HIGHEST), against which every method is checked
    rows = np.unique(np.linspace(0, m - 1, num=min(m, 16)).astype(int))
    ref = np.asarray(reference_qmatmul(x[rows], w0).astype(jnp.float32)) if m > 16 else None
    ref_full = None
    res: dict = {
        "case": case.label,
        "m": m,
        "n": n,
        "k": k,
        "bits": case.bits,
        "group": case.group,
        "weight_bytes": qbytes,
        "copies_q": n_q,
        "copies_dense": n_d,
    }

    def error(y) -> float:
        nonlocal ref_full
        if hasattr(y, "detach"):  # torch tensor
            y = y.detach().float().cpu().numpy()
        else:
            y = np.asarray(jnp.asarray(y).astype(jnp.float32))
        if m <= 16:
            if ref_full is None:
                ref_full = np.asarray(reference_qmatmul(x, w0).astype(jnp.float32))
            return rel_err(y, ref_full)
        return rel_err(y[rows], ref)

    def timed(name, run_once, time_fn):
        check_then_time(res, name, lambda: error(run_once()), time_fn)

    if "jquant" in methods:
        backend = select(x, w0, platform="gpu").backend
        res["jquant_backend"] = backend.name
        res["jquant_config"] = repr(backend.config_for(m, w0)) if hasattr(backend, "config_for") else ""
        f = lambda x, w: ops_qmatmul(x, w)  # noqa: E731
        timed("jquant", lambda: jax.jit(f)(x, w0), lambda: jax_time_us(f, x, qcopies, iterations=iters))
    for col, impl in (("pallas_decode", "pallas_triton_wna16_decode"), ("cuda_decode", "cuda_w4a16_decode")):
        if col in methods and BACKENDS.get(impl) is not None and BACKENDS[impl].supports(x, w0)[0]:
            f = lambda x, w, impl=impl: ops_qmatmul(x, w, implementation=impl)  # noqa: E731
            timed(col, lambda f=f: jax.jit(f)(x, w0), lambda f=f: jax_time_us(f, x, qcopies, iterations=iters))
    if "cuda_gemm" in methods and m > 16 and BACKENDS.get("cuda_w4a16_gemm") is not None:
        from kernels_cuda.w4a16_gemm import w4a16_gemm, why_not

        if not why_not(x, w0):  # timed at every M > 16, also past the dispatcher's range (crossover)
            timed(
                "cuda_gemm",
                lambda: jax.jit(w4a16_gemm)(x, w0),
                lambda: jax_time_us(w4a16_gemm, x, qcopies, iterations=iters),
            )
    if "cuda_wgmma" in methods and m > 16 and BACKENDS.get("cuda_w4a16_wgmma") is not None:
        from jquant.ops.device import current_device
        from kernels_cuda.w4a16_wgmma import w4a16_wgmma
        from kernels_cuda.w4a16_wgmma import why_not as wgmma_why_not

        if current_device().cc == (9, 0) and not wgmma_why_not(x, w0):  # also below its dispatched range
            timed(
                "cuda_wgmma",
                lambda: jax.jit(w4a16_wgmma)(x, w0),
                lambda: jax_time_us(w4a16_wgmma, x, qcopies, iterations=iters),
            )
    if "pallas_prefill" in methods and m > 64:  # the fused kernel, also where the dispatcher prefers two-stage
        f = lambda x, w: ops_qmatmul(x, w, implementation="pallas_triton_wna16_prefill")  # noqa: E731
        timed("pallas_prefill", lambda: jax.jit(f)(x, w0), lambda: jax_time_us(f, x, qcopies, iterations=iters))
    if "xla_bf16" in methods:
        f = lambda x, wd: jnp.dot(x, wd.T, preferred_element_type=jnp.float32).astype(x.dtype)  # noqa: E731
        timed("xla_bf16", lambda: jax.jit(f)(x, dense[0]), lambda: jax_time_us(f, x, dense, iterations=iters))
    if "xla_deq" in methods:
        f = lambda x, w: jnp.dot(
            x,
            jnp_dequant.dequantize(w, jnp.bfloat16).T,  # noqa: E731
            preferred_element_type=jnp.float32,
        ).astype(x.dtype)
        timed("xla_deq", lambda: jax.jit(f)(x, w0), lambda: jax_time_us(f, x, qcopies, iterations=iters))
    if "xla_ref" in methods and m <= 16:
        timed(
            "xla_ref",
            lambda: jax.jit(reference_qmatmul)(x, w0),
            lambda: jax_time_us(reference_qmatmul, x, qcopies, iterations=iters),
        )

    # torch side: the same values through dlpack
    xt = torch.from_dlpack(x)
    if "torch_bf16" in methods:
        wts = [torch.from_dlpack(d) for d in dense[:1]]
        timed(
            "torch_bf16",
            lambda: torch.nn.functional.linear(xt, wts[0]),
            lambda: torch_time_us(lambda: torch.nn.functional.linear(xt, wts[0])),
        )
    if "tinygemm" in methods and case.bits == 4 and not case.zero and case.group in (32, 64, 128, 256):
        try:
            data = torch.from_dlpack(w0.data)
            # canonical: even column in the low nibble; tinygemm (torchao's packing): even column high.
            swapped = ((data & 0xF) << 4) | (data >> 4)
            packed = torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), 8)
            s = torch.from_dlpack(w0.scale).to(torch.bfloat16)  # [N, K/G]
            sz = torch.stack([s.t(), torch.zeros_like(s.t())], dim=-1).contiguous()  # w = (q-8)*s + 0
            g = case.group
            run = lambda: torch.ops.aten._weight_int4pack_mm(xt, packed, g, sz)  # noqa: E731
            timed("tinygemm", run, lambda: torch_time_us(run))
        except Exception as e:  # noqa: BLE001
            res["tinygemm"] = f"ERROR {type(e).__name__}"
            _log(f"  tinygemm: ERROR {e}")
    if "gemlite" in methods and gemlite_mod is not None and case.bits in (4, 8):
        try:
            from jquant.core.packing import unpack_codes  # noqa: F401

            codes = torch.from_dlpack(jnp_dequant.unpack_codes(w0.data, case.bits) if case.bits == 4 else w0.data)
            g = k if case.group == -1 else case.group
            s = torch.from_dlpack(w0.scale).to(torch.bfloat16)
            if case.zero:
                z = torch.from_dlpack(w0.zero).to(torch.bfloat16)
            else:
                z = torch.full_like(s, float(w0.qtype.bias))
            from gemlite.helper import A16Wn

            lin = A16Wn(device="cuda:0", dtype=torch.bfloat16).from_weights(
                codes.contiguous(), s.contiguous(), z.contiguous(), W_nbits=case.bits, group_size=g
            )
            run = lambda: lin(xt)  # noqa: E731
            timed("gemlite", run, lambda: torch_time_us(run))
        except Exception as e:  # noqa: BLE001
            res["gemlite"] = f"ERROR {type(e).__name__}"
            _log(f"  gemlite: ERROR {str(e)[:300]}")
    dense.clear()  # free device memory before the next case
    qcopies.clear()
    return res


# ---------------------------------------------------------------------------------------------
# config sweep of the Pallas kernel (tuning data for wna16_config)
# ---------------------------------------------------------------------------------------------


def sweep(
    shape: LinearShape, m: int, configs, iters: int, bits: int = 4, group: int = 128, kernel: str = "pallas"
) -> list[dict]:
    """Times ``kernel`` per config: "pallas" (`wna16_qmatmul`), "cuda" (`kernels_cuda.w4a16_decode`) or
    "cuda_gemm" (`kernels_cuda.w4a16_gemm.w4a16_gemm`) or "cuda_wgmma" (`kernels_cuda.w4a16_wgmma.w4a16_wgmma`)."""
    import jax
    import jax.numpy as jnp

    from bench.timing import jax_time_us
    from jquant.ops import reference_qmatmul

    if kernel == "cuda":
        from kernels_cuda import w4a16_decode as wna16_qmatmul
    elif kernel == "cuda_gemm":
        from kernels_cuda.w4a16_gemm import w4a16_gemm as wna16_qmatmul
    elif kernel == "cuda_wgmma":
        from kernels_cuda.w4a16_wgmma import w4a16_wgmma as wna16_qmatmul
    else:
        from jquant.pallas import wna16_qmatmul

    n, k = shape.n, shape.k
    key = jax.random.PRNGKey(7)
    x = jax.random.normal(key, (m, k), jnp.float32).astype(jnp.bfloat16)
    copies = make_qarray_copies(jax.random.fold_in(key, 1), n, k, bits, group, False)
    w0 = copies[0]
    rows = np.arange(min(m, 16))
    ref = np.asarray(reference_qmatmul(x[rows], w0).astype(jnp.float32))
    out = []
    tiled_copies = None
    for cfg in configs:
        f = lambda x, w, cfg=cfg: wna16_qmatmul(x, w, cfg)  # noqa: E731
        args, label = copies, repr(cfg)
        if isinstance(cfg, tuple):  # (DecodeConfig, tiled): codes pre-tiled once, outside the timing
            from kernels_cuda.w4a16 import tile_codes

            cfg, tiled = cfg
            f = lambda x, w, cfg=cfg: wna16_qmatmul(x, w, cfg)  # noqa: E731
            label = repr(cfg)
            if tiled:
                if tiled_copies is None:
                    tiled_copies = [(w, jax.jit(tile_codes, static_argnums=(1, 2))(w.data, n, k)) for w in copies]
                f = lambda x, wt, cfg=cfg: wna16_qmatmul(x, wt[0], cfg, tiled=wt[1])  # noqa: E731
                args, label = tiled_copies, f"{cfg!r} tiled"
        row = {"shape": shape.name, "m": m, "kernel": kernel, "config": f"g{group} {label}"}
        try:
            y = np.asarray(jax.jit(f)(x, args[0]).astype(jnp.float32))
            row["err"] = rel_err(y[rows], ref)
            row["us"] = jax_time_us(f, x, args, iterations=iters) if row["err"] <= REL_ERR_OK else "WRONG"
        except Exception as e:  # noqa: BLE001
            row["us"] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
        _log(f"  sweep {shape.name} M={m} {label}: {row.get('us')}")
        out.append(row)
    return out


def cuda_sweep_configs(m: int, n: int, k: int):
    """Launch configs of the CUDA decode kernel tried by ``--cuda-sweep``: the heuristic's K split
    and its neighbours, for each ring depth and block size."""
    from kernels_cuda.w4a16 import MAX_SPLIT_BYTES, STEP_K, DecodeConfig, decode_config, smem_bytes

    out = []
    for warps in (4, 8):
        base = decode_config(m, n, k, warps=warps).k_split
        for ks in sorted({base // 2, base, base * 2}):
            ks = max(STEP_K, ks - ks % STEP_K)
            if smem_bytes(ks, m) > MAX_SPLIT_BYTES:
                continue
            out += [(DecodeConfig(k_split=ks, stages=st, warps=warps), t) for st in (4, 8) for t in (False, True)]
    return out


def kslice_sweep_configs(m: int, n: int, k: int):
    """Launch configs tried by ``--kslice-sweep``: 1, 2, 4, 8 in-block K slices x 1..16 grid splits
    (as far as the staged activations fit the kernel's limit), one split stored directly in x's dtype."""
    from kernels_cuda.w4a16 import STAGING_LIMIT_BYTES, STEP_K, DecodeConfig, smem_bytes

    steps = k // STEP_K
    out = []
    for kslices in (1, 2, 4, 8):
        for splits in sorted({1, 2, 3, 4, 6, 8, 11, 16}):
            per = -(-steps // splits)
            if splits > steps or smem_bytes(per * STEP_K, m) > STAGING_LIMIT_BYTES:
                continue
            out.append(DecodeConfig(k_split=per * STEP_K, kslices=kslices, direct=True))
    return list(dict.fromkeys(out))


def gemm_sweep_configs(m: int, n: int, k: int):
    """Launch configs of the CUDA GEMM kernel tried by ``--gemm-sweep``: every block shape with
    M / 4 < bm <= M, both ring depths, and 1, 2, 4, 8 K splits (plus the heuristic's)."""
    from kernels_cuda.w4a16_gemm import STEP_K, TILES, GemmConfig, gemm_config

    steps = k // STEP_K
    splits = sorted({1, 2, 4, 8, gemm_config(m, n, k).splits(k)})
    return [
        GemmConfig(bm=bm, wm=wm, k_split=-(-steps // s) * STEP_K, stages=st)
        for bm, wm in TILES
        if bm <= max(32, m) and (bm * 4 > m or bm == 128)
        for st in (3, 4)
        for s in splits
        if s <= steps
    ]


def wgmma_sweep_configs(m: int, n: int, k: int):
    """Launch configs of the wgmma kernel tried by ``--wgmma-sweep``: every variant, every block
    height up to M (at least 64) with 1, 2, 4, 8 K splits (plus the heuristic's choice)."""
    from kernels_cuda.w4a16_gemm import STEP_K
    from kernels_cuda.w4a16_wgmma import STAGES, VARIANTS, WgmmaConfig, wgmma_config

    steps = k // STEP_K
    best = wgmma_config(m, n, k)
    cfgs = {best} | {
        WgmmaConfig(bm=bm, k_split=-(-steps // s) * STEP_K, variant=v)
        for bm in STAGES
        if bm <= max(64, m)
        for s in (1, 2, 4, 8)
        if s <= steps
        for v in VARIANTS
    }
    return sorted(cfgs, key=lambda c: (c.variant, c.bm, c.k_split))


def sweep_configs(m: int):
    """Tile configs tried by ``--sweep`` (all must lower: tests/pallas/test_wna16_lowering.py).

    The list keeps the winners of earlier sweeps (bench/results/<card>/qmatmul.md) and their
    neighbours; each variant is tried with and without ``split_x``.
    """
    from jquant.pallas.wna16_config import WNA16Config

    base = []
    if m <= 64:
        bm = max(16, 1 << (m - 1).bit_length())
        for bn, bk, split, so in (
            (64, 256, 4, False),
            (64, 256, 4, True),
            (128, 256, 8, False),
            (32, 256, 8, True),
            (64, 512, 8, False),
            (128, 512, 4, True),
        ):
            base.append(WNA16Config(bm=bm, bn=bn, bk=bk, split_k=split, scale_on_output=so))
        base.append(WNA16Config(bm=bm, bn=64, bk=256, split_k=4, scale_on_output=True, swap_ab=True))
        if m == 1:
            for bn, bk, split in ((16, 1024, 4), (32, 512, 4), (16, 512, 8)):
                base.append(WNA16Config(bm=1, bn=bn, bk=bk, split_k=split, scale_on_output=False, gemv=True))
    else:
        for bm, bn, bk, w, st, swap in (
            (64, 128, 128, 4, 4, False),
            (128, 128, 64, 8, 4, True),
            (256, 128, 64, 8, 3, True),
            (256, 128, 64, 8, 3, False),
            (128, 128, 128, 8, 3, False),
        ):
            base.append(
                WNA16Config(bm=bm, bn=bn, bk=bk, num_warps=w, num_stages=st, scale_on_output=False, swap_ab=swap)
            )
    return [c for b in base for c in (b, dataclasses.replace(b, split_x=True))]


# ---------------------------------------------------------------------------------------------
# copy bandwidth ceiling
# ---------------------------------------------------------------------------------------------


def copy_bandwidth_tbs() -> float:
    import torch

    from bench.timing import torch_time_us

    src = torch.randn(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    us = torch_time_us(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e12


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

COLS = (
    "torch_bf16",
    "xla_bf16",
    "xla_deq",
    "xla_ref",
    "gemlite",
    "tinygemm",
    "pallas_prefill",
    "pallas_decode",
    "cuda_decode",
    "cuda_gemm",
    "cuda_wgmma",
    "jquant",
)


def _fmt(v) -> str:
    if isinstance(v, (int, float)):
        return f"{v:.1f}"
    return "-" if v is None else str(v)


def write_report(out: str, env: dict, results: list[dict], sweeps: list[dict], bw_tbs: float) -> str:
    os.makedirs(out, exist_ok=True)
    lines = [
        "# qmatmul benchmark",
        "",
        f"- card: {env['card']}",
        f"- jax {env['jax']} (jaxlib {env['jaxlib']}), torch {env['torch']}, triton {env['triton']}, python {env['python']}",
        f"- jquant commit: {env['commit']}, run {env['date_utc']} UTC",
        f"- copy bandwidth (torch, 1 GiB, read+write): {bw_tbs:.2f} TB/s",
        "- times: device-side median, microseconds (JAX: CUPTI sum of kernels per call, weights rotated over"
        " >= 2x L2; torch: triton do_bench median, L2 flushed). `x/bf16` = torch_bf16 / jquant.",
        "- weights: random codes, fp16 scales; activations bf16 random normal; every method checked"
        f" against the f32 spec (rel. L2 err <= {REL_ERR_OK}) before timing.",
        "",
        "| case | " + " | ".join(COLS) + " | x/bf16 | GB/s (jquant) | % copy BW | backend |",
        "|---" * (len(COLS) + 5) + "|",
    ]
    for r in results:
        j, t = r.get("jquant"), r.get("torch_bf16")
        ratio = f"{t / j:.2f}" if isinstance(j, float) and isinstance(t, float) else "-"
        gbs = r["weight_bytes"] / (j * 1e-6) / 1e9 if isinstance(j, float) else None
        pct = f"{100 * gbs / (bw_tbs * 1e3):.0f}%" if gbs and bw_tbs else "-"
        lines.append(
            f"| {r['case']} | "
            + " | ".join(_fmt(r.get(c)) for c in COLS)
            + f" | {ratio} | {_fmt(gbs)} | {pct} | {r.get('jquant_backend', '-')} |"
        )
    if sweeps:
        lines += ["", "## Config sweeps", "", "| shape | M | kernel | config | us | err |", "|---|---|---|---|---|---|"]
        for s in sweeps:
            lines.append(
                f"| {s['shape']} | {s['m']} | {s.get('kernel', 'pallas')} | `{s['config']}` | {_fmt(s.get('us'))} "
                f"| {_fmt(s.get('err'))} |"
            )
    path = os.path.join(out, "qmatmul.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "qmatmul.json"), "w") as f:
        json.dump({"env": env, "copy_bw_tbs": bw_tbs, "results": results, "sweeps": sweeps}, f, indent=1, default=str)
    try:
        plot(out, env, results)
    except Exception as e:  # noqa: BLE001
        _log(f"plot failed: {e}")
    return path


def plot(out: str, env: dict, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_shape: dict[str, list[dict]] = {}
    for r in results:
        if r["bits"] == 4 and r["group"] == 128 and "z" not in r["case"].split()[-1]:
            by_shape.setdefault(r["case"].split()[0], []).append(r)
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, rs in sorted(by_shape.items()):
        pts = [
            (r["m"], r["torch_bf16"] / r["jquant"])
            for r in rs
            if isinstance(r.get("jquant"), float) and isinstance(r.get("torch_bf16"), float)
        ]
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("speedup over torch bf16 (cuBLAS)")
    ax.set_title(f"jquant W4A16 g128 (dispatcher's kernel) vs bf16 - {env['card'].split(',')[0]}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "qmatmul.png"), dpi=110)
    plt.close(fig)


def short_table(results: list[dict]) -> str:
    rows = [
        "case                          torch_bf16  xla_deq  tinygemm  pallas_d   cuda_d   cuda_g  cuda_wg   jquant   x/bf16"
    ]
    for r in results:
        j, t = r.get("jquant"), r.get("torch_bf16")
        ratio = f"{t / j:6.2f}" if isinstance(j, float) and isinstance(t, float) else "     -"
        rows.append(
            f"{r['case'][:29]:29s} {_fmt(r.get('torch_bf16')):>10s} {_fmt(r.get('xla_deq')):>8s} "
            f"{_fmt(r.get('tinygemm')):>9s} {_fmt(r.get('pallas_decode')):>9s} {_fmt(r.get('cuda_decode')):>8s} "
            f"{_fmt(r.get('cuda_gemm')):>8s} {_fmt(r.get('cuda_wgmma')):>8s} "
            f"{_fmt(r.get('jquant')):>8s} {ratio}"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------


def plan(args) -> list[Case]:
    shapes = [SHAPES_BY_NAME[s] for s in args.shapes.split(",")] if args.shapes else list(SHAPES)
    ms = [int(v) for v in args.ms.split(",")] if args.ms else list(M_TABLE)
    cases = [Case(s, m) for m in ms for s in shapes]  # M-major: a budget cut drops large M last
    if not args.no_extras:
        sq = SHAPES_BY_NAME["70b_o"]
        cases += [Case(sq, m) for m in M_VALUES if m not in ms]  # full M sweep on 8192x8192
        for m in (1, 16):  # group sizes, zero points and 8-bit on the square shape
            cases += [Case(sq, m, group=g) for g in (32, 64, -1)]
            cases += [Case(sq, m, zero=True), Case(sq, m, bits=8), Case(sq, m, bits=8, group=-1)]
        cases += [Case(sq, 1024, bits=8), Case(sq, 1024, zero=True)]
    return cases


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="results folder (default bench/results/<card>)")
    p.add_argument("--log-dir", default=os.environ.get("OUT"), help="also copy results here ($OUT on the device)")
    p.add_argument("--shapes", default="", help="comma list of bench.shapes names (default: all)")
    p.add_argument("--ms", default="", help="comma list of M (default bench.shapes.M_TABLE)")
    p.add_argument(
        "--methods",
        default="torch_bf16,xla_bf16,xla_deq,xla_ref,gemlite,tinygemm,pallas_prefill,pallas_decode,cuda_decode,"
        "cuda_gemm,cuda_wgmma,jquant",
    )
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--sweep", action="store_true", help="also sweep Pallas tile configs on 70b_o / 8b_gate_up")
    p.add_argument("--cuda-sweep", action="store_true", help="sweep the CUDA decode kernel's launch configs")
    p.add_argument("--gemm-sweep", action="store_true", help="sweep the CUDA GEMM kernel's launch configs")
    p.add_argument(
        "--kslice-sweep", action="store_true", help="sweep the CUDA decode kernel's in-block K slices x grid splits"
    )
    p.add_argument("--wgmma-sweep", action="store_true", help="sweep the wgmma kernel's launch configs")
    p.add_argument("--no-extras", action="store_true", help="skip the M sweep / group / 8-bit cases")
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new cases after this many seconds")
    args = p.parse_args(argv)
    t0 = time.time()

    env = env_info()
    _log(json.dumps(env))
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", card_slug(env["card"]))
    gemlite_mod = None
    if "gemlite" in args.methods:
        vendor = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench_vendor")
        if os.path.isdir(vendor):
            sys.path.insert(0, vendor)
        try:
            import gemlite as gemlite_mod  # noqa: F811
        except Exception as e:  # noqa: BLE001
            _log(f"gemlite unavailable: {type(e).__name__}: {e}")
    bw = copy_bandwidth_tbs()
    _log(f"copy bandwidth {bw:.2f} TB/s")

    # (flag, kernel, configs(m, n, k), cases (shape, M, group)) of each launch-config sweep
    plans = (
        (args.sweep, "pallas", lambda m, n, k: sweep_configs(m), [("70b_o", m, 128) for m in (1, 16, 128, 1024)]
         + [("8b_gate_up", 1, 128)]),
        (args.cuda_sweep, "cuda", cuda_sweep_configs,
         [("70b_o", 1, 128), ("70b_o", 16, 128), ("8b_gate_up", 1, 128), ("70b_o", 1, 32)]),
        (args.kslice_sweep, "cuda", kslice_sweep_configs,
         [(s, m, 128) for s, m in (("8b_o", 1), ("8b_qkv", 1), ("8b_down", 1), ("8b_gate_up", 1), ("8b_o", 16),
                                   ("8b_qkv", 16), ("70b_o", 1))]),
        (args.gemm_sweep, "cuda_gemm", gemm_sweep_configs,
         [(s, m, 128) for s, m in (("70b_o", 32), ("70b_o", 64), ("70b_o", 128), ("8b_qkv", 128), ("70b_o", 256),
                                   ("70b_o", 1024))]),
        (args.wgmma_sweep, "cuda_wgmma", wgmma_sweep_configs,
         [(s, m, 128) for s, m in (("70b_o", 128), ("8b_qkv", 256), ("70b_o", 256), ("70b_o", 1024),
                                   ("8b_gate_up", 1024), ("70b_o", 4096))]),
    )  # fmt: skip
    sweeps: list[dict] = []
    for on, kernel, configs, cases in plans:
        for shape, m, g in cases if on else ():
            if time.time() - t0 > args.budget_s:
                break
            sh = SHAPES_BY_NAME[shape]
            sweeps += sweep(sh, m, configs(m, sh.n, sh.k), iters=10, group=g, kernel=kernel)

    methods = args.methods.split(",")
    results = []
    for case in plan(args):
        if time.time() - t0 > args.budget_s:
            _log(f"budget reached, skipping {case.label} and the rest")
            break
        _log(f"{case.label}  [{time.time() - t0:.0f}s]")
        results.append(run_case(case, methods, args.iters, gemlite_mod))
        write_report(out, env, results, sweeps, bw)  # keep partial results
    path = write_report(out, env, results, sweeps, bw)
    if args.log_dir:
        import shutil

        for f in ("qmatmul.md", "qmatmul.json", "qmatmul.png"):
            if os.path.exists(os.path.join(out, f)):
                shutil.copy(os.path.join(out, f), os.path.join(args.log_dir, f))
    _log(f"wrote {path} in {time.time() - t0:.0f}s")
    _log(short_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
