"""qmatmul backends over the W4A16 / W8A16 Pallas-Triton kernel: a decode one and a prefill one.

Both read the canonical `QArray` as it is (no repacking) and differ only in the tile configuration
(`jquant.pallas.wna16_config`): ``pallas_triton_wna16_decode`` takes M <= `DECODE_MAX_M` with
split-K GEMV-style tiles, ``pallas_triton_wna16_prefill`` takes M up to `PREFILL_MAX_M` with
tensor-core tiles. What they read is one `Capabilities` record, `CAPS`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from jquant.core.qarray import QArray
from jquant.core.routing import Capabilities
from jquant.ops.backend import Backend, why_not_operands
from jquant.ops.device import num_sms
from jquant.pallas.wna16_config import DECODE_MAX_M, WNA16Config, decode_config, prefill_config
from jquant.pallas.wna16_triton import WNA16Layout, wna16_matmul

__all__ = ["WNA16Backend", "CAPS", "PREFILL_MAX_M", "layout_of", "wna16_qmatmul", "why_not"]

# From M = 128 on, XLA's dequantize -> cuBLAS dot (``xla_dequant_dot``) beats the fused Pallas-Triton
# prefill kernel (H200, 8192x8192 g128: M=128 87 vs 92 us, M=1024 231 vs 307 us; bench/results/nvidia_h200).
PREFILL_MAX_M = 127

# What the kernel reads: 4/8-bit integer codes (unsigned with a bias and/or uint8 zero points, or
# int8), one scale row per weight row, groups that are powers of two with at least 16 codes per
# nibble plane (the smallest tl.dot K), f32/f16/bf16 scales, bf16/f16 activations.
CAPS = Capabilities(
    platforms=frozenset({"gpu"}),
    codes=frozenset({"uint4", "uint8", "int8"}),
    group_pow2=True,
    min_group=((4, 32), (8, 16)),
)


def why_not(x, w) -> str:
    """ "" when the kernel computes ``x @ dequantize(w).T`` for these operands (any M), else why not."""
    return why_not_operands(CAPS, x, w)


def layout_of(w: QArray) -> WNA16Layout:
    """The kernel's static view of ``w`` (check `CAPS` first)."""
    n, k = w.shape
    return WNA16Layout(
        n=n,
        k=k,
        bits=w.qtype.container_bits,
        bias=int(w.qtype.bias),
        group=min(w.block[1], k),
        has_zero=w.zero is not None,
        signed=bool(w.qtype.signed),
    )


def wna16_qmatmul(
    x, w: QArray, cfg: WNA16Config, *, interpret: bool = False, name: str = "jquant_wna16", poison: bool = False
):
    """``x @ dequantize(w).T`` for [..., K] activations with an explicit tile config.

    The act-order permutation is applied to x here (one gather), outside the kernel.
    """
    lead = x.shape[:-1]
    k = x.shape[-1]
    x2 = x.reshape(math.prod(lead), k)
    if w.perm is not None:
        x2 = jnp.take(x2, w.perm, axis=-1)
    y = wna16_matmul(
        x2, w.data, w.scale, w.zero, lay=layout_of(w), cfg=cfg, interpret=interpret, name=name, poison=poison
    )
    return y.reshape(*lead, w.shape[0])


class WNA16Backend(Backend):
    """``x @ dequantize(w).T`` for 4/8-bit integer codes with group / per-channel scales.

    Args:
        mode: ``"decode"`` (M <= `DECODE_MAX_M`, split-K tiles) or ``"prefill"`` (up to
            `PREFILL_MAX_M` when routed; the op takes any M).
        interpret: run the Pallas interpreter (CPU tests); registered instances use the GPU.
        config: fixed tile config instead of the heuristic (benchmarks, tests).
        name: registry name; default ``pallas_triton_wna16_<mode>`` (tests register interpret twins).
    """

    def __init__(
        self,
        mode: str = "decode",
        *,
        interpret: bool = False,
        config: WNA16Config | None = None,
        name: str | None = None,
    ):
        if mode not in ("decode", "prefill"):
            raise ValueError(f"mode must be 'decode' or 'prefill', got {mode!r}")
        self.mode = mode
        self.name = name or f"pallas_triton_wna16_{mode}"
        self.caps = dataclasses.replace(
            CAPS,
            m_max=DECODE_MAX_M if mode == "decode" else PREFILL_MAX_M,
            platforms=frozenset({"cpu", "gpu"}) if interpret else CAPS.platforms,
        )
        self.interpret = interpret
        self.config = config

    def config_for(self, m: int, w: QArray) -> WNA16Config:
        if self.config is not None:
            return self.config
        n, k = w.shape
        pick = decode_config if self.mode == "decode" else prefill_config
        return pick(m, n, k, bits=w.qtype.container_bits, num_sms=num_sms())

    def __call__(self, x, w, act=None):
        m = math.prod(x.shape[:-1])
        return wna16_qmatmul(x, w, self.config_for(m, w), interpret=self.interpret, name=f"jquant_wna16_{self.mode}")
