"""A CPU-oriented XLA ``qmatmul`` backend: dequantize and multiply in row chunks that stay in cache.

Why: on XLA:CPU the reference (`jquant.ops.qmatmul.reference_qmatmul`) materializes the whole f32
weight [N, K] on every call. For the decode GEMV the dot itself is cheap (a dense f32 49152 x 576
GEMV runs in ~2.5 ms on the 2-core dev box); the cost is writing and re-reading a fresh 113 MB
temporary per call (page faults and memory traffic), which makes the reference ~8x slower than the
dot. Measured alternatives that avoid the materialization with fused multiply-reduce (the
group-factored ``sum_g s * (x_g . v_g)``, codes split with shifts or with float floor tricks, in
[N, G, 16] or group-minor layouts) all ran at or below the reference: XLA:CPU vectorizes a fused
reduction only over a whole contiguous row with row-vector broadcasts, and any per-group scale
breaks that.

What this backend does instead: ``lax.map`` over blocks of ``chunk`` weight rows; each step
dequantizes its rows into a ~4 MiB f32 buffer that XLA reuses and that stays in cache, then runs
the f32 dot for those rows. For per-row groups (GPTQ/AWQ/GGUF-style ``block=(1, G)``) the packed
codes are dequantized as un-interleaved planes (low nibble, high nibble, ...) and ``x``'s columns
are split the same way (`_dequant_planes`); other layouts use the reference's own
`jnp_dequant.dequantize_permuted` per chunk. Either way each weight value is computed with the
reference's formula and operand order; only the summation blocking of the dot differs, well
within the sqrt(K)-scaled tolerance. Nothing is dequantized at load: the QArray stays packed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.core import jnp_dequant
from jquant.core.qarray import QArray
from jquant.core.routing import ANY, Capabilities
from jquant.ops.backend import Backend, register_backend

__all__ = ["XlaCpuChunked", "chunked_qmatmul", "chunk_rows"]

# f32 elements of one dequantized chunk: 2**20 (4 MiB) fits L2/L3 on the machines measured; chunks
# of 512..8192 rows of the 49152 x 576 LM head all ran within noise of each other (6.7-8.8 ms).
_CHUNK_ELEMS = 1 << 20


def chunk_rows(w: QArray) -> int:
    """Rows per chunk for ``w``: ~``_CHUNK_ELEMS`` f32 values, a multiple of the block's rows.

    Returns:
        the chunk height C (C >= N means one step, i.e. no loop).
    """
    n, k = w.shape
    bn = w.block[0]
    c = max(1, _CHUNK_ELEMS // max(k, 1))
    c = 1 << (c.bit_length() - 1)  # a power of two: tidy tiles for the dot
    if bn >= n:  # per-tensor (or taller-than-N) blocks: one scale row serves every chunk
        return c
    return max(bn, (c // bn) * bn)  # chunks start on block boundaries so each owns whole scale rows


def _planes_ok(w: QArray) -> bool:
    """Whether the plane form applies: per-row groups whose width is a whole number of bytes, K a multiple of it."""
    per = 8 // w.qtype.container_bits
    bn, bk = w.block
    return bn == 1 and w.k % bk == 0 and bk % per == 0


def _dequant_planes(w: QArray) -> list[jax.Array]:
    """Dequantized code planes of ``w`` without interleaving them back into column order.

    Plane ``h`` holds, for every packed byte ``b`` of a row, the code in bits ``[h*c, (h+1)*c)``,
    i.e. column ``per*b + h`` (c = container bits, per = 8 // c codes per byte). Interleaving the
    planes (the reference's broadcast-shift + reshape) is what makes XLA:CPU's dequant slow; the
    caller splits ``x``'s columns the same way instead. Each value is computed with the reference's
    formula and operand order (`jnp_dequant.dequantize_permuted`), so it is bit-identical.

    Args:
        w: `QArray` (n, K) with ``_planes_ok(w)``.

    Returns:
        ``per`` float32 arrays [n, K // per].
    """
    q = w.qtype
    c = q.container_bits
    per = 8 // c
    n, k = w.shape
    g, bw = k // w.block[1], w.block[1] // per  # groups per row, bytes per group
    d = w.data.reshape(n, g, bw)
    s = w.scale.astype(jnp.float32)
    if w.scale2 is not None:
        s = s * w.scale2.astype(jnp.float32)
    s = s[:, :, None]
    z = None if w.zero is None else w.zero[:, :, None]
    out = []
    for h in range(per):
        codes = d if per == 1 else (d >> jnp.uint8(h * c)) & jnp.uint8((1 << c) - 1)
        v = jnp_dequant.decode_values(codes, q)
        if z is None:
            wh = v * s
        elif jnp.issubdtype(z.dtype, jnp.unsignedinteger):
            wh = (v - z.astype(jnp.float32)) * s
        else:
            wh = v * s - z.astype(jnp.float32)
        out.append(wh.reshape(n, k // per))
    return out


def chunked_qmatmul(x: jax.Array, w: QArray, chunk: int | None = None) -> jax.Array:
    """``x @ dequantize(w).T`` computed ``chunk`` weight rows at a time.

    Args:
        x: [..., K] float activations (bf16 / f16 / f32).
        w: `QArray` (N, K) whose row block ``bn`` divides ``chunk`` or covers all rows.
        chunk: rows per step (default `chunk_rows`).

    Returns:
        [..., N] in ``x.dtype`` (f32 accumulation).
    """
    n, k = w.shape
    bn = w.block[0]
    c = chunk or chunk_rows(w)
    lead = x.shape[:-1]
    xf = x.reshape(-1, k).astype(jnp.float32)
    if w.perm is not None:  # act-order: permute activations once, weights stay in data order
        xf = jnp.take(xf, w.perm, axis=-1)
    shared = bn >= n  # per-tensor scale: not sliced per chunk

    per = 8 // w.qtype.container_bits
    planes = _planes_ok(w)
    if planes:  # x columns of each code plane: plane h holds codes per*b + h of byte b
        xp = [xf.reshape(-1, k // per, per)[..., h] for h in range(per)]

    def part(data, scale, zero, rows):
        sub = w.replace(
            data=data,
            scale=scale,
            zero=zero,
            perm=None,
            shape=(rows, k),
            block=(rows, w.block[1]) if shared else w.block,
        )
        dn = (((1,), (1,)), ((), ()))
        hi = jax.lax.Precision.HIGHEST
        if planes:
            return sum(
                jax.lax.dot_general(xh, wh, dn, precision=hi, preferred_element_type=jnp.float32)
                for xh, wh in zip(xp, _dequant_planes(sub), strict=True)
            )
        wd = jnp_dequant.dequantize_permuted(sub)  # [rows, K] f32, bit-identical to the reference's rows
        return jax.lax.dot_general(xf, wd, dn, precision=hi, preferred_element_type=jnp.float32)  # [M, rows]

    def srows(a, r0, r1):  # scale / zero rows of weight rows [r0, r1)
        if a is None or shared:
            return a
        return a[r0 // bn : -(-r1 // bn)]

    steps = n // c if n > c else 0
    outs = []
    if steps:
        main = steps * c
        sb = c // bn if not shared else None

        def split(a, rows_per):  # leading [steps * rows_per] rows -> [steps, rows_per, ...]
            return a[: steps * rows_per].reshape(steps, rows_per, *a.shape[1:])

        xs = (
            split(w.data, c),
            None if shared else split(w.scale, sb),
            None if (w.zero is None or shared) else split(w.zero, sb),
        )

        def body(args):
            d, s, z = args
            return part(d, w.scale if shared else s, w.zero if shared else z, c)

        y = jax.lax.map(body, xs)  # [steps, M, C]
        outs.append(jnp.moveaxis(y, 0, 1).reshape(xf.shape[0], main))
    else:
        main = 0
    if main < n:
        outs.append(part(w.data[main:], srows(w.scale, main, n), srows(w.zero, main, n), n - main))
    y = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    return y.reshape(*lead, n).astype(x.dtype)


class XlaCpuChunked(Backend):
    """`chunked_qmatmul` on CPU, ahead of the XLA reference: every code type and block layout."""

    name = "xla_cpu_chunked"
    caps = Capabilities.any_weight(frozenset({"cpu"}), act_dtypes=ANY)

    def __call__(self, x, w, act=None):
        return chunked_qmatmul(x, w)


register_backend(XlaCpuChunked())
