"""Quantized KV cache: the cache dtype option, its scales, and the quantize-on-write step.

``kv_cache_dtype`` (`jquant.models.from_checkpoint`, ``jquant generate --kv-cache-dtype``):

* ``auto``: the model dtype, no scales (vLLM's default: checkpoint KV scales are then unused).
* ``fp8_e4m3`` / ``fp8_e5m2``: codes ``clip(x / scale, ±max)`` cast to float8 (round to nearest
  even), as vLLM's ``scaled_fp8_conversion`` writes its fp8 cache (``x / scale``, then saturate).
* ``int8``: codes ``clip(round_half_even(x / scale), -128, 127)``, int8.

Scales are multipliers (``k ~= code * k_scale``), float32, one per KV head (a per-tensor scale is
broadcast to the heads). They come from, in order:

1. the checkpoint: ``ckpt.metadata["kv_cache"]["layers"][<layer>.self_attn]["k_scale" / "v_scale"]``
   (compressed-tensors ``kv_cache_scheme``, ModelOpt ``kv_cache_quant_algo``, Quark ``kv_cache_group``;
   see `jquant.formats.fp8.KVCache`), when the checkpoint's KV dtype is the one asked for;
2. else the first prefill, like vLLM's ``Attention.calc_kv_scales`` (``calculate_kv_scales=True``):
   ``scale = amax(|x|) / range`` over the whole prefill batch, per layer, with vLLM's ranges
   ``K_SCALE_CONSTANT = 200`` and ``V_SCALE_CONSTANT = 100`` (``vllm/envs.py``) for fp8, which
   leave headroom for later tokens larger than the prompt's; for int8 (no vLLM counterpart) the
   full range 127. Later tokens beyond ``range * scale`` saturate.
3. or a constant given by the caller (``kv_cache_scales=1.0``: vLLM's default without
   calibration).

A scale of 0 in the cache means "not yet computed": the first write computes it (`write_layer`).

Attention reads the codes: ``q . (code * s_k) = (q . code) * s_k`` and ``p . (code * s_v) =
(p . code) * s_v`` per KV head, so the scales multiply the scores and the output; the codes are
widened (exactly) inside the two einsums and no full-precision cache ever exists.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.errors import ConfigError
from jquant.ops.qmatmul import take_layer

__all__ = ["KV_CACHE_DTYPES", "KVQuant", "kv_quant_from_metadata", "quantize_kv", "write_layer"]

# name -> (code dtype, largest code magnitude, calibration range for k, for v)
_SPECS = {
    "fp8_e4m3": (jnp.float8_e4m3fn, 448.0, 200.0, 100.0),
    "fp8_e5m2": (jnp.float8_e5m2, 57344.0, 200.0, 100.0),
    "int8": (jnp.int8, 127.0, 127.0, 127.0),
}
KV_CACHE_DTYPES = ("auto", *_SPECS)


@dataclasses.dataclass(frozen=True)
class KVQuant:
    """How a model's KV cache is quantized (static, hashable: it lives on the model as a plain attribute).

    Attributes:
        dtype: ``"fp8_e4m3"``, ``"fp8_e5m2"`` or ``"int8"``.
        k_scales, v_scales: per layer, one float per KV head; None: computed on the first prefill.
        source: where the scales come from (``"checkpoint"``, ``"prefill"``, ``"constant"``), for reports.
    """

    dtype: str
    k_scales: tuple[tuple[float, ...], ...] | None = None
    v_scales: tuple[tuple[float, ...], ...] | None = None
    source: str = "prefill"

    @property
    def code_dtype(self):
        return _SPECS[self.dtype][0]

    def initial_scales(self, num_layers: int, num_kv_heads: int) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
        """Per-layer float32 [num_kv_heads] k and v scales (zeros where the first prefill sets them)."""

        def arrays(scales):
            if scales is None:
                return tuple(jnp.zeros((num_kv_heads,), jnp.float32) for _ in range(num_layers))
            return tuple(jnp.asarray(s, jnp.float32) for s in scales)

        return arrays(self.k_scales), arrays(self.v_scales)


def _per_head(values: list[float], num_kv_heads: int, what: str) -> tuple[float, ...]:
    v = np.asarray(values, np.float32).ravel()
    if v.size == 1:
        v = np.repeat(v, num_kv_heads)
    if v.size != num_kv_heads:
        raise ConfigError(
            f"KV-cache scale {what} has {v.size} values; expected 1 or num_key_value_heads={num_kv_heads}"
        )
    if not (np.isfinite(v).all() and (v > 0).all()):
        raise ConfigError(f"KV-cache scale {what} must be finite and > 0, got {v.tolist()}")
    return tuple(float(x) for x in v)


def kv_quant_from_metadata(
    kv_cache_dtype: str,
    metadata: Mapping[str, Any] | None,
    num_layers: int,
    num_kv_heads: int,
    *,
    scales: str | float = "auto",
) -> KVQuant | None:
    """The `KVQuant` for a ``kv_cache_dtype`` option and a checkpoint's ``metadata["kv_cache"]``.

    Args:
        kv_cache_dtype: one of `KV_CACHE_DTYPES`; ``"auto"`` gives None (cache in the model dtype).
        metadata: ``ckpt.metadata.get("kv_cache")`` (`jquant.formats.fp8.KVCache.describe`) or None.
        num_layers, num_kv_heads: the decoder geometry.
        scales: ``"auto"`` (checkpoint scales when the checkpoint's KV dtype matches, else the first
            prefill), ``"checkpoint"`` (required; error if absent or of another dtype),
            ``"prefill"`` (ignore the checkpoint's), or a positive float for every head and layer.

    Raises:
        ConfigError: an unknown dtype or scales option, or checkpoint scales that are missing for a
            layer, of the wrong count, or not finite and positive (naming the layer).
    """
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ConfigError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")
    if kv_cache_dtype == "auto":
        return None
    if not isinstance(scales, str):
        one = _per_head([float(scales)], num_kv_heads, "kv_cache_scales")
        return KVQuant(kv_cache_dtype, (one,) * num_layers, (one,) * num_layers, "constant")
    if scales not in ("auto", "checkpoint", "prefill"):
        raise ConfigError(f"kv_cache_scales must be 'auto', 'checkpoint', 'prefill' or a float, got {scales!r}")
    layers = (metadata or {}).get("layers") or {}
    ck_dtype = (metadata or {}).get("dtype")
    if scales == "prefill" or (scales == "auto" and not layers):
        return KVQuant(kv_cache_dtype)
    if not layers:
        raise ConfigError("kv_cache_scales='checkpoint' but the checkpoint has no KV-cache scales")
    if ck_dtype != kv_cache_dtype:
        msg = f"the checkpoint's KV-cache scales are for {ck_dtype}, not kv_cache_dtype={kv_cache_dtype!r}"
        if scales == "checkpoint":
            raise ConfigError(msg)
        warnings.warn(msg + ": computing the scales on the first prefill instead", stacklevel=3)
        return KVQuant(kv_cache_dtype)
    ks, vs = [], []
    for i in range(num_layers):
        name = f"model.layers.{i}.self_attn"
        entry = layers.get(name)
        if entry is None or "k_scale" not in entry or "v_scale" not in entry:
            raise ConfigError(f"checkpoint KV-cache scales lack {name}.k_scale / v_scale")
        ks.append(_per_head(entry["k_scale"], num_kv_heads, f"{name}.k_scale"))
        vs.append(_per_head(entry["v_scale"], num_kv_heads, f"{name}.v_scale"))
    return KVQuant(kv_cache_dtype, tuple(ks), tuple(vs), "checkpoint")


def quantize_kv(x: jax.Array, scale: jax.Array, code_dtype) -> jax.Array:
    """Codes of ``x`` [B, T, H, D] with per-head f32 ``scale`` [H], in ``code_dtype`` (see module doc).

    The division runs in float32; the codes leave through an ``optimization_barrier`` so that XLA
    GPU's ``SimplifyFPConversions`` cannot fold the later widening convert into this narrowing one
    (same hazard as `jquant.ops.act_quant._round_to_e4m3`).
    """
    dt = jnp.dtype(code_dtype)
    y = x.astype(jnp.float32) / scale[:, None]
    if dt == jnp.int8:
        codes = jnp.clip(jnp.round(y), -128, 127).astype(jnp.int8)
    else:
        m = float(jnp.finfo(dt).max)
        codes = jnp.clip(y, -m, m).astype(dt)
    return jax.lax.optimization_barrier(codes)


def _calibrated(x: jax.Array, scale: jax.Array, rng: float) -> jax.Array:
    """``scale`` where set (> 0); else ``amax(|x|) / rng`` (1.0 when x is all zeros) for every head."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)))
    fresh = jnp.where(amax > 0, amax / rng, jnp.float32(1.0))
    return jnp.where(scale > 0, scale, fresh)


def write_layer(
    kv: tuple[jax.Array, ...], k: jax.Array, v: jax.Array, start: jax.Array, layer: jax.Array | None = None
) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Writes one layer's new keys / values into its cache slots ``[start, start + T)``.

    Args:
        kv: the layer's cache: ``(k, v)`` [B, S, H, D] in the model dtype, or ``(k_codes, v_codes,
            k_scale, v_scale)`` with codes [B, S, H, D] (fp8 / int8) and f32 scales [H] (0: unset).
            With ``layer``: every layer's cache stacked, [L, B, S, H, D] and scales [L, H].
        k, v: [B, T, H, D] new keys (rotated) and values.
        start: int32 scalar, the slot of the first new token; or int32 [B], one slot per row.
        layer: None, or an int32 scalar: the layer of a stacked ``kv`` to write (`KVCache` of a
            scanned model): only the T new slots of that layer are written, in place in the stack,
            instead of slicing out, updating and writing back the layer's whole buffer.

    Returns:
        ``(new_kv, keys, values, k_scale, v_scale)``: the layer's updated cache (same structure as
        ``kv``: the whole stack when ``layer`` is given), the layer's whole key / value buffers
        [B, S, H, D] to attend over (codes for a quantized cache), and their f32 [H] scales (None
        for a float cache).
    """
    if len(kv) == 2:
        kb, vb = _write(kv[0], k, start, layer), _write(kv[1], v, start, layer)
        return (kb, vb), _at(kb, layer), _at(vb, layer), None, None
    kc, vc, ks_all, vs_all = kv
    name = next(n for n, s in _SPECS.items() if jnp.dtype(s[0]) == kc.dtype)
    _, _, k_rng, v_rng = _SPECS[name]
    ks, vs = _calibrated(k, _at(ks_all, layer), k_rng), _calibrated(v, _at(vs_all, layer), v_rng)
    kb = _write(kc, quantize_kv(k, ks, kc.dtype), start, layer)
    vb = _write(vc, quantize_kv(v, vs, vc.dtype), start, layer)
    if layer is None:
        ks_all, vs_all = ks, vs
    else:
        ks_all = jax.lax.dynamic_update_index_in_dim(ks_all, ks, layer, 0)
        vs_all = jax.lax.dynamic_update_index_in_dim(vs_all, vs, layer, 0)
    return (kb, vb, ks_all, vs_all), _at(kb, layer), _at(vb, layer), ks, vs


def _at(a: jax.Array, layer: jax.Array | None) -> jax.Array:
    """Layer ``layer`` of a stacked array (``a`` itself when ``layer`` is None)."""
    return a if layer is None else take_layer(a, layer)


def _write(buf: jax.Array, new: jax.Array, start: jax.Array, layer: jax.Array | None = None) -> jax.Array:
    """``new`` [B, T, H, D] written into ``buf`` [B, S, H, D] at slots ``[start, start + T)``.

    ``start`` is an int32 scalar (every row at the same slot: one ``dynamic_update_slice``) or int32
    [B] (a ragged batch, `jquant.models.generate`: each row at its own slot, one scatter; slots past
    S are dropped, where ``dynamic_update_slice`` would clamp). With ``layer`` (int32 scalar),
    ``buf`` is a stack [L, B, S, H, D] and only layer ``layer``'s slots are written.
    """
    new = new.astype(buf.dtype)
    b, t = new.shape[:2]
    if jnp.ndim(start) == 0:
        if layer is None:
            return jax.lax.dynamic_update_slice(buf, new, (0, start, 0, 0))
        return jax.lax.dynamic_update_slice(buf, new[None], (layer, 0, start, 0, 0))
    slots = start[:, None] + jnp.arange(t, dtype=jnp.int32)  # [B, T]
    if layer is None:
        return buf.at[jnp.arange(b)[:, None], slots].set(new, mode="drop")
    return buf.at[layer, jnp.arange(b)[:, None], slots].set(new, mode="drop")
