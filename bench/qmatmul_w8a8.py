"""``python -m bench.qmatmul_w8a8``: FP8 / INT8 W8A8 (and FP8 W8A16) qmatmul against cuBLAS and XLA, same run, same card.

Schemes (`SCHEMES`; weights are canonical `QArray`s, activation recipes `ActQuant`s):

* ``fp8_pc``: fp8 e4m3 per-channel weights x dynamic per-token fp8 activations (FP8_DYNAMIC).
* ``fp8_pt``: fp8 per-tensor weights x a static per-tensor activation scale (calibrated once on x).
* ``fp8_b128``: fp8 128x128 block weights x dynamic per-(token, 128-group) activations (DeepSeek-V3).
* ``int8_pc``: int8 per-channel weights x dynamic per-token int8 activations.
* ``fp8_w8a16``: fp8 per-channel weights, bf16 activations (weight-only).

Columns (device-side median microseconds, `bench.timing`; every W8A8 column counts the
quantization of x inside the timed call):

* ``jquant``: ``jquant.ops.qmatmul(x, w, act=act)``, jitted: the dispatcher's pick (its name is
  recorded from ``jquant.ops.explain``).
* ``torch_scaled_mm``: eager torch: per-token amax -> divide -> fp8 cast, then ``torch._scaled_mm``
  (row-wise scales [M, 1] x [1, N], tensor-wise for ``fp8_pt``; block-wise 1x128 x 128x128 through
  ``torch.nn.functional.scaled_mm`` where this torch and card have it, else ``n/a`` with the reason).
  ``scaled_mm_gemm``: the same GEMM on pre-quantized x (what the quantization costs, for reading).
* ``torch_int_mm``: per-token int8 quantization + ``torch._int_mm`` + the f32 scale epilogue;
  ``int_mm_gemm``: ``_int_mm`` alone on pre-quantized x. M <= 16 is padded to 32 rows where
  ``_int_mm`` refuses small M (the padding is counted).
* ``xla_fp8_dot`` / ``xla_int8_dot``: XLA's own ``lax.dot_general`` on the 8-bit operands
  (f32 / int32 accumulation), scales applied after; block-128 as a batched per-group dot (or a
  loop over the K groups when that would not fit). ``xla_deq`` (W8A16): bf16 x against the fp8
  codes cast to bf16, per-channel scale after the dot.
* ``torch_bf16`` / ``xla_bf16``: the dequantized weight in bf16 (cuBLAS / XLA), once per shape and M.

Correctness: the spec is ``jquant.ops.reference_qmatmul(fake_quantize(x, act), w)`` (f32,
HIGHEST; ``reference_qmatmul(x, w)`` for W8A16 and the bf16 columns, which do not quantize x),
on 16 sampled rows when M > 16. A column further than `bench.timing.REL_ERR_OK` from it is
``WRONG`` and not timed. JAX columns rotate weight copies (and as many copies of x, so XLA
cannot share one activation quantization between them) beyond 2x L2.

Writes ``<out>/qmatmul_w8a8.md`` (card, versions, commit; a table per scheme; the BENCH.md
targets, met / not met), ``qmatmul_w8a8.json`` and ``qmatmul_w8a8.png``; default out
``bench/results/<card>/``. Progress goes to stderr, a short table to stdout last::

    python -m bench.qmatmul_w8a8 [--shapes 70b_o,8b_qkv] [--ms 1,16,1024] [--schemes fp8_pc,int8_pc]
        [--iters 20] [--budget-s 300] [--out DIR] [--check-only]

``--shapes`` also takes ``KxN`` (e.g. ``256x384``); ``--check-only`` runs every correctness check
and no timing (works on CPU: the CI test uses it).
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
from bench.shapes import M_TABLE, SHAPES, SHAPES_BY_NAME, LinearShape  # noqa: E402
from bench.timing import REL_ERR_OK, check_then_time, copies_for, jax_time_us, rel_err, torch_time_us  # noqa: E402

FP8_MAX = 448.0
INT8_MAX = 127.0
BLOCK = 128
# XLA block-128 path: one batched per-group dot up to this many bytes of [G, M, N] f32 partials, else a loop.
XLA_BATCHED_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One weight x activation recipe.

    Attributes:
        name: short key (``--schemes``).
        title: what the table heading says.
        wtype: ``"fp8"`` or ``"int8"`` weight codes.
        wgran: ``"channel"``, ``"tensor"`` or ``"block"`` (128x128) weight scales.
        act: ``"token"`` (dynamic per token), ``"tensor_static"``, ``"group"`` (dynamic per
            (token, 128)) or ``None`` (weight-only, bf16 activations).
        peer: the torch column the targets compare against (None: only bf16).
    """

    name: str
    title: str
    wtype: str
    wgran: str
    act: str | None
    peer: str | None

    @property
    def xla_col(self) -> str:
        if self.act is None:
            return "xla_deq"
        return "xla_int8_dot" if self.wtype == "int8" else "xla_fp8_dot"

    @property
    def cols(self) -> tuple[str, ...]:
        peer = {
            "torch_scaled_mm": ("torch_scaled_mm", "scaled_mm_gemm"),
            "torch_int_mm": ("torch_int_mm", "int_mm_gemm"),
        }
        return ("jquant", *peer.get(self.peer, ()), self.xla_col, "torch_bf16", "xla_bf16")


SCHEMES: tuple[Scheme, ...] = (
    Scheme("fp8_pc", "FP8 e4m3 per-channel W x dynamic per-token FP8 A", "fp8", "channel", "token", "torch_scaled_mm"),
    Scheme("fp8_pt", "FP8 per-tensor W x static per-tensor FP8 A", "fp8", "tensor", "tensor_static", "torch_scaled_mm"),
    Scheme(
        "fp8_b128",
        "FP8 128x128 block W x dynamic per-(token, 128) FP8 A (DeepSeek-V3)",
        "fp8",
        "block",
        "group",
        "torch_scaled_mm",
    ),
    Scheme("int8_pc", "INT8 per-channel W x dynamic per-token INT8 A", "int8", "channel", "token", "torch_int_mm"),
    Scheme("fp8_w8a16", "FP8 per-channel W, bf16 A (W8A16)", "fp8", "channel", None, None),
)
SCHEMES_BY_NAME = {s.name: s for s in SCHEMES}
METHODS = (
    "jquant",
    "torch_scaled_mm",
    "scaled_mm_gemm",
    "torch_int_mm",
    "int_mm_gemm",
    "xla",
    "torch_bf16",
    "xla_bf16",
)


def _progress(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def parse_shape(name: str) -> LinearShape:
    """A `bench.shapes` name, or ``KxN`` for an ad-hoc layer (e.g. ``256x384``)."""
    if name in SHAPES_BY_NAME:
        return SHAPES_BY_NAME[name]
    try:
        k, n = (int(v) for v in name.lower().split("x"))
    except ValueError:
        raise SystemExit(f"unknown shape {name!r}: one of {sorted(SHAPES_BY_NAME)} or KxN") from None
    return LinearShape(f"{k}x{n}", k, n)


# ---------------------------------------------------------------------------------------------
# problem construction (on the device, random, never zeros)
# ---------------------------------------------------------------------------------------------


def make_weight(key, n: int, k: int, scheme: Scheme):
    """A random canonical `QArray` of ``scheme``: non-zero fp8 e4m3 / int8 codes, f32 scales."""
    import jax
    import jax.numpy as jnp

    from jquant.core.qarray import QArray, block_for
    from jquant.core.qtypes import fp8_e4m3, int8

    kd, ks = jax.random.split(key)
    if scheme.wtype == "fp8":
        v = jnp.clip(96.0 * jax.random.normal(kd, (n, k), jnp.float32), -FP8_MAX, FP8_MAX)
        v = jnp.where(jnp.abs(v) < 1, jnp.where(v < 0, -1.0, 1.0), v)  # no zero codes
        data = v.astype(jnp.float8_e4m3fn)
        qt = fp8_e4m3
    else:
        c = jax.random.randint(kd, (n, k), -127, 128, dtype=jnp.int32)
        data = jnp.where(c == 0, 1, c).astype(jnp.int8)
        qt = int8
    if scheme.wgran == "block":
        block = (BLOCK, BLOCK)
    else:
        block = block_for(n, k, per=scheme.wgran)
    sshape = (-(-n // block[0]), -(-k // block[1]))
    scale = jax.random.uniform(ks, sshape, jnp.float32, 1e-4, 3e-4)  # |w| ~ 0.02
    return QArray(data=data, scale=scale, qtype=qt, shape=(n, k), block=block).validate()


def make_act(scheme: Scheme, x):
    """The `ActQuant` of ``scheme`` (None for weight-only); the static scale is calibrated on ``x``."""
    import jax.numpy as jnp

    from jquant.core.activation import fp8_act, int8_act

    if scheme.act is None:
        return None
    if scheme.wtype == "int8":
        return int8_act(dynamic=True, granularity="token")
    if scheme.act == "token":
        return fp8_act(dynamic=True, granularity="token")
    if scheme.act == "group":
        return fp8_act(dynamic=True, granularity="group", group_size=BLOCK)
    s = (jnp.max(jnp.abs(x.astype(jnp.float32))) / FP8_MAX).reshape(1)
    return fp8_act(dynamic=False, granularity="tensor", scale=s)


def spec(x, w, act):
    """The f32 spec: ``reference_qmatmul(fake_quantize(x, act), w)`` (plain x when act is None)."""
    import jax.numpy as jnp

    from jquant.ops import reference_qmatmul
    from jquant.ops.act_quant import fake_quantize

    xf = x.astype(jnp.float32)
    if act is not None:
        xf = fake_quantize(xf, act)
    return reference_qmatmul(xf, w)


# ---------------------------------------------------------------------------------------------
# XLA's own 8-bit dot (the peer on the JAX side)
# ---------------------------------------------------------------------------------------------


def xla_quantize(x, act):
    """x [M, K] -> (codes [M, K] fp8 / int8, f32 scales [M, 1] | [1, 1] | [M, K/G]) per ``act``.

    Plain jnp as XLA compiles it, but for the scale: XLA turns ``amax / 448`` into ``amax *
    (1/448)``, one ulp off the spec's division, and with bf16 inputs exact rounding ties are common
    (x / amax = 27 / 28 lands on the e4m3 midpoint 432), so that would move about one code in 64;
    the scale is divided by a constant behind an optimization barrier instead (an [M, units] op).
    ``x / s`` stays XLA's multiplication by the reciprocal (as in vLLM's quantization kernels): a
    code per few thousand lands on the neighbour of the spec's, a few 1e-3 of a K = 1024 row's
    output at most, below the check's tolerance.
    """
    import jax
    import jax.numpy as jnp

    from jquant.core.activation import unit_view

    m, k = x.shape
    xu = unit_view(x.astype(jnp.float32), act)  # [M, 1, K] | [1, 1, MK] | [M, G, 128]
    qmax = INT8_MAX if act.qtype.name == "int8" else FP8_MAX
    if act.dynamic:
        amax = jnp.abs(xu).max(-1, keepdims=True)
        s = amax / jax.lax.optimization_barrier(jnp.full(amax.shape, qmax, jnp.float32))  # IEEE, as the spec
        s = jnp.where(s == 0, jnp.float32(1), s)
    else:
        s = act.scale.astype(jnp.float32).reshape(1, 1, 1)
    if act.qtype.name == "int8":
        q = jnp.round(jnp.clip(xu / s, -INT8_MAX - 1, INT8_MAX)).astype(jnp.int8)
    else:
        q = jnp.clip(xu / s, -FP8_MAX, FP8_MAX).astype(jnp.float8_e4m3fn)
    return q.reshape(m, k), s[..., 0]


def xla_q8_matmul(x, w, act):
    """XLA: quantize x, ``lax.dot_general`` on the 8-bit operands, then the scales; x.dtype out."""
    import jax
    import jax.numpy as jnp

    f32 = jnp.float32
    m, k = x.shape
    n = w.shape[0]
    q, sx = xla_quantize(x, act)
    acc_t = jnp.int32 if w.data.dtype == jnp.int8 else f32
    dims = (((1,), (1,)), ((), ()))
    if w.block[0] == 1 or w.block == tuple(w.shape):  # per-channel [N, 1] / per-tensor [1, 1]
        acc = jax.lax.dot_general(q, w.data, dims, preferred_element_type=acc_t)
        return (acc.astype(f32) * sx * w.scale.astype(f32).T).astype(x.dtype)
    g = k // w.block[1]  # 2-D blocks: per-group partial products, scaled, summed
    sw = jnp.repeat(w.scale.astype(f32), w.block[0], axis=0)[:n]  # [N, G]
    if g * m * n * 4 <= XLA_BATCHED_BYTES:
        part = jax.lax.dot_general(
            q.reshape(m, g, -1), w.data.reshape(n, g, -1), (((2,), (2,)), ((1,), (1,))), preferred_element_type=f32
        )  # [G, M, N]
        return (part * sx.T[:, :, None] * sw.T[:, None, :]).sum(0).astype(x.dtype)
    bk = w.block[1]

    def body(i, acc):
        xs = jax.lax.dynamic_slice_in_dim(q, i * bk, bk, axis=1)
        ws = jax.lax.dynamic_slice_in_dim(w.data, i * bk, bk, axis=1)
        d = jax.lax.dot_general(xs, ws, dims, preferred_element_type=f32)
        sxi = jax.lax.dynamic_index_in_dim(sx, i, axis=1)  # [M, 1]
        swi = jax.lax.dynamic_index_in_dim(sw, i, axis=1, keepdims=False)  # [N]
        return acc + d * sxi * swi[None, :]

    return jax.lax.fori_loop(0, g, body, jnp.zeros((m, n), f32)).astype(x.dtype)


def xla_w8a16_matmul(x, w):
    """XLA weight-only: bf16 x against the codes cast to x.dtype, per-channel scale after the dot."""
    import jax
    import jax.numpy as jnp

    acc = jax.lax.dot_general(x, w.data.astype(x.dtype), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return (acc * w.scale.astype(jnp.float32).T).astype(x.dtype)


# ---------------------------------------------------------------------------------------------
# torch peers (eager; activation quantization inside the timed call)
# ---------------------------------------------------------------------------------------------


_QMAX_T: dict = {}


def torch_quantize(xt, act, static_scale=None):
    """torch twin of `xla_quantize`: (codes [M, K], f32 scales [M, 1] | 0-dim | [M, K/G]).

    ``amax / qmax`` divides by a 0-dim device tensor: torch multiplies by the reciprocal of a
    Python-number divisor on CUDA, one ulp off the spec's scale (see `xla_quantize`).
    """
    import torch

    m, k = xt.shape
    xf = xt.float()
    is_int = act.qtype.name == "int8"
    qmax = INT8_MAX if is_int else FP8_MAX
    if act.granularity == "group":
        xf = xf.view(m, k // act.group_size, act.group_size)
    if act.dynamic:
        key = (qmax, str(xf.device))
        if key not in _QMAX_T:  # made once, outside the timed calls
            _QMAX_T[key] = torch.full((), qmax, device=xf.device)
        s = xf.abs().amax(-1, keepdim=True) / _QMAX_T[key]
        s = torch.where(s == 0, torch.ones_like(s), s)
    else:
        s = static_scale
    if is_int:
        q = (xf / s).clamp(-INT8_MAX - 1, INT8_MAX).round().to(torch.int8)
    else:
        q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if act.granularity == "group":
        return q.view(m, k), s[..., 0]
    return q, s


def torch_weight(w):
    """The QArray's codes as a torch tensor [N, K] (fp8 through a uint8 view: dlpack has no float8)."""
    import jax
    import jax.numpy as jnp
    import torch

    if w.data.dtype == jnp.int8:
        return torch.from_dlpack(w.data)
    return torch.from_dlpack(jax.lax.bitcast_convert_type(w.data, jnp.uint8)).view(torch.float8_e4m3fn)


def torch_block_mm_candidates(m: int):
    """Block-wise fp8 GEMMs this torch may have: ``[(label, fn(q, sx, wq, sw_padded) -> bf16 [M, N])]``.

    ``sx`` is [M, K/128] f32, ``sw_padded`` the [N/128, K/128] weight scales with the K-block axis
    padded to a multiple of 4 (cuBLAS's layout rule). Each candidate is probed (run and checked)
    before timing; the first that works is timed.
    """
    import torch
    import torch.nn.functional as F

    def pad_rows(t, rows, value):
        return torch.nn.functional.pad(t, (0, 0, 0, rows - t.shape[0]), value=value) if rows > t.shape[0] else t

    mp = -(-m // 4) * 4
    out = []
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        st = F.ScalingType

        def v2(q, sx, wq, sw, rows=m):
            q, sx = pad_rows(q, rows, 0), pad_rows(sx, rows, 1.0)
            y = F.scaled_mm(
                q,
                wq.t(),
                sx.t().contiguous().t(),  # 1x128 scales outer-dim-major
                st.BlockWise1x128,
                sw.t(),
                st.BlockWise128x128,
                output_dtype=torch.bfloat16,
            )
            return y[:m]

        out.append(("F.scaled_mm BlockWise1x128 x BlockWise128x128", v2))
        if mp != m:
            out.append((f"F.scaled_mm block-wise, M padded to {mp}", lambda q, sx, wq, sw: v2(q, sx, wq, sw, mp)))

    def legacy(q, sx, wq, sw):
        return torch._scaled_mm(q, wq.t(), sx.t().contiguous().t(), sw.t(), out_dtype=torch.bfloat16)

    out.append(("torch._scaled_mm with block-shaped scales", legacy))
    return out


def int_mm_call(q, wq):
    """``torch._int_mm(q, wq.T)``, padding M to 32 rows where _int_mm refuses M <= 16: (fn, note)."""
    import torch

    try:
        torch._int_mm(q, wq.t())
        return (lambda q: torch._int_mm(q, wq.t())), ""
    except RuntimeError as e:
        m = q.shape[0]
        if m > 16:
            raise
        pad = lambda q: torch.nn.functional.pad(q, (0, 0, 0, 32 - m))  # noqa: E731
        torch._int_mm(pad(q), wq.t())
        return (lambda q: torch._int_mm(pad(q), wq.t())[:m]), f"M padded to 32 ({str(e).splitlines()[0][:80]})"


# ---------------------------------------------------------------------------------------------
# one (shape, M): the bf16 baselines once, then every scheme, checked then timed
# ---------------------------------------------------------------------------------------------


class Checker:
    """Relative L2 error against a spec, on sampled rows when M > 16."""

    def __init__(self, m: int, spec_fn):
        import jax.numpy as jnp

        self.rows = np.arange(m) if m <= 16 else np.unique(np.linspace(0, m - 1, num=16).astype(int))
        self.ref = np.asarray(spec_fn(self.rows).astype(jnp.float32))

    def __call__(self, y) -> float:
        import jax.numpy as jnp

        if hasattr(y, "detach"):  # torch tensor
            y = y.detach().float().cpu().numpy()
        else:
            y = np.asarray(jnp.asarray(y).astype(jnp.float32))
        return rel_err(y[self.rows], self.ref)


def _backend_of(x, w, act) -> tuple[str, str]:
    """(backend name, explain text) of ``qmatmul(x, w, act=act)``."""
    from jquant.ops import explain

    try:
        text = explain(x, w, act=act) if act is not None else explain(x, w)
    except TypeError as e:  # a jquant whose explain() takes no act= yet
        text = explain(x, w) + f"\n  [explain(act=) unavailable: {e}]"
    return text.splitlines()[0].rsplit("->", 1)[-1].strip(), text


class _Group:
    """One (shape, M): x, its torch view and the timers shared by the columns of every scheme."""

    def __init__(self, shape: LinearShape, m: int, methods, iters: int, timing: bool):
        import jax
        import jax.numpy as jnp
        import torch

        self.shape, self.m, self.methods, self.iters, self.timing = shape, m, methods, iters, timing
        key = jax.random.PRNGKey(zlib.crc32(f"{shape.name} {m}".encode()))
        kx, self.kb, self.kw = jax.random.split(key, 3)
        self.x0 = jax.random.normal(kx, (m, shape.k), jnp.float32).astype(jnp.bfloat16)
        self.xt = torch.from_dlpack(self.x0)

    def jtime(self, f, ws) -> float:
        """Device time of ``f(x, w)`` over the weight copies ``ws``, each with its own copy of x."""
        import jax.numpy as jnp

        if not self.timing:
            return float("nan")
        xs = [self.x0] + [self.x0 + jnp.bfloat16(0) for _ in ws[1:]]  # distinct buffers: no shared quantization
        return jax_time_us(lambda _x, p: f(p[0], p[1]), self.x0, list(zip(xs, ws)), iterations=self.iters)

    def ttime(self, run) -> float:
        return torch_time_us(run) if self.timing else float("nan")

    def jax_col(self, res: dict, name: str, f, ws, chk) -> None:
        """Checks ``jit(f)(x, ws[0])`` against ``chk``, then times ``f`` over ``ws``."""
        import jax

        check_then_time(res, name, lambda: chk(jax.jit(f)(self.x0, ws[0])), lambda: self.jtime(f, ws))

    def bf16_baselines(self) -> dict:
        """torch_bf16 / xla_bf16 on a per-channel fp8 weight dequantized to bf16 (shared by every scheme)."""
        import jax
        import jax.numpy as jnp
        import torch

        from jquant.core import jnp_dequant
        from jquant.ops import reference_qmatmul

        n, k = self.shape.n, self.shape.k
        base: dict = {}
        wb = make_weight(self.kb, n, k, SCHEMES_BY_NAME["fp8_pc"])
        dense = [jax.jit(lambda w: jnp_dequant.dequantize(w, jnp.bfloat16))(wb)]
        dense += [dense[0] + jnp.bfloat16(0) for _ in range(copies_for(2 * n * k) - 1)]
        chk = Checker(self.m, lambda r: reference_qmatmul(self.x0[r].astype(jnp.float32), wb))
        if "xla_bf16" in self.methods:
            f = lambda x, wd: jnp.dot(x, wd.T, preferred_element_type=jnp.float32).astype(x.dtype)  # noqa: E731
            self.jax_col(base, "xla_bf16", f, dense, chk)
        if "torch_bf16" in self.methods:
            wdt = torch.from_dlpack(dense[0])
            run = lambda: torch.nn.functional.linear(self.xt, wdt)  # noqa: E731
            check_then_time(base, "torch_bf16", lambda: chk(run()), lambda: self.ttime(run))
        return base

    def scheme(self, scheme: Scheme, base: dict) -> dict:
        """Every column of ``scheme``, checked then timed."""
        import jax

        from jquant.ops import qmatmul as ops_qmatmul

        n, k, m, x0 = self.shape.n, self.shape.k, self.m, self.x0
        ws = [make_weight(jax.random.fold_in(self.kw, 0), n, k, scheme)]
        ws += [make_weight(jax.random.fold_in(self.kw, i), n, k, scheme) for i in range(1, copies_for(ws[0].nbytes))]
        w0 = ws[0]
        act = make_act(scheme, x0)
        res: dict = {
            "scheme": scheme.name,
            "shape": self.shape.name,
            "case": f"{self.shape.name} M={m}",
            "m": m,
            "n": n,
            "k": k,
            "weight_bytes": w0.nbytes,
            "copies": len(ws),
            "act": repr(act),
            "weight": repr(w0),
            **base,
        }
        chk = Checker(m, lambda r: spec(x0[r], w0, act))
        if "jquant" in self.methods:
            res["jquant_backend"], res["jquant_explain"] = _backend_of(x0, w0, act)
            if act is None:
                f = lambda x, w: ops_qmatmul(x, w)  # noqa: E731
            else:
                f = lambda x, w: ops_qmatmul(x, w, act=act)  # noqa: E731
            self.jax_col(res, "jquant", f, ws, chk)
        if "xla" in self.methods:
            f = xla_w8a16_matmul if act is None else (lambda x, w: xla_q8_matmul(x, w, act))
            self.jax_col(res, scheme.xla_col, f, ws, chk)
        if scheme.peer == "torch_scaled_mm":
            _scaled_mm_cols(res, scheme, act, self.xt, w0, self.methods, chk, self.ttime)
        if scheme.peer == "torch_int_mm":
            _int_mm_cols(res, act, self.xt, w0, self.methods, chk, self.ttime)
        return res


def run_group(shape: LinearShape, m: int, schemes, methods, iters: int = 20, timing: bool = True) -> list[dict]:
    """Every scheme of one (shape, M): the bf16 baselines once, then each scheme's columns.

    Args:
        shape: the linear layer.
        m: tokens.
        schemes: `Scheme`s to run.
        methods: column names to run (`METHODS`; ``"xla"`` is the scheme's XLA 8-bit dot).
        iters: timed calls per JAX column (median).
        timing: False checks every column against the spec and times nothing (CPU tests):
            the time recorded for a correct column is then NaN.

    Returns:
        one result dict per scheme: column -> microseconds | "WRONG" | "ERROR <type>" | "n/a",
        ``<column>_err`` relative errors, the jquant backend and notes.
    """
    import jax

    from jquant.ops.qmatmul import load_kernel_packages

    load_kernel_packages(jax.default_backend())
    group = _Group(shape, m, set(methods), iters, timing)
    base = group.bf16_baselines()
    return [group.scheme(s, base) for s in schemes]


def _scaled_mm_cols(res, scheme, act, xt, w0, methods, chk, ttime) -> None:
    import torch

    wq = torch_weight(w0)
    static = torch.from_dlpack(act.scale).view(()) if not act.dynamic else None
    if scheme.wgran == "block":
        sw = torch.from_dlpack(w0.scale)
        sw = torch.nn.functional.pad(sw, (0, -sw.shape[1] % 4), value=1.0)
        q0, s0 = torch_quantize(xt, act)
        mm, reasons = None, []
        for label, fn in torch_block_mm_candidates(xt.shape[0]):
            try:
                e = chk(fn(q0, s0, wq, sw))
                if e > REL_ERR_OK:
                    reasons.append(f"{label}: wrong (rel err {e:.2e})")
                    continue
                mm = lambda q, s, fn=fn: fn(q, s, wq, sw)  # noqa: E731
                res["torch_scaled_mm_api"] = label
                break
            except Exception as ex:  # noqa: BLE001  (reported as n/a)
                reasons.append(f"{label}: {type(ex).__name__}: {str(ex).splitlines()[0][:160] if str(ex) else ''}")
        if mm is None:
            why = "; ".join(reasons)
            res["torch_scaled_mm"] = res["scaled_mm_gemm"] = "n/a"
            res["torch_scaled_mm_note"] = f"no block-wise scaled_mm in torch {torch.__version__} here ({why})"
            _progress(f"  torch_scaled_mm: n/a ({why})")
            return
    else:
        sw = torch.from_dlpack(w0.scale)
        sw = sw.view(()) if scheme.wgran == "tensor" else sw.view(1, -1)  # [1, 1] -> 0-dim; [N, 1] -> [1, N]
        res["torch_scaled_mm_api"] = "torch._scaled_mm " + ("tensor-wise" if scheme.wgran == "tensor" else "row-wise")

        def mm(q, s):
            return torch._scaled_mm(q, wq.t(), s, sw, out_dtype=torch.bfloat16)

    def run():
        q, s = torch_quantize(xt, act, static)
        return mm(q, s)

    if "torch_scaled_mm" in methods:
        check_then_time(res, "torch_scaled_mm", lambda: chk(run()), lambda: ttime(run))
    if "scaled_mm_gemm" in methods:
        qs = torch_quantize(xt, act, static)
        gemm = lambda: mm(*qs)  # noqa: E731
        check_then_time(res, "scaled_mm_gemm", lambda: chk(gemm()), lambda: ttime(gemm))


def _int_mm_cols(res, act, xt, w0, methods, chk, ttime) -> None:
    import torch

    wq = torch_weight(w0)
    sw = torch.from_dlpack(w0.scale).view(1, -1)
    try:
        mm, note = int_mm_call(torch_quantize(xt, act)[0], wq)
    except Exception as ex:  # noqa: BLE001
        res["torch_int_mm"] = res["int_mm_gemm"] = f"ERROR {type(ex).__name__}"
        _progress(f"  torch_int_mm: ERROR {ex}")
        return
    if note:
        res["torch_int_mm_note"] = note

    def run():
        q, s = torch_quantize(xt, act)
        return (mm(q).float() * s * sw).to(torch.bfloat16)

    if "torch_int_mm" in methods:
        check_then_time(res, "torch_int_mm", lambda: chk(run()), lambda: ttime(run))
    if "int_mm_gemm" in methods:
        q0, s0 = torch_quantize(xt, act)
        gemm = lambda: mm(q0)  # noqa: E731
        check_then_time(
            res, "int_mm_gemm", lambda: chk((gemm().float() * s0 * sw).to(torch.bfloat16)), lambda: ttime(gemm)
        )


# ---------------------------------------------------------------------------------------------
# ratios, targets, report
# ---------------------------------------------------------------------------------------------


def _num(v) -> float | None:
    return v if isinstance(v, float) and math.isfinite(v) else None


def ratios(r: dict) -> dict:
    """Speed-ups of jquant (peer time / jquant time): vs the faster bf16, the torch peer, XLA's 8-bit dot."""
    j = _num(r.get("jquant"))
    bf = [v for v in (_num(r.get("torch_bf16")), _num(r.get("xla_bf16"))) if v is not None]
    scheme = SCHEMES_BY_NAME[r["scheme"]]
    peer = _num(r.get(scheme.peer)) if scheme.peer else None
    xla = _num(r.get(scheme.xla_col))
    return {
        "x_bf16": min(bf) / j if j and bf else None,
        "x_peer": peer / j if j and peer else None,
        "x_xla8": xla / j if j and xla else None,
    }


TARGETS = (
    ("peer", "M >= 1024: jquant >= 0.95x torch._scaled_mm / torch._int_mm, activation quantization counted"),
    ("bf16", "M <= 16: jquant >= 1.8x the faster bf16 (torch / XLA)"),
    ("block", "M >= 1024: FP8 block-128 within 1.15x of FP8 per-channel (jquant time ratio)"),
    ("xla8", "M >= 1024: jquant beats XLA's own fp8 / int8 dot"),
)


def targets(results: list[dict]) -> list[dict]:
    """Each BENCH.md W8A8 target: met / not met / not measured, the worst row and every checked row."""
    out = []
    by = {(r["scheme"], r["shape"], r["m"]): r for r in results}
    for key, text in TARGETS:
        rows = []  # (label, value, ok)
        for r in results:
            s, m = SCHEMES_BY_NAME[r["scheme"]], r["m"]
            q = ratios(r)
            if key == "peer" and m >= 1024 and s.peer and q["x_peer"] is not None:
                rows.append((f"{s.name} {r['case']}", q["x_peer"], q["x_peer"] >= 0.95))
            elif key == "bf16" and m <= 16 and q["x_bf16"] is not None:
                rows.append((f"{s.name} {r['case']}", q["x_bf16"], q["x_bf16"] >= 1.8))
            elif key == "xla8" and m >= 1024 and s.act is not None and q["x_xla8"] is not None:
                rows.append((f"{s.name} {r['case']}", q["x_xla8"], q["x_xla8"] > 1.0))
            elif key == "block" and m >= 1024 and s.name == "fp8_b128":
                pc = by.get(("fp8_pc", r["shape"], m))
                jb, jp = _num(r.get("jquant")), _num(pc.get("jquant")) if pc else None
                if jb and jp:
                    rows.append((f"{r['case']}", jb / jp, jb / jp <= 1.15))
        if not rows:
            status, worst = "not measured", None
        else:
            status = "met" if all(ok for *_, ok in rows) else "not met"
            worst = (max if key == "block" else min)(rows, key=lambda t: t[1])
        out.append(
            {
                "target": text,
                "status": status,
                "worst": None if worst is None else {"row": worst[0], "value": round(worst[1], 3)},
                "rows": [{"row": a, "value": round(b, 3), "ok": c} for a, b, c in rows],
            }
        )
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if math.isfinite(v) else "ok"  # NaN: checked, not timed (--check-only)
    return "-" if v is None else str(v)


def _fmt_ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _sorted(results: list[dict]) -> list[dict]:
    order = {s.name: i for i, s in enumerate(SHAPES)}
    return sorted(results, key=lambda r: (order.get(r["shape"], len(order)), r["shape"], r["m"]))


def write_report(out: str, env: dict, results: list[dict], args_line: str = "") -> str:
    os.makedirs(out, exist_ok=True)
    tg = targets(results)
    lines = [
        "# W8A8 / W8A16 qmatmul benchmark (FP8, INT8)",
        "",
        f"- card: {env['card']}",
        f"- jax {env['jax']} (jaxlib {env['jaxlib']}), torch {env['torch']}, triton {env['triton']}, python {env['python']}",
        f"- jquant commit: {env['commit']}, run {env['date_utc']} UTC" + (f"; `{args_line}`" if args_line else ""),
        "- times: device-side median, microseconds (JAX: CUPTI kernel time per call, weight copies and x copies"
        " rotated over >= 2x L2; torch: triton do_bench median, L2 flushed). Every W8A8 column quantizes x inside"
        " the timed call (torch: eager amax / divide / cast kernels).",
        "- `x/bf16` = faster of torch_bf16 and xla_bf16 / jquant; `x/peer` = torch_scaled_mm or torch_int_mm /"
        " jquant; `x/xla8` = XLA's own 8-bit dot / jquant. `*_gemm`: the torch GEMM alone on pre-quantized x.",
        "- weights: random non-zero fp8 e4m3 / int8 codes, f32 scales; x bf16 random normal. Each column checked"
        f" against `reference_qmatmul(fake_quantize(x, act), w)` (bf16 columns: unquantized x) at rel. L2 err <= {REL_ERR_OK}"
        " before timing; `WRONG` columns are not timed.",
        "",
        "## Targets (BENCH.md)",
        "",
        "| target | status | worst row | value |",
        "|---|---|---|---|",
    ]
    for t in tg:
        w = t["worst"] or {}
        lines.append(f"| {t['target']} | **{t['status']}** | {w.get('row', '-')} | {_fmt_ratio(w.get('value'))} |")
    for scheme in SCHEMES:
        rs = _sorted([r for r in results if r["scheme"] == scheme.name])
        if not rs:
            continue
        cols = scheme.cols
        lines += [
            "",
            f"## {scheme.name}: {scheme.title}",
            "",
            f"weight: {rs[0]['weight'].split('(')[1].split(',')[0]} codes, {scheme.wgran} f32 scales"
            f" (e.g. `{rs[0]['weight']}`); activations: `{rs[0]['act']}`",
            "",
            "| case | " + " | ".join(cols) + " | x/bf16 | x/peer | x/xla8 | jquant backend |",
            "|---" * (len(cols) + 5) + "|",
        ]
        notes = []
        for r in rs:
            q = ratios(r)
            lines.append(
                f"| {r['case']} | "
                + " | ".join(_fmt(r.get(c)) for c in cols)
                + f" | {_fmt_ratio(q['x_bf16'])} | {_fmt_ratio(q['x_peer'])} | {_fmt_ratio(q['x_xla8'])}"
                + f" | {r.get('jquant_backend', '-')} |"
            )
            for c in ("torch_scaled_mm_note", "torch_int_mm_note"):
                if r.get(c):
                    notes.append(f"- {r['case']}: {r[c]}")
        apis = sorted({r["torch_scaled_mm_api"] for r in rs if r.get("torch_scaled_mm_api")})
        if apis:
            notes.insert(0, f"- torch peer: {', '.join(apis)}")
        if notes:
            lines += ["", *dict.fromkeys(notes)]
    explains = {r["jquant_explain"] for r in results if r.get("jquant_explain")}
    if explains:
        lines += [
            "",
            "## Dispatcher (`jquant.ops.explain`, one per distinct answer)",
            "",
            "```",
            *sorted(explains),
            "```",
        ]
    path = os.path.join(out, "qmatmul_w8a8.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "qmatmul_w8a8.json"), "w") as f:
        json.dump({"env": env, "args": args_line, "targets": tg, "results": results}, f, indent=1, default=str)
    try:
        plot(out, env, results)
    except Exception as e:  # noqa: BLE001
        _progress(f"plot failed: {type(e).__name__}: {e}")
    return path


def plot(out: str, env: dict, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = [s for s in SCHEMES if any(r["scheme"] == s.name for r in results)]
    if not schemes:
        return
    fig, axes = plt.subplots(1, len(schemes), figsize=(4.2 * len(schemes), 4.2), squeeze=False)
    for ax, s in zip(axes[0], schemes):
        rs = [r for r in results if r["scheme"] == s.name]
        for i, shape in enumerate(dict.fromkeys(r["shape"] for r in _sorted(rs))):
            for key, style, what in (("x_bf16", "-", "vs bf16"), ("x_peer", "--", "vs torch peer")):
                pts = sorted((r["m"], ratios(r)[key]) for r in rs if r["shape"] == shape and ratios(r)[key])
                if pts:
                    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                    ax.plot(xs, ys, style, color=f"C{i}", marker="o", ms=3, label=f"{shape} {what}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)")
        ax.set_title(s.name, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel("jquant speed-up (peer time / jquant time)")
    fig.suptitle(f"jquant W8A8 / W8A16 qmatmul - {env['card'].split(',')[0]} - {env['commit'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "qmatmul_w8a8.png"), dpi=110)
    plt.close(fig)


def short_table(results: list[dict]) -> str:
    rows = [
        f"{'scheme':10s} {'case':22s} {'jquant':>9s} {'peer':>9s} {'xla8':>9s} {'bf16':>9s}  x/peer x/bf16  backend"
    ]
    for r in results:
        s = SCHEMES_BY_NAME[r["scheme"]]
        bf = min((v for v in (_num(r.get("torch_bf16")), _num(r.get("xla_bf16"))) if v is not None), default=None)
        q = ratios(r)
        rows.append(
            f"{s.name:10s} {r['case'][:22]:22s} {_fmt(r.get('jquant')):>9s} {_fmt(r.get(s.peer) if s.peer else None):>9s}"
            f" {_fmt(r.get(s.xla_col)):>9s} {_fmt(bf):>9s}  {_fmt_ratio(q['x_peer']):>6s} {_fmt_ratio(q['x_bf16']):>6s}"
            f"  {r.get('jquant_backend', '-')}"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------


def plan(args) -> list[tuple[LinearShape, int]]:
    """(shape, M) groups: the targets' M (<= 16, >= 1024) first, so that a budget cut drops the middle."""
    shapes = [parse_shape(s) for s in args.shapes.split(",")] if args.shapes else list(SHAPES)
    ms = [int(v) for v in args.ms.split(",")] if args.ms else sorted(set(M_TABLE) | {4096})
    ms = sorted(ms, key=lambda m: (not (m <= 16 or m >= 1024), m))
    return [(s, m) for m in ms for s in shapes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="results folder (default bench/results/<card>, cpu off a GPU)")
    p.add_argument("--log-dir", default=os.environ.get("OUT"), help="also copy the results here ($OUT on the device)")
    p.add_argument("--shapes", default="", help="comma list of bench.shapes names or KxN (default: all)")
    p.add_argument("--ms", default="", help="comma list of M (default: bench.shapes.M_TABLE and 4096)")
    p.add_argument(
        "--schemes", default=",".join(s.name for s in SCHEMES), help="comma list of " + ", ".join(SCHEMES_BY_NAME)
    )
    p.add_argument("--methods", default=",".join(METHODS), help="columns to run (xla: the scheme's XLA 8-bit dot)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new (shape, M) groups after this many s")
    p.add_argument("--check-only", action="store_true", help="correctness checks only, no timing (runs on CPU)")
    args = p.parse_args(argv)
    t0 = time.time()
    import jax

    schemes = [SCHEMES_BY_NAME[s] for s in args.schemes.split(",")]
    methods = set(args.methods.split(","))
    env = env_info()
    slug = card_slug(env["card"]) if jax.default_backend() == "gpu" else "cpu"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", slug)
    args_line = "python -m bench.qmatmul_w8a8 " + " ".join(argv if argv is not None else sys.argv[1:])
    _progress(json.dumps(env))
    results: list[dict] = []
    with contextlib.redirect_stdout(sys.stderr):  # bench.timing logs to stdout: progress belongs on stderr
        for shape, m in plan(args):
            if time.time() - t0 > args.budget_s:
                _progress(f"budget reached, skipping {shape.name} M={m} and the rest")
                break
            _progress(f"{shape.name} M={m}  [{time.time() - t0:.0f}s]")
            results += run_group(shape, m, schemes, methods, args.iters, timing=not args.check_only)
            write_report(out, env, results, args_line)  # keep partial results
    path = write_report(out, env, results, args_line)
    if args.log_dir and os.path.abspath(args.log_dir) != os.path.abspath(out):
        import shutil

        os.makedirs(args.log_dir, exist_ok=True)
        for f in ("qmatmul_w8a8.md", "qmatmul_w8a8.json", "qmatmul_w8a8.png"):
            if os.path.exists(os.path.join(out, f)):
                shutil.copy(os.path.join(out, f), os.path.join(args.log_dir, f))
    _progress(f"wrote {path} in {time.time() - t0:.0f}s")
    print(f"{env['card']} | jax {env['jax']} | torch {env['torch']} | commit {env['commit'][:12]}")
    for t in targets(results):
        w = t["worst"]
        print(f"target: {t['status']:12s} {t['target']}" + (f"  (worst {w['row']}: {w['value']:.2f})" if w else ""))
    print(short_table(_sorted(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
