"""Decode attention (one new query per row) over the KV cache, as one Pallas kernel (Triton lowering).

The XLA form of a decode step's attention (`jquant.models.llama.Attention`) reads every slot of
the cache, masks the future ones and runs about six small kernels per layer (two dots, the
softmax's reductions, the mask, the conversions), and for a quantized cache it first converts the
whole layer's codes to the model dtype. Here one kernel reads only the slots a row attends to and
dequantizes the codes in registers, flash-decoding style:

    grid (B, kv heads, S splits); program (b, h, s) takes the g = heads / kv_heads queries of KV
    head h (GQA: query head h * g + i, the order of HF's ``repeat_kv``), walks the cache slots of
    split s that row b may see -- slot <= position[b] and, with a sliding window,
    position[b] - slot < window -- in blocks of ``cfg.block``, and keeps an online softmax:
        scores = (q . k) * head_dim**-0.5 * k_scale[h]        f32 (codes -> q's dtype: exact)
        m' = max(m, max(scores)),  l' = l e^(m - m') + sum e^(scores - m')
        acc' = acc e^(m - m') + e^(scores - m') . v           (probabilities rounded to q's dtype)
    and writes f32 (acc, m, l). One XLA fusion combines the splits (and the gpt-oss sink logit,
    `jquant.models.attention_sinks`, which joins the denominator only):
        out = sum_s e^(m_s - M) acc_s / (sum_s e^(m_s - M) l_s + e^(sink - M)) * v_scale[h]
    With one split (short caches) the kernel applies that formula itself and stores q's dtype.

It computes the model's XLA attention up to f32 summation order and where the probabilities are
rounded (here before normalization, there after); blocks past a row's position are never loaded,
so the cost follows the positions in use, not the cache length.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jquant.ops.device import NUM_SMS_DEFAULT

__all__ = ["DecodeAttentionConfig", "decode_attention_config", "pallas_decode_attention", "why_not"]


@dataclasses.dataclass(frozen=True)
class DecodeAttentionConfig:
    """Launch parameters of the decode attention kernel.

    Attributes:
        block: cache slots per step (a power of two >= 16).
        splits: programs per (row, KV head) along the cache, each taking ``ceil(S / splits)``
            slots rounded up to whole blocks.
        num_warps, num_stages: Triton launch parameters.
    """

    block: int = 64
    splits: int = 1
    num_warps: int = 4
    num_stages: int = 2


def decode_attention_config(batch: int, kv_heads: int, slots: int, num_sms: int = NUM_SMS_DEFAULT):
    """Enough splits along the cache for about one program per SM, each at least 4 blocks long."""
    block = 64
    splits = max(1, min(-(-num_sms // (batch * kv_heads)), -(-slots // (4 * block))))
    return DecodeAttentionConfig(block=block, splits=splits)


def why_not(q, keys) -> str:
    """ "" when the kernel takes these shapes and dtypes, else why not.

    Args:
        q: [B, kv_heads, g, head_dim] queries; keys: [B, S, kv_heads, head_dim] cache buffer.
    """
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        return f"head_dim {d} is not a power of two >= 16 (the kernel's dot)"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"query dtype {q.dtype} (bf16 / f16)"
    if keys.dtype not in (q.dtype, jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.int8):
        return f"cache dtype {keys.dtype} (the query's dtype, fp8 or int8 codes)"
    return ""


def _kernel(pos_ref, ks_ref, vs_ref, sink_ref, q_ref, k_ref, v_ref, *out_refs, block, chunk, g_pad, scale, window):
    """One (row, KV head, split) program. ``out_refs``: (out [B, kv, g, d] in q's dtype) for one
    split, normalized here with ``vs_ref`` [kv] (v_scale) and ``sink_ref`` [kv, g] (sink logits, -inf without);
    else the split's f32 (acc [S, B, kv, g_pad, d], running max m, sum l) [S, B, kv, g_pad]."""
    b, h, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    pos = pos_ref[b]
    # Slots this program attends to: [lo, hi) of split s, clipped to the row's causal (and window) range.
    lo = s * chunk
    hi = jnp.minimum(lo + chunk, pos + 1)
    if window is not None:
        lo = jnp.maximum(lo, pos - window + 1)
    first = (lo // block) * block
    blocks = jnp.where(hi > lo, (hi - first + block - 1) // block, 0)  # every one holds a visible slot
    g, d = q_ref.shape[2:]
    rows = jnp.arange(g_pad) < g  # the group's queries, padded to the smallest dot M
    q = pltriton.load(q_ref.at[b, h, pl.ds(0, g_pad), :], mask=rows[:, None], other=0.0)  # [g_pad, d]
    k_scale = ks_ref[h] * scale
    dot = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)
    # fp8 tiles load with a float fill (an integer fill does not lower to float8), ints with 0.
    fill = 0 if jnp.issubdtype(k_ref.dtype, jnp.integer) else 0.0

    def step(i, carry):
        m, total, acc = carry
        start = pl.multiple_of(first + i * block, block)
        slots = start + jnp.arange(block)
        visible = (slots >= lo) & (slots < hi)
        k = pltriton.load(k_ref.at[b, pl.ds(start, block), h, :], mask=visible[:, None], other=fill)
        scores = dot(q, k.astype(q.dtype), (((1,), (1,)), ((), ()))) * k_scale  # [g_pad, block]
        scores = jnp.where(visible[None, :], scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[:, None])
        v = pltriton.load(v_ref.at[b, pl.ds(start, block), h, :], mask=visible[:, None], other=fill)
        acc = acc * alpha[:, None] + dot(p.astype(q.dtype), v.astype(q.dtype), (((1,), (0,)), ((), ())))
        return m_new, total * alpha + jnp.sum(p, axis=1), acc

    init = (
        jnp.full((g_pad,), -jnp.inf, jnp.float32),
        jnp.zeros((g_pad,), jnp.float32),
        jnp.zeros((g_pad, d), jnp.float32),
    )
    m, total, acc = jax.lax.fori_loop(0, blocks, step, init)
    if len(out_refs) == 1:  # one split: the combine below, for S = 1, here
        sink = pltriton.load(sink_ref.at[h, pl.ds(0, g_pad)], mask=rows, other=-jnp.inf)
        v_scale = vs_ref[h]
        top = jnp.maximum(m, sink)
        w = jnp.exp(m - top)
        out = acc * (w * v_scale / (total * w + jnp.exp(sink - top)))[:, None]
        pltriton.store(out_refs[0].at[b, h, pl.ds(0, g_pad), :], out.astype(q.dtype), mask=rows[:, None])
    else:
        acc_ref, m_ref, l_ref = out_refs
        acc_ref[s, b, h] = acc
        m_ref[s, b, h] = m
        l_ref[s, b, h] = total


def pallas_decode_attention(
    q,
    keys,
    values,
    positions,
    *,
    window: int | None = None,
    k_scale=None,
    v_scale=None,
    sinks=None,
    cfg: DecodeAttentionConfig | None = None,
    interpret: bool = False,
):
    """Attention of one new query per row over its cache slots.

    Args:
        q: [B, kv_heads, g, head_dim] bf16 / f16 queries (rotated), query head ``h * g + i``.
        keys, values: [B, S, kv_heads, head_dim] cache buffers in q's dtype, or fp8 e4m3 / e5m2 /
            int8 codes with f32 per-KV-head ``k_scale`` / ``v_scale`` [kv_heads]. Slot = position.
        positions: int32 [B], each row's query position (it sees slots <= its position).
        window: sliding window (slots with position - slot < window), or None.
        sinks: [kv_heads * g] sink logits (gpt-oss), or None.
        cfg: launch parameters; default `decode_attention_config`.
        interpret: run the Pallas interpreter (CPU tests).

    Returns:
        [B, kv_heads, g, head_dim] in q's dtype: the attention output times ``v_scale`` (written by
        the kernel itself with one split; else the splits' f32 partials merged by one XLA fusion).
    """
    why = why_not(q, keys)
    if why:
        raise ValueError(f"pallas_decode_attention: {why}")
    b, kvh, g, d = q.shape
    slots = keys.shape[1]
    if cfg is None:
        from jquant.ops.device import num_sms

        cfg = decode_attention_config(b, kvh, slots, num_sms())
    per_split = -(-slots // cfg.splits)
    chunk = -(-per_split // cfg.block) * cfg.block  # slots per split, in whole blocks
    splits = -(-slots // chunk)
    g_pad = max(16, 1 << (g - 1).bit_length())  # the smallest tl.dot M
    ks = jnp.ones((kvh,), jnp.float32) if k_scale is None else k_scale.astype(jnp.float32)
    vs = jnp.ones((kvh,), jnp.float32) if v_scale is None else v_scale.astype(jnp.float32)
    sink = jnp.full((kvh, g), -jnp.inf) if sinks is None else sinks.astype(jnp.float32).reshape(kvh, g)
    if splits == 1:
        out_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
    else:
        part = lambda *tail: jax.ShapeDtypeStruct((splits, b, kvh, g_pad, *tail), jnp.float32)  # noqa: E731
        out_shape = (part(d), part(), part())
    res = pl.pallas_call(
        functools.partial(_kernel, block=cfg.block, chunk=chunk, g_pad=g_pad, scale=d**-0.5, window=window),
        out_shape=out_shape,
        grid=(b, kvh, splits),
        interpret=interpret,
        name="decode_attention",
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
    )(positions.astype(jnp.int32), ks, vs, sink, q, keys, values)
    if splits == 1:
        return res
    acc, m, total = res
    acc, m, total = acc[..., :g, :], m[..., :g], total[..., :g]
    top = jnp.maximum(jnp.max(m, axis=0), sink)  # [B, kv, g]; a missing sink is -inf
    w = jnp.exp(m - top)  # empty splits: e^(-inf) = 0
    den = jnp.sum(w * total, axis=0) + jnp.exp(sink - top)
    out = jnp.sum(w[..., None] * acc, axis=0) / den[..., None] * vs[None, :, None, None]
    return out.astype(q.dtype)
