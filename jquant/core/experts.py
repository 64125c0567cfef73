"""Expert-stacked weights: one `QArray` (or dense array) per projection for all experts of a MoE layer.

Convention (the one the layer-stacked decoder of `jquant.models.llama` already uses for ``scan``):
an expert-stacked `QArray` is an ordinary `QArray` whose every array field carries one extra
leading axis E, while its static fields (``qtype``, ``shape``, ``block``) describe *one* expert::

    data   [E, N, K * c / 8]          scale  [E, ceil(N / bn), ceil(K / bk)]
    zero   [E, ...scale] or None      perm   [E, K] or None (each expert its own act-order)
    scale2 [E, 1, 1] or None

Expert e is the `QArray` of the arrays' e-th slices, so everything per-expert follows from the
pytree: ``jax.vmap(jnp_dequant.dequantize)(w)`` is the [E, N, K] dequantization, and
`jquant.ops.grouped_qmatmul` reads the stack as it is. Dense experts are a plain [E, N, K] array.
Stacking is a pure `np.stack` of the per-expert arrays, so it is lossless by construction
(`unstack_experts` inverts it bit for bit; tests/ops/test_grouped.py checks both).

Checkpoints name experts one of two ways, and both convert to the same per-expert HF names
(``<layer>.<moe>.experts.{e}.<proj>.weight`` [N, K]), which the models stack at load:

* per expert, as original HF releases and transformers' ``save_pretrained`` write Mixtral and
  Qwen-MoE (transformers 5 reverses its in-memory fusion on save: ``conversion_mapping.py``);
* fused 3-D tensors, as transformers 5 holds experts in memory and as gpt-oss is released:
  `split_fused_experts` slices them, losslessly (views and transposes, no arithmetic).

Numpy only (no JAX), like the rest of `jquant.core`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from jquant.core.errors import FormatError
from jquant.core.qarray import ARRAY_FIELDS, QArray

__all__ = ["stack_experts", "unstack_experts", "num_experts", "why_not_stack", "split_fused_experts", "FUSED_LAYOUTS"]

# Per model type: the sparse block's module in per-expert HF names, the experts' (gate, up, down)
# projection names, and how transformers 5 fuses them in ``mlp.experts``:
# * "concat" (``MixtralExperts`` / ``Qwen2MoeExperts`` / ``Qwen3MoeExperts``): ``gate_up_proj``
#   [E, 2I, H] = cat([gate, up], dim=1) per expert, ``down_proj`` [E, H, I] (HF linear orientation;
#   conversion_mapping.py: MergeModulelist(dim=0) then Concatenate(dim=1));
# * "gpt_oss" (``GptOssExperts``, ``is_transposed=True``): ``gate_up_proj`` [E, H, 2I] with gate and
#   up interleaved along 2I, ``down_proj`` [E, I, H], biases ``*_bias`` [E, N]. Per expert these
#   become ``experts.{e}.gate_up_proj.{weight,bias}`` [2I, H] (interleave kept, as
#   `jquant.formats.mxfp4` converts the MXFP4 release) and ``experts.{e}.down_proj.*``.
FUSED_LAYOUTS = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2"), "concat"),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj"), "concat"),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj"), "concat"),
    "gpt_oss": ("mlp", ("gate_up_proj", "", "down_proj"), "gpt_oss"),
}
_FUSED_RE = re.compile(
    r"(?P<layer>model\.layers\.\d+)\.mlp\.(?:experts\.(?P<proj>gate_up_proj|down_proj)(?P<bias>_bias)?|(?P<router>gate\.weight))"
)


def split_fused_experts(name: str, value, model_type: str | None) -> dict:
    """``{name: value}``, or the per-expert HF tensors of a fused 3-D expert tensor (see `FUSED_LAYOUTS`).

    Args:
        name: the checkpoint name, e.g. ``model.layers.0.mlp.experts.gate_up_proj``.
        value: its array (a float tensor for fused experts; any value passes through otherwise).
        model_type: the config's ``model_type``; other types pass through.

    Returns:
        HF name -> array: per expert ``<layer>.<moe>.experts.{e}.<proj>.weight`` [N, K] (and
        ``.bias`` [N] for gpt-oss), slices of ``value``; Mixtral's fused-layout router
        ``mlp.gate.weight`` is renamed ``block_sparse_moe.gate.weight``.

    Raises:
        FormatError: a fused tensor that is not 3-D (2-D for biases) or whose gate/up width is odd.
    """
    m = _FUSED_RE.fullmatch(name)
    if m is None or model_type not in FUSED_LAYOUTS or isinstance(value, QArray):
        return {name: value}
    module, (g, u, d), layout = FUSED_LAYOUTS[model_type]
    p = f"{m['layer']}.{module}"
    if m["router"]:
        return {f"{p}.gate.weight": value}
    a = np.asarray(value)
    want = 2 if m["bias"] else 3
    if a.ndim != want:
        raise FormatError(f"fused expert tensor of shape {list(a.shape)}, expected {want}-D [E, ...]", tensor=name)
    proj, e = m["proj"], a.shape[0]
    if m["bias"]:
        if layout != "gpt_oss":
            raise FormatError(f"{model_type} experts have no biases", tensor=name)
        target = g if proj == "gate_up_proj" else d
        return {f"{p}.experts.{j}.{target}.bias": a[j] for j in range(e)}
    if layout == "gpt_oss":  # [E, in, out] -> per expert [out, in]
        target = g if proj == "gate_up_proj" else d
        return {f"{p}.experts.{j}.{target}.weight": np.ascontiguousarray(a[j].T) for j in range(e)}
    if proj == "down_proj":
        return {f"{p}.experts.{j}.{d}.weight": a[j] for j in range(e)}
    if a.shape[1] % 2:
        raise FormatError(f"gate_up_proj of shape {list(a.shape)}: 2I = {a.shape[1]} is odd", tensor=name)
    i = a.shape[1] // 2
    out = {}
    for j in range(e):
        out[f"{p}.experts.{j}.{g}.weight"] = a[j, :i]
        out[f"{p}.experts.{j}.{u}.weight"] = a[j, i:]
    return out


def why_not_stack(ws) -> str:
    """Empty string when `stack_experts` can stack ``ws`` (per-expert QArrays or dense [N, K] arrays), else why not."""
    if not ws:
        return "no experts"
    if all(not isinstance(w, QArray) for w in ws):
        shapes, dts = {tuple(w.shape) for w in ws}, {np.dtype(w.dtype) for w in ws}
        if len(shapes) != 1 or len(dts) != 1 or len(next(iter(shapes))) != 2:
            return f"dense experts differ in shape or dtype, or are not 2-D: {shapes}, {dts}"
        return ""
    if not all(isinstance(w, QArray) for w in ws):
        return "mix of quantized and dense experts"
    a = ws[0]
    for w in ws[1:]:
        if (w.qtype, w.shape, w.block, w.layout_version) != (a.qtype, a.shape, a.block, a.layout_version):
            return (
                f"experts differ in code type, shape or block: {a.qtype.name} {a.shape} {a.block}"
                f" vs {w.qtype.name} {w.shape} {w.block}"
            )
        for f in ARRAY_FIELDS:
            x, y = getattr(a, f), getattr(w, f)
            if (x is None) != (y is None):
                return f"some experts have {f} and others do not"
            if x is not None and (np.dtype(x.dtype) != np.dtype(y.dtype) or x.shape != y.shape):
                return f"{f} differs in dtype or shape: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
    return ""


def stack_experts(ws, *, name: str | None = None):
    """One expert-stacked weight from the per-expert ones (see the module docstring), losslessly.

    Args:
        ws: E per-expert `QArray`s of one projection (numpy arrays, e.g. from `jquant.convert`), or
            E dense [N, K] arrays.
        name: named in errors (e.g. ``model.layers.0.block_sparse_moe.experts.*.w1.weight``).

    Returns:
        a `QArray` whose arrays have a leading expert axis, or a dense [E, N, K] array.

    Raises:
        FormatError: the experts do not share one code type, shape, block and set of arrays.
    """
    why = why_not_stack(ws)
    if why:
        raise FormatError(f"experts do not stack: {why}", tensor=name)
    if not isinstance(ws[0], QArray):
        return np.stack([np.asarray(w) for w in ws])
    stacked = {f: np.stack([np.asarray(getattr(w, f)) for w in ws]) for f in ws[0].arrays()}
    return dataclasses.replace(ws[0], **stacked)


def num_experts(w) -> int:
    """E of an expert-stacked `QArray` or dense [E, N, K] array."""
    return int((w.data if isinstance(w, QArray) else w).shape[0])


def unstack_experts(w) -> list:
    """The per-expert `QArray`s (or [N, K] arrays) of an expert-stacked weight: `stack_experts` inverted."""
    if not isinstance(w, QArray):
        return [w[e] for e in range(w.shape[0])]
    return [dataclasses.replace(w, **{f: a[e] for f, a in w.arrays().items()}) for e in range(num_experts(w))]
