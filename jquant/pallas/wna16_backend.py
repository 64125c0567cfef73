"""qmatmul backends over the W4A16 / W8A16 Pallas-Triton kernel: a decode one and a prefill one.

Both read the canonical `QArray` as it is (no repacking) and differ only in the tile configuration
(`jquant.pallas.wna16_config`): ``pallas_triton_wna16_decode`` takes M <= `DECODE_MAX_M` with
split-K GEMV-style tiles, ``pallas_triton_wna16_prefill`` takes any M with tensor-core tiles.
``supports`` reads only static fields, shapes and dtypes, so it works on tracers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.ops.backend import Backend
from jquant.pallas.wna16_config import DECODE_MAX_M, NUM_SMS_DEFAULT, WNA16Config, decode_config, prefill_config
from jquant.pallas.wna16_triton import WNA16Layout, wna16_matmul

__all__ = ["WNA16Backend", "layout_of", "wna16_qmatmul", "why_not"]

_ACT_DTYPES = ("bfloat16", "float16")
_SCALE_DTYPES = ("float32", "float16", "bfloat16")


def why_not(w) -> str:
    """Empty string when the kernel computes ``x @ dequantize(w).T`` for this weight, else the reason."""
    if not isinstance(w, QArray):
        return f"not a QArray ({type(w).__name__})"
    q = w.qtype
    if q.kind != "int" or q.codebook is not None or q.storage is not None:
        return f"qtype {q.name} is not an integer code type"
    if q.container_bits not in (4, 8):
        return f"{q.container_bits}-bit containers (kernel reads 4- and 8-bit codes)"
    n, k = w.shape
    bn, g = w.block
    if bn != 1:
        return f"block {w.block}: only one scale row per weight row (group / per-channel)"
    min_group = 32 if q.container_bits == 4 else 16  # smallest tl.dot K per group sub-block
    if g < k and (g & (g - 1) or g < min_group):
        return f"group size {g} is not a power of two >= {min_group}"
    if w.scale2 is not None:
        return "scale2 (second-level scale) not supported"
    if np.dtype(w.scale.dtype).name not in _SCALE_DTYPES:
        return f"scale dtype {np.dtype(w.scale.dtype).name} (kernel reads f32/f16/bf16)"
    if w.zero is not None and np.dtype(w.zero.dtype) != np.uint8:
        return f"zero dtype {np.dtype(w.zero.dtype).name} (kernel reads uint8 integer zero points)"
    return ""


def layout_of(w: QArray) -> WNA16Layout:
    """The kernel's static view of ``w`` (call `why_not` first)."""
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


@functools.cache
def _num_sms() -> int:
    try:
        dev = jax.devices()[0]
        return int(getattr(dev, "core_count", 0)) or NUM_SMS_DEFAULT
    except Exception:
        return NUM_SMS_DEFAULT


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
        mode: ``"decode"`` (M <= `DECODE_MAX_M`, split-K tiles) or ``"prefill"`` (any M).
        interpret: run the Pallas interpreter (CPU tests); registered instances use the GPU.
        config: fixed tile config instead of the heuristic (benchmarks, tests).
        name: registry name; default ``pallas_triton_wna16_<mode>`` (tests register interpret twins).
    """

    platforms = ("gpu",)

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
        self.priority = 20 if mode == "decode" else 10
        self.interpret = interpret
        self.config = config

    def supports(self, x, w, **kw) -> tuple[bool, str]:
        why = why_not(w)
        if why:
            return False, why
        if np.dtype(x.dtype).name not in _ACT_DTYPES:
            return False, f"activation dtype {np.dtype(x.dtype).name} (kernel takes bf16/f16)"
        if x.shape[-1] != w.shape[1]:
            return False, f"x has K={x.shape[-1]}, weight has K={w.shape[1]}"
        m = math.prod(x.shape[:-1])
        if m == 0:
            return False, "empty activations"
        if self.mode == "decode" and m > DECODE_MAX_M:
            return False, f"M={m} > {DECODE_MAX_M} (decode tiles); the prefill backend takes it"
        return True, ""

    def config_for(self, m: int, w: QArray) -> WNA16Config:
        if self.config is not None:
            return self.config
        n, k = w.shape
        pick = decode_config if self.mode == "decode" else prefill_config
        return pick(m, n, k, bits=w.qtype.container_bits, num_sms=_num_sms())

    def __call__(self, x, w, **kw):
        m = math.prod(x.shape[:-1])
        return wna16_qmatmul(x, w, self.config_for(m, w), interpret=self.interpret, name=f"jquant_wna16_{self.mode}")


# M from which XLA's dequantize -> bf16 cuBLAS dot beats the fused Pallas-Triton prefill kernel
# (H200, 8192x8192 g128: M=128 87 vs 92 us, M=1024 231 vs 307 us; bench/results/nvidia_h200).
TWO_STAGE_MIN_M = 128


class DequantDotBackend(Backend):
    """Two-stage prefill: dequantize the codes to the activation dtype in XLA, then a dense dot.

    Compute-bound shapes (M >= `TWO_STAGE_MIN_M`) run faster through cuBLAS on a dequantized copy
    (one extra pass over N*K*2 bytes) than through the fused Pallas-Triton kernel, whose Triton
    mixed-input MMA pipeline reaches about half of cuBLAS here. Rounds the f32-dequantized weights
    once to bf16/f16 (the spec's tolerance allows it); accumulation is f32.
    """

    name = "xla_dequant_dot"
    platforms = ("gpu",)
    priority = 15

    def supports(self, x, w, **kw) -> tuple[bool, str]:
        why = why_not(w)
        if why:
            return False, why
        if np.dtype(x.dtype).name not in _ACT_DTYPES:
            return False, f"activation dtype {np.dtype(x.dtype).name} (bf16/f16 only)"
        m = math.prod(x.shape[:-1])
        if m < TWO_STAGE_MIN_M:
            return False, f"M={m} < {TWO_STAGE_MIN_M}: the fused kernels are faster"
        return True, ""

    def __call__(self, x, w, **kw):
        from jquant.core import jnp_dequant

        wd = jnp_dequant.dequantize_permuted(w).astype(x.dtype)  # [N, K], columns in data order
        if w.perm is not None:
            x = jnp.take(x, w.perm, axis=-1)
        y = jnp.einsum("...k,nk->...n", x, wd, preferred_element_type=jnp.float32)
        return y.astype(x.dtype)
