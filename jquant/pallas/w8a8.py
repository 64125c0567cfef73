"""W8A8 (fp8 e4m3 / int8) quantized matmul on the Pallas-Triton kernel: public op, checks, tile heuristic.

``pallas_w8a8_qmatmul(x, w, act)`` quantizes the activations with
`jquant.ops.act_quant.quantize_act` (one fused XLA pass: codes + f32 scales) and runs the 8-bit
kernel of `jquant.pallas.w8a8_triton` on the canonical weight codes as stored. It computes the
spec ``reference_qmatmul(fake_quantize(x, act), w)`` (up to f32 summation order and the output
rounding). Not a registered backend: the dispatcher wires it in.

Tiles (`decode_config` / `prefill_config`, picked by `config_for`): decode (M <= `DECODE_MAX_M`)
is bandwidth-bound on the N*K weight bytes: a 16..64-row M tile, narrow N tiles (64) and split-K
until the grid has about one program per SM; prefill uses 64x128 / 128x128 tensor-core tiles.
``bk`` divides the scale block along K when the scales change along K. These are first guesses
from the Torch-side W8A8 kernel's configs (`torch_bridge.triton.configs.w8a8_config`), not yet
swept on a GPU.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.qarray import QArray, register_pytree
from jquant.ops.act_quant import quantize_act
from jquant.ops.backend import Backend, why_not_operands
from jquant.ops.device import NUM_SMS_DEFAULT
from jquant.ops.device import num_sms as device_num_sms
from jquant.ops.xla_w8a8 import (
    W8A8_CAPS,
    w8a8_code_kind,
    w8a8_geometry,
    w8a8_pair_reason,
    weight_scales_f32,
)
from jquant.pallas.launch import pow2_at_least
from jquant.pallas.w8a8_triton import MIN_BK, W8A8Config, W8A8Layout, w8a8_matmul

__all__ = [
    "pallas_w8a8_qmatmul",
    "why_not",
    "layout_of",
    "config_for",
    "decode_config",
    "prefill_config",
    "DECODE_MAX_M",
    "PallasW8A8",
]

register_pytree()

# Largest M that gets the split-K decode tiles.
DECODE_MAX_M = 64


def _why_not_more(call) -> str:
    """`w8a8_pair_reason`, and the two scales' K blocks must share a multiple of `MIN_BK` (the
    smallest 8-bit dot K)."""
    why = w8a8_pair_reason(call)
    group = int(call.act.partition(":group")[2] or 0)
    blocks = [b for b in (group, call.block[1]) if 0 < b < call.k]
    if not why and blocks and math.gcd(*blocks) % MIN_BK:
        why = f"K scale blocks {blocks}: their gcd is not a multiple of {MIN_BK} (smallest 8-bit dot K)"
    return why


CAPS = dataclasses.replace(W8A8_CAPS, act_dtypes=frozenset({"bfloat16", "float16"}))

# What the routing table sends here (H100, bench/results/nvidia_h100/w8a8_sweep.md and qmatmul_w8a8.md):
# recipes whose scales change along K (1x128 activation groups, as with 128x128 weight blocks), for
# which XLA has only per-block dots: 8.8-12x faster at M = 1024, 1.4-2x at M = 16; at M = 1 XLA's
# per-block GEMV was 1.0-1.2x faster, hence M >= 2. Per-token / per-tensor recipes stay on
# `xla_w8a8` (cuBLAS's fp8 GEMM: 1.3x faster at M = 1024 on the 70B shapes, equal at decode).
ROUTED_CAPS = dataclasses.replace(CAPS, act=frozenset({"fp8:group*", "int8:group*"}), m_min=2)


def why_not(x, w, act) -> str:
    """Empty string when `pallas_w8a8_qmatmul` computes the spec for this call, else the reason.

    Static checks only (shapes, dtypes, static fields): works on tracers.
    """
    return why_not_operands(CAPS, x, w, act, more=_why_not_more)


def layout_of(w: QArray, act: ActQuant) -> W8A8Layout:
    """The kernel's static view of ``w`` and ``act`` (call `why_not` first)."""
    n, k = w.shape
    a_bk, w_bn, w_bk = w8a8_geometry(w, act)
    return W8A8Layout(n=n, k=k, codes=w8a8_code_kind(w), a_bk=a_bk, w_bn=w_bn, w_bk=w_bk)


def _fit_bk(bk: int, lay: W8A8Layout) -> int:
    """Largest power of two <= bk dividing the K scale block (bk itself when scales are constant along K)."""
    if lay.k_blocked:
        while bk > MIN_BK and lay.kblk % bk:
            bk //= 2
    return bk


def decode_config(m: int, lay: W8A8Layout, *, num_sms: int = NUM_SMS_DEFAULT) -> W8A8Config:
    """Split-K tiles for M <= `DECODE_MAX_M`: every weight byte read once, about one program per SM."""
    bm = min(pow2_at_least(m, 16), 64)
    bn = 64
    bk = _fit_bk(256, lay)
    step = lay.kblk if lay.k_blocked else bk
    tiles = -(-m // bm) * -(-lay.n // bn)
    split = 1
    while split < 8 and tiles * split * 2 <= num_sms and lay.k // (step * split * 2) >= 2:
        split *= 2
    return W8A8Config(bm=bm, bn=bn, bk=bk, split_k=split, num_warps=4, num_stages=4)


def prefill_config(m: int, lay: W8A8Layout, *, num_sms: int = NUM_SMS_DEFAULT) -> W8A8Config:
    """Tensor-core tiles for M > `DECODE_MAX_M`: 64x128 (4 warps, 4 stages); int8 above M = 256:
    128x128 with 8 warps.

    fp8 keeps 64x128 at every M: on an H100 at M = 1024 it beat 128x128 / 8 warps by 3-20% and
    128x256 by 1.4-2.8x on every BENCH.md shape tried, per-channel and 128x128-block
    (bench/results/nvidia_h100/w8a8_sweep.md); int8 has no sweep yet.
    """
    del num_sms
    if m <= 256 or not lay.is_int:
        return W8A8Config(bm=64, bn=128, bk=_fit_bk(128, lay), num_warps=4, num_stages=4)
    return W8A8Config(bm=128, bn=128, bk=_fit_bk(128, lay), num_warps=8, num_stages=3)


def config_for(m: int, lay: W8A8Layout, *, num_sms: int | None = None) -> W8A8Config:
    """The heuristic's tiles for M rows of activations (decode or prefill by `DECODE_MAX_M`)."""
    pick = decode_config if m <= DECODE_MAX_M else prefill_config
    return pick(m, lay, num_sms=num_sms or device_num_sms())


def pallas_w8a8_qmatmul(
    x: jax.Array,
    w: QArray,
    act: ActQuant,
    *,
    cfg: W8A8Config | None = None,
    interpret: bool = False,
    poison: bool = False,
) -> jax.Array:
    """``fake_quantize(x, act) @ dequantize(w).T`` with the activations quantized and dotted in 8 bits.

    Args:
        x: activations [..., K], bf16 or f16.
        w: `QArray` (N, K): fp8 e4m3, int8 or uint8b128 codes; per-tensor, per-channel, group or
            2-D block scales (f32 / f16 / bf16 / e8m0), optional ``scale2`` and act-order ``perm``.
        act: the layer's `ActQuant`, a native recipe (int8 with int8 / uint8b128 weights, fp8
            e4m3 with fp8 weights).
        cfg: tile configuration; default `config_for` (M rows, this weight).
        interpret: run the Pallas interpreter (CPU tests).
        poison: tests only: outputs start as NaN, so unwritten elements show.

    Returns:
        [..., N] in ``x.dtype``.

    Raises:
        ValueError: `why_not` declines the call.
    """
    why = why_not(x, w, act)
    if why:
        raise ValueError(f"pallas_w8a8_qmatmul: {why}")
    n, k = w.shape
    lead = x.shape[:-1]
    m = math.prod(lead)
    lay = layout_of(w, act)
    cfg = cfg or config_for(m, lay)
    codes, sa = quantize_act(x.reshape(m, k), act)  # one fused XLA pass: [M, K] codes, f32 [M, units]
    if w.perm is not None:  # per-row activation scales (why_not): the gather commutes with quantizing
        codes = jnp.take(codes, w.perm, axis=-1)
    sw = weight_scales_f32(w)
    if 1 < lay.w_bn < n and lay.w_bn % cfg.bn:
        # An N tile would straddle two scale rows: give every weight row its own scale row (a small
        # gather on the scales, [N, K / w_bk] f32; the codes are untouched).
        sw = sw[np.arange(n) // lay.w_bn]
        lay = W8A8Layout(n=n, k=k, codes=lay.codes, a_bk=lay.a_bk, w_bn=1, w_bk=lay.w_bk)
    kind = "int8" if lay.is_int else "fp8"
    y = w8a8_matmul(
        codes,
        sa,
        jnp.asarray(w.data),
        sw,
        lay=lay,
        cfg=cfg,
        out_dtype=x.dtype,
        interpret=interpret,
        name=f"jquant_w8a8_{kind}",
        poison=poison,
    )
    return y.reshape(*lead, n)


class PallasW8A8(Backend):
    """`pallas_w8a8_qmatmul` as a backend (``pallas_triton_w8a8``): bf16/f16 activations, K blocks of
    the two scales sharing a multiple of `MIN_BK`; routed for K-blocked recipes (`ROUTED_CAPS`),
    forced for any.

    Args:
        interpret: run the Pallas interpreter (CPU tests register such a twin under another name).
        name: registry name.
    """

    def __init__(self, *, interpret: bool = False, name: str = "pallas_triton_w8a8"):
        self.name = name
        self.interpret = interpret
        self.caps = dataclasses.replace(CAPS, platforms=frozenset({"cpu", "gpu"})) if interpret else ROUTED_CAPS

    why_not_more = staticmethod(_why_not_more)

    def __call__(self, x, w, act=None):
        return pallas_w8a8_qmatmul(x, w, act, interpret=self.interpret)
