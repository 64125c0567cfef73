"""XLA-native W8A8: quantize the activations, dot the 8-bit codes, scale the products.

``xla_w8a8_matmul(x, w, act)`` computes ``fake_quantize(x, act) @ dequantize(w).T`` (the spec,
`jquant.ops.qmatmul.reference_qmatmul` after `jquant.ops.act_quant.fake_quantize`) without
dequantizing anything:

1. `quantize_act`: codes [M, K] (int8 / float8_e4m3fn) and f32 scales [M, units], one fused pass;
2. ``lax.dot_general`` on the codes as the weight stores them: fp8 x fp8 -> f32, int8 x int8 ->
   int32 (cuBLASLt fp8 / int8 GEMMs on a GPU);
3. the scales in the epilogue. Constant along K (per-token / per-tensor activations, per-channel /
   per-tensor weights): ``y = acc * sa[m] * sw[n]``. K-blocked (fp8 128x128 weight blocks with
   1x128 activation groups, DeepSeek-V3 style, or group-wise scales): K is cut into blocks of
   ``kblk`` (gcd of the K blocks), one batched dot gives every block's partial [blocks, M, N], and
   the scaled partials are summed.

The weight's ``scale2`` is folded into its scales (``scale * scale2``, as `jnp_dequant` does), an
act-order ``perm`` gathers the activation codes (per-token / per-tensor scales do not depend on the
column order), uint8b128 codes (int8 stored unsigned) become int8 by XOR 0x80 + bitcast.

Cost notes (GPU): the batched K-blocked dot materializes f32 partials of ``blocks * M * N * 4``
bytes; above ``max_partial_bytes`` the blocks run in chunks (a loop), bounding the memory. The
uint8b128 XOR is one elementwise pass over the weight unless XLA fuses it into its GEMM, and
K-blocked weights whose K is not a multiple of ``kblk`` are padded per call; the Pallas kernel
(`jquant.pallas.w8a8`) reads all of these in place.

The shared checks (`W8A8_CAPS`, `w8a8_pair_reason`) and geometry (`w8a8_geometry`, `weight_scales_f32`) serve the
Pallas kernel too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.qarray import QArray, register_pytree
from jquant.core.routing import Capabilities
from jquant.ops.act_quant import quantize_act
from jquant.ops.backend import Backend, register_backend, why_not_operands

__all__ = [
    "xla_w8a8_matmul",
    "why_not_xla_w8a8",
    "w8a8_code_kind",
    "w8a8_geometry",
    "weight_scales_f32",
    "MAX_PARTIAL_BYTES",
    "W8A8_CAPS",
    "XlaW8A8",
    "w8a8_pair_reason",
]

register_pytree()

# Default bound on the f32 partials [blocks, M, N] of the K-blocked dot (chunked above it).
MAX_PARTIAL_BYTES = 512 << 20
_SCALE_DTYPES = ("float32", "float16", "bfloat16", "float8_e8m0fnu")


def w8a8_code_kind(w: QArray) -> str | None:
    """How ``w`` stores 8-bit codes an 8-bit dot can read: "fp8" (e4m3), "int8", "uint8b128", else None."""
    q = w.qtype
    if q.storage == "float8_e4m3fn":
        return "fp8"
    if q.kind == "int" and q.bits == 8 and q.codebook is None and q.storage is None:
        if q.signed:
            return "int8"
        if q.bias == 128:
            return "uint8b128"
    return None


def w8a8_geometry(w: QArray, act: ActQuant) -> tuple[int, int, int]:
    """``(a_bk, w_bn, w_bk)``: K columns per activation scale, weight rows / K columns per weight scale.

    Each is clipped to the weight's extent (``w_bk == K`` means constant along K).
    """
    n, k = w.shape
    a_bk = act.group_size if act.granularity == "group" else k
    return min(a_bk, k), min(w.block[0], n), min(w.block[1], k)


def _kblk(k: int, a_bk: int, w_bk: int) -> int:
    blocks = [b for b in (a_bk, w_bk) if b < k]
    return math.gcd(*blocks) if blocks else k


# What an 8-bit-dot W8A8 path reads (the Pallas kernel narrows it): fp8 e4m3 / int8 / uint8b128
# codes without zero points, any scale block, the recipes it fuses (symmetric fp8 / int8 per token,
# per tensor, per group, or a static per-tensor scale; `jquant.core.routing.act_kind`).
W8A8_CAPS = Capabilities.any_weight(
    frozenset({"gpu"}),
    codes=frozenset({"fp8_e4m3", "int8", "uint8"}),
    zeros=frozenset({"none"}),
    scale_dtypes=frozenset(_SCALE_DTYPES),
    act_dtypes=frozenset({"bfloat16", "float16", "float32"}),
    act=frozenset({f"{t}:{g}" for t in ("fp8", "int8") for g in ("token", "tensor", "static", "group*")}),
)


def w8a8_pair_reason(call) -> str:
    """The part of a W8A8 check that is not data: code / recipe pairing, groups against K and perm."""
    q, cc = call.qtype, call.device.cc
    if call.codes == "fp8_e4m3" and cc is not None and cc < (8, 9):
        return f"fp8 tensor-core MMA needs compute capability >= 8.9, the device has {cc[0]}.{cc[1]}"
    if call.codes == "uint8" and q.bias != 128:
        return f"qtype {q.name}: unsigned 8-bit codes are read as int8 only with bias 128"
    want = "fp8" if call.codes == "fp8_e4m3" else "int8"
    if not call.act.startswith(want + ":"):
        return f"{call.act} activations with {q.name} weights (no mixed 8-bit dot)"
    group = int(call.act.partition(":group")[2] or 0)
    if group and call.k % group:
        return f"K={call.k} is not a multiple of the activation group {group}"
    if group and group < call.k and call.perm:  # the spec quantizes groups in HF column order
        return "act-order perm with per-group activation scales"
    return ""


def why_not_xla_w8a8(x, w, act) -> str:
    """Empty string when `xla_w8a8_matmul` runs this call, else the reason (static checks only)."""
    return why_not_operands(W8A8_CAPS, x, w, act, more=w8a8_pair_reason)


def weight_scales_f32(w: QArray) -> jax.Array:
    """The weight's scales as float32 [ceil(N / bn), ceil(K / bk)], ``scale2`` folded in (as `jnp_dequant`)."""
    s = jnp.asarray(w.scale).astype(jnp.float32)
    if w.scale2 is not None:
        s = s * jnp.asarray(w.scale2).astype(jnp.float32)
    return s


def weight_codes(w: QArray) -> jax.Array:
    """[N, K] codes an 8-bit dot reads: fp8 e4m3 / int8 as stored, uint8b128 as int8 (XOR 0x80 == c - 128)."""
    data = jnp.asarray(w.data)
    if w8a8_code_kind(w) == "uint8b128":
        return jax.lax.bitcast_convert_type(data ^ jnp.uint8(0x80), jnp.int8)
    return data


def _dot(a, b, dims, is_int):
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.int32 if is_int else jnp.float32)


def xla_w8a8_matmul(x: jax.Array, w: QArray, act: ActQuant, *, max_partial_bytes: int = MAX_PARTIAL_BYTES):
    """``fake_quantize(x, act) @ dequantize(w).T`` through an 8-bit XLA dot.

    Args:
        x: activations [..., K], bf16 / f16 / f32.
        w: `QArray` (N, K) with fp8 e4m3, int8 or uint8b128 codes (see `why_not_xla_w8a8`).
        act: the layer's `ActQuant` (a native recipe, `jquant.ops.act_quant.native_act_reason`).
        max_partial_bytes: bound on the f32 per-block partials of K-blocked scales; above it the
            blocks are dotted in chunks inside a loop.

    Returns:
        [..., N] in ``x.dtype``.

    Raises:
        ValueError: the call is not supported (`why_not_xla_w8a8` says why).
    """
    why = why_not_xla_w8a8(x, w, act)
    if why:
        raise ValueError(f"xla_w8a8_matmul: {why}")
    n, k = w.shape
    lead = x.shape[:-1]
    m = math.prod(lead)
    is_int = w8a8_code_kind(w) != "fp8"
    codes, sa = quantize_act(x.reshape(m, k), act)  # [M, K], f32 [M, units]
    if w.perm is not None:  # per-row scales: quantizing before or after the gather is the same
        codes = jnp.take(codes, w.perm, axis=-1)
    wc = weight_codes(w)
    sw = weight_scales_f32(w)
    a_bk, w_bn, w_bk = w8a8_geometry(w, act)
    rows = np.arange(n) // w_bn  # scale row of each output column (static)
    if a_bk == k and w_bk == k:
        acc = _dot(codes, wc, (((1,), (1,)), ((), ())), is_int)  # [M, N]
        y = acc.astype(jnp.float32) * sa[:, :1] * sw[rows, 0][None, :]
    else:
        kblk = _kblk(k, a_bk, w_bk)
        nb = -(-k // kblk)
        pad = nb * kblk - k
        if pad:  # zero codes contribute nothing; costs a copy of the weight (real checkpoints have 128 | K)
            codes = jnp.pad(codes, ((0, 0), (0, pad)))
            wc = jnp.pad(wc, ((0, 0), (0, pad)))
        starts = np.arange(nb) * kblk
        a3 = codes.reshape(m, nb, kblk)
        w3 = wc.reshape(n, nb, kblk)
        sa_b = sa[:, starts // a_bk]  # [M, nb]
        sw_b = sw[rows][:, starts // w_bk]  # [N, nb]

        def blocks_sum(a3, w3, sa_b, sw_b):
            part = _dot(a3, w3, (((2,), (2,)), ((1,), (1,))), is_int)  # [blocks, M, N]
            return (part.astype(jnp.float32) * sa_b.T[:, :, None] * sw_b.T[:, None, :]).sum(0)

        per_block = m * n * 4
        chunk = max((c for c in range(1, nb + 1) if nb % c == 0 and c * per_block <= max_partial_bytes), default=1)
        if chunk == nb:
            y = blocks_sum(a3, w3, sa_b, sw_b)
        else:

            def body(i, acc):
                sl = lambda t: jax.lax.dynamic_slice_in_dim(t, i * chunk, chunk, axis=1)
                return acc + blocks_sum(sl(a3), sl(w3), sl(sa_b), sl(sw_b))

            y = jax.lax.fori_loop(0, nb // chunk, body, jnp.zeros((m, n), jnp.float32))
    return y.astype(x.dtype).reshape(*lead, n)


class XlaW8A8(Backend):
    """`xla_w8a8_matmul` as a backend: XLA's own fp8 / int8 GEMMs with the scales in the epilogue."""

    name = "xla_w8a8"
    caps = W8A8_CAPS

    why_not_more = staticmethod(w8a8_pair_reason)

    def __call__(self, x, w, act=None):
        return xla_w8a8_matmul(x, w, act)


register_backend(XlaW8A8())
