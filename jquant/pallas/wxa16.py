"""``wxa16_qmatmul``: weight-only quantized matmul for every canonical code type on one Pallas kernel.

The op, its tile heuristic and its backend (``pallas_triton_wxa16``) over
`jquant.pallas.wxa16_triton`. It runs what the 4/8-bit integer kernels (`jquant.pallas.wna16_backend`,
kernels_cuda) do not read, dequantizing in registers from the canonical `QArray` as stored:

* integer codes in 1/2/4/8-bit containers with any bias (uint2 / uint3b4 / uint4b8 / uint5 / uint6b32
  / uint8b128, GPTQ 2-bit, GGUF Q2_K..Q6_K, TQ2_0) and int8 (Q8_0);
* zero points as uint8 codes (``(v - z) * s``) or float offsets (``v * s - z``: GGUF Q4_1 / Q5_1
  / K-quant mins);
* fp8 e4m3 / e5m2 weights (W8A16), fp4 e2m1 (MXFP4, NVFP4) and 16-entry codebooks (NF4,
  bitsandbytes FP4, IQ4_NL / IQ4_XS);
* f32 / f16 / bf16 / fp8 e4m3 / fp8 e5m2 / e8m0 scales with groups of 16 and up (power of two),
  per-channel, per-tensor or 2-D blocks (FP8 128x128), and NVFP4's ``scale2``;
* act-order ``perm`` (one gather of x outside the kernel).

Tiles (`decode_config` / `prefill_config`): the step bk scales with the codes per byte P, so that
every container streams the same code bytes per weight row per step and each code plane's f32
tile has the same size: decode (M <= `DECODE_MAX_M`) reads 128 bytes (bk = 128 * P; planes
[64, 128]) with the 16-row M tile, 64-row N tiles and split-K of
`jquant.pallas.wna16_config.decode_config` (the H200 sweep's best for the 4-bit kernel); prefill
reads 64 bytes (bk = 64 * P; planes [128, 64]) in the 64 x 128 tensor-core tiles of its
``prefill_config``. These are first choices carried over from the WNA16 sweeps and the Torch
bridge (`torch_bridge.triton.configs`), not yet swept for this kernel; ``bench/qmatmul_wxa16.py``
measures them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray, register_pytree
from jquant.core.routing import Call, Capabilities
from jquant.ops.backend import Backend, why_not_operands
from jquant.ops.device import NUM_SMS_DEFAULT, num_sms
from jquant.pallas.launch import pow2_at_least
from jquant.pallas.wxa16_triton import WXA16Config, WXA16Layout, scale_kind, value_kind, wxa16_matmul

__all__ = [
    "CAPS",
    "DECODE_MAX_M",
    "PREFILL_MAX_M",
    "PallasWXA16",
    "config_for",
    "decode_config",
    "layout_of",
    "prefill_config",
    "why_not",
    "why_not_value",
    "wxa16_qmatmul",
]

register_pytree()

# Largest M that gets the split-K decode tiles; routing stops at PREFILL_MAX_M, where XLA's
# dequantize -> cuBLAS dot takes over (as for the WNA16 kernel: jquant.pallas.wna16_backend).
DECODE_MAX_M = 64
PREFILL_MAX_M = 127

# Bytes of codes per weight row per K step: the 4-bit decode kernel's best step (bk = 256 codes,
# bench/results/nvidia_h200/qmatmul.md) and the Torch bridge's 8-bit one (block_k = 128).
_STEP_BYTES = 128

# What the kernel reads (see the module docstring). Codes are `code_class` names: integer codes of
# any bias read as uint<container bits>.
CAPS = Capabilities(
    platforms=frozenset({"gpu"}),
    codes=frozenset(
        {"uint1", "uint2", "uint4", "uint8", "int8", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "nf4", "bnb_fp4", "iq4nl"}
    ),
    zeros=frozenset({"none", "uint8", "float32", "float16", "bfloat16"}),
    scale_dtypes=frozenset({"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"}),
    scale2=True,
    row_blocks=None,  # 1 (group / channel), N (tensor), any other height (2-D blocks) gathered per row
    group_pow2=True,
    min_group=((1, 16), (2, 16), (4, 16), (8, 16)),
    m_max=PREFILL_MAX_M,
)


def why_not_value(qtype) -> str:
    """ "" when the kernel has a value decoder for ``qtype``'s codes, else why not (a code type in
    `CAPS.codes` whose storage dtype it cannot read)."""
    try:
        value_kind(qtype)
    except ValueError as e:
        return str(e)
    return ""


def why_not(x, w) -> str:
    """ "" when `wxa16_qmatmul` computes ``x @ dequantize(w).T`` for these operands (any M), else why not."""
    return why_not_operands(CAPS, x, w) or why_not_value(w.qtype)


def layout_of(w: QArray) -> WXA16Layout:
    """The kernel's static view of ``w`` (check `why_not` first)."""
    n, k = w.shape
    zero = "none"
    if w.zero is not None:
        zero = "int" if jnp.issubdtype(w.zero.dtype, jnp.unsignedinteger) else "float"
    return WXA16Layout(
        n=n,
        k=k,
        cbits=w.qtype.container_bits,
        value=value_kind(w.qtype),
        bias=int(w.qtype.bias),
        scale=scale_kind(w.scale.dtype),
        scale_bn=min(w.block[0], n),
        group=min(w.block[1], k),
        zero=zero,
        scale2=w.scale2 is not None,
    )


def decode_config(m: int, n: int, k: int, *, planes: int, num_sms: int = NUM_SMS_DEFAULT) -> WXA16Config:
    """Split-K tiles for M <= `DECODE_MAX_M` (bandwidth-bound: each weight byte read once).

    The WNA16 decode kernel's tiles (bn = 64, 128 code bytes per row per step, split-K up to 4 with
    >= 4 steps per program; `jquant.pallas.wna16_config.decode_config`), with bk scaled by the codes
    per byte so that every container streams the same bytes per step.
    """
    del n, num_sms  # as for WNA16: the measured optimum did not depend on them on the BENCH shapes
    bm = pow2_at_least(m, 16)
    bk = _STEP_BYTES * planes
    split = max(1, min(4, k // (4 * bk)))
    return WXA16Config(bm=bm, bn=64, bk=bk, split_k=split, num_warps=4, num_stages=_stages(3, bm, 64, bk, planes))


def prefill_config(m: int, n: int, k: int, *, planes: int, num_sms: int = NUM_SMS_DEFAULT) -> WXA16Config:
    """Tensor-core tiles for `DECODE_MAX_M` < M (64 x 128, 4 warps, 4 stages: the WNA16 prefill tiles
    at M <= 256, bench/results/nvidia_h200; 64 code bytes per row per step keep the dequantized
    [128, 64] plane tile at 8K elements, the Torch bridge's prefill tile)."""
    del m, n, k, num_sms
    return WXA16Config(bm=64, bn=128, bk=64 * planes, num_warps=4, num_stages=_stages(4, 64, 128, 64 * planes, planes))


# Shared memory the software pipeline may fill (H100 / H200 allow 227 KB per block; the rest is
# left to Triton's layout conversions). Q2_K at M = 64 asked for 256 KB with 3 stages on H200.
_SMEM_BUDGET = 160 * 1024


def _stages(want: int, bm: int, bn: int, bk: int, planes: int) -> int:
    """``want`` pipeline stages, fewer when a stage's x tile (bf16 [bm, bk]) and codes ([bn, bk /
    planes] bytes) would overflow `_SMEM_BUDGET`; at least 2."""
    per_stage = bm * bk * 2 + bn * (bk // planes)
    return max(2, min(want, _SMEM_BUDGET // per_stage))


def config_for(m: int, w: QArray, *, num_sms: int | None = None) -> WXA16Config:
    """The heuristic's tiles for M rows of activations and weight ``w`` (decode or prefill by `DECODE_MAX_M`)."""
    n, k = w.shape
    pick = decode_config if m <= DECODE_MAX_M else prefill_config
    return pick(m, n, k, planes=w.qtype.codes_per_byte, num_sms=num_sms or NUM_SMS_DEFAULT)


def _bits_u8(a):
    """fp8 / e8m0 arrays as their uint8 bits (a bitcast, no data movement); other dtypes unchanged."""
    if jnp.dtype(a.dtype).itemsize == 1 and jnp.issubdtype(a.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(a, jnp.uint8)
    return a


def wxa16_qmatmul(x, w: QArray, *, cfg: WXA16Config | None = None, interpret: bool = False, poison: bool = False):
    """``x @ dequantize(w).T`` on the general weight-only kernel.

    Args:
        x: [..., K] bf16 or f16 activations.
        w: `QArray` (N, K) of any code type in `CAPS` (see the module docstring).
        cfg: tile configuration; default `config_for` (M rows, this weight).
        interpret: run the Pallas interpreter (CPU tests).
        poison: tests only: outputs start as NaN, so unwritten elements show.

    Returns:
        [..., N] in ``x.dtype``.

    Raises:
        ValueError: `why_not` declines the operands.
    """
    why = why_not(x, w)
    if why:
        raise ValueError(f"wxa16_qmatmul: {why}")
    n, k = w.shape
    lead = x.shape[:-1]
    m = math.prod(lead)
    x2 = x.reshape(m, k)
    if w.perm is not None:
        x2 = jnp.take(x2, w.perm, axis=-1)
    lay = layout_of(w)
    cfg = cfg or config_for(m, w, num_sms=num_sms())
    planes = lay.per_byte
    # Code planes of x: rows p*M .. p*M + M of xt are x[:, p::P] (one small XLA transpose, fused
    # with the perm gather).
    xt = x2 if planes == 1 else jnp.transpose(x2.reshape(m, k // planes, planes), (2, 0, 1)).reshape(planes * m, -1)
    lut = None
    if lay.value == "lut":
        lut = jnp.asarray(np.asarray(w.qtype.codebook, np.float32))
    y = wxa16_matmul(
        xt,
        m,
        _bits_u8(jnp.asarray(w.data)),
        _bits_u8(jnp.asarray(w.scale)),
        None if w.zero is None else jnp.asarray(w.zero),
        None if w.scale2 is None else jnp.asarray(w.scale2, jnp.float32),
        lut,
        lay=lay,
        cfg=cfg,
        interpret=interpret,
        name="jquant_wxa16_" + ("decode" if m <= DECODE_MAX_M else "prefill"),
        poison=poison,
    )
    return y.reshape(*lead, n)


class PallasWXA16(Backend):
    """`wxa16_qmatmul` as a backend (``pallas_triton_wxa16``): every weight-only code type, M <= 127.

    Args:
        interpret: run the Pallas interpreter (CPU tests register such a twin under another name).
        config: fixed tile config instead of the heuristic (benchmarks, tests).
        name: registry name.
    """

    def __init__(
        self, *, interpret: bool = False, config: WXA16Config | None = None, name: str = "pallas_triton_wxa16"
    ):
        self.name = name
        self.interpret = interpret
        self.config = config
        # Routed: every code type but the 16-entry tables (NF4, bnb FP4, IQ4): their in-register gather
        # made the kernel 2.3-2.5x slower than XLA's bf16 dequantize -> dot on H200 at M = 1 / 16
        # (bench/results/nvidia_h200/qmatmul_wxa16.json); the op itself still runs them (tests).
        routed = CAPS.codes - {"nf4", "bnb_fp4", "iq4nl"}
        self.caps = dataclasses.replace(
            CAPS, codes=routed, platforms=frozenset({"cpu", "gpu"}) if interpret else CAPS.platforms
        )

    def why_not_more(self, call: Call) -> str:
        return why_not_value(call.qtype)

    def __call__(self, x, w, act=None):
        del act  # weight-only: the router composes an activation recipe before calling
        return wxa16_qmatmul(x, w, cfg=self.config, interpret=self.interpret)
