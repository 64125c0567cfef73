"""Sharding rules: one logical layout per weight, a `PartitionSpec` per `QArray` field derived from it.

A weight's *layout* says how its logical [N, K] matrix (HF orientation) is split over one mesh
axis (Megatron-LM's tensor parallelism, arXiv:1909.08053, as vLLM's ``ColumnParallelLinear`` /
``RowParallelLinear`` implement it):

* ``column``: N split (q/k/v, gate/up, the LM head): each device computes N / tp outputs from the
  whole input; the output is sharded along its last axis.
* ``row``: K split (o, down): each device reads K / tp input channels and computes a partial sum
  over them; an all-reduce (``psum``) after the matmul completes it.
* ``expert``: the expert axis E of an expert-stacked weight (`jquant.core.experts`) split: each
  device holds E / tp whole experts (expert parallelism for `jquant.ops.grouped_qmatmul`).
* ``replicated``: every device holds the whole tensor (embeddings, norms, the MoE router).

`field_specs` derives every `QArray` field's spec from that one layout (leading layer / expert axes
of stacked weights are never split, except the expert axis under ``expert``):

=========  ==========================  ==========================  =====================
field      column (N split)            row (K split)               expert (E split)
=========  ==========================  ==========================  =====================
data       [..., N/tp, Kc]             [..., N, Kc/tp]             [.., E/tp, N, Kc]
scale      [..., Ns/tp, Ks]            [..., Ns, Ks/tp]            [.., E/tp, Ns, Ks]
zero       as scale                    as scale                    as scale
perm       [..., K] whole              [..., K/tp]                 [.., E/tp, K]
scale2     whole                       whole                       [.., E/tp, 1, 1]
=========  ==========================  ==========================  =====================

(Kc = K * container_bits / 8 packed bytes; Ns, Ks = the scale grid.) A scale grid with a single row
(per-tensor scales) or a single column (per-channel scales) is not split along that axis: every
device keeps it whole.

Alignment (`fit`): a split must fall on a packed byte (K / tp a multiple of the codes per byte) and
on a scale block. When a device's share is smaller than a block but divides it (8-way TP of a
K = 256 o_proj with group size 128: 32 columns a device), the scales are *re-blocked* losslessly:
each scale entry is repeated so that one entry covers exactly one device's share (the block
becomes (bn, 32)); `jquant.core.dequantize` of the result is bit-identical, the scale arrays grow by
the repeat factor. A share that neither divides nor is a multiple of the block, or an N / K / E
that tp does not divide, is refused (`ShardingError`, naming the tensor and the numbers).

Act-order (``perm``) under a K split: ``data`` columns are in act-order (groups contiguous), so a
K split of the codes, scales and ``perm`` stays group-aligned; but device r's columns read the
input channels ``perm[r*K/tp : (r+1)*K/tp]``, which are spread over all of K. The row-parallel
matmul (`jquant.parallel.tp_ops`) therefore gathers the whole activation row on every device and
takes its ``perm`` entries locally: correct, at the cost of an all-gather of the layer's input
(what vLLM avoids by re-sorting the previous layer's outputs; a possible later optimization).
"""

from __future__ import annotations

import dataclasses
import enum
import re

import numpy as np
from jax.sharding import PartitionSpec as P

from jquant.core.errors import FormatError
from jquant.core.qarray import QArray

__all__ = [
    "Layout",
    "Rules",
    "ShardingError",
    "LLAMA_RULES",
    "field_specs",
    "array_spec",
    "fit",
    "needs_reblock",
    "why_not_split",
]


class ShardingError(FormatError):
    """A weight cannot be split as its layout asks (names the tensor, the layout and the numbers)."""


class Layout(enum.Enum):
    REPLICATED = "replicated"
    COLUMN = "column"
    ROW = "row"
    EXPERT = "expert"


_SUFFIX = re.compile(r"\.(weight|bias|input_quant)$")


@dataclasses.dataclass(frozen=True)
class Rules:
    """Which layout each weight gets, by name: the one logical spec a user writes.

    Names are HF tensor names (``model.layers.0.self_attn.q_proj.weight``: a trailing ``.weight``,
    ``.bias`` or ``.input_quant`` is ignored) or module paths of a built model
    (``stacked_layers.self_attn.q_proj``, ``layers.0.mlp.down_proj``); the first pattern that
    ``re.search``-es the name decides, and a name no pattern matches is replicated.

    Attributes:
        patterns: (regex, `Layout`) pairs, in priority order.
        axis: the mesh axis the column / row / expert splits use.
    """

    patterns: tuple[tuple[str, Layout], ...]
    axis: str = "tp"

    def layout_of(self, name: str) -> Layout:
        base = _SUFFIX.sub("", name)
        for pattern, layout in self.patterns:
            if re.search(pattern, base):
                return layout
        return Layout.REPLICATED


# The Llama family and its MoE variants (Mixtral's w1/w3/w2 experts, Qwen3-MoE's gate/up/down).
# Per-expert checkpoint tensors (``...experts.3.w1.weight``) are 2-D: column / row like a dense MLP;
# the stacked expert weights of a built model (``...mlp.gate_up_proj`` of a `SparseMoeBlock`) are
# split along E by `jquant.parallel.shard`, which knows the module, not by a pattern here.
LLAMA_RULES = Rules(
    patterns=(
        (r"(^|\.)(q_proj|k_proj|v_proj|qkv_proj|gate_proj|up_proj|gate_up_proj|w1|w3)$", Layout.COLUMN),
        (r"(^|\.)(o_proj|down_proj|w2)$", Layout.ROW),
        (r"(^|\.)lm_head$", Layout.COLUMN),
    )
)


def _split_axes(layout: Layout) -> int | None:
    """Which logical axis of [N, K] a layout splits (0 = N, 1 = K), None for none / the expert axis."""
    return {Layout.COLUMN: 0, Layout.ROW: 1}.get(layout)


def field_specs(w: QArray, layout: Layout, axis: str = "tp") -> QArray:
    """A `QArray` whose array fields are the `PartitionSpec` of ``w``'s fields under ``layout``.

    Works for stacked weights (leading layer / expert axes on every field: their number is read
    from ``w.data``); absent fields stay None, so the result is a pytree prefix of ``w`` (what
    ``jax.shard_map``'s ``in_specs`` and ``jax.device_put`` take).

    Args:
        w: the weight (numpy, device arrays, or ShapeDtypeStructs).
        layout: how its logical [N, K] (or its expert axis) is split.
        axis: the mesh axis name.

    Returns:
        ``w`` with `PartitionSpec` leaves.
    """
    lead = w.data.ndim - 2
    if layout is Layout.EXPERT and lead < 1:
        raise ShardingError(f"expert layout needs an expert-stacked weight, got data of rank {w.data.ndim}")
    specs = {}
    ns, ks = w.scale_shape
    for f, a in w.arrays().items():
        inner = a.ndim - lead  # 2 for data / scale / zero / scale2, 1 for perm
        if layout is Layout.EXPERT:
            specs[f] = P(*([None] * (lead - 1)), axis, *([None] * inner))
            continue
        dims: list = [None] * inner
        if layout is Layout.COLUMN and f in ("data", "scale", "zero") and (f == "data" or ns > 1):
            dims[0] = axis
        elif layout is Layout.ROW:
            if f == "perm" or f == "data" or (f in ("scale", "zero") and ks > 1):
                dims[-1] = axis
        specs[f] = P(*([None] * lead), *dims)
    return dataclasses.replace(w, **specs)


def array_spec(shape: tuple[int, ...], layout: Layout, axis: str = "tp", *, bias: bool = False) -> P:
    """The spec of a dense weight [..., N, K] (or a bias [..., N] with ``bias=True``) under ``layout``."""
    nd = len(shape)
    if layout is Layout.REPLICATED or nd == 0:
        return P()
    if layout is Layout.EXPERT:
        lead = nd - (1 if bias else 2)
        if lead < 1:
            raise ShardingError(f"expert layout needs a leading expert axis, got shape {tuple(shape)}")
        return P(*([None] * (lead - 1)), axis, *([None] * (nd - lead)))
    if bias:  # a column-parallel bias is split with its outputs; a row-parallel one is added after the psum
        return P(*([None] * (nd - 1)), axis) if layout is Layout.COLUMN else P()
    dims = [None] * nd
    dims[nd - 2 if layout is Layout.COLUMN else nd - 1] = axis
    return P(*dims)


def why_not_split(shape: tuple[int, ...], layout: Layout, tp: int, *, bias: bool = False) -> str:
    """Empty when a dense array of ``shape`` splits evenly under ``layout`` over ``tp`` devices, else why not."""
    spec = array_spec(shape, layout, bias=bias)
    for d, s in zip(shape, spec):
        if s is not None and d % tp:
            return f"dimension {d} of shape {tuple(shape)} is not divisible by {tp} devices ({layout.value} layout)"
    return ""


def _repeat(a, reps: int, axis: int):
    if reps == 1:
        return a
    if isinstance(a, np.ndarray):
        return np.repeat(a, reps, axis=axis)
    import jax.numpy as jnp  # device arrays: re-block on device

    return jnp.repeat(a, reps, axis=axis)


def _reblock_plan(w: QArray, layout: Layout, tp: int, name: str | None) -> tuple[int, int] | None:
    """(logical axis, repeat factor) of the re-blocking ``layout`` needs, None when none; raises on a misfit."""
    lead = w.data.ndim - 2
    if layout is Layout.EXPERT:
        e = w.data.shape[lead - 1] if lead >= 1 else 0
        if lead < 1 or e % tp:
            raise ShardingError(f"{e} experts are not divisible by {tp} devices (expert layout)", tensor=name)
        return None
    ax = _split_axes(layout)
    extent = w.shape[ax]
    what = ("N", "K")[ax]
    if extent % tp:
        raise ShardingError(f"{what}={extent} is not divisible by {tp} devices ({layout.value} layout)", tensor=name)
    share = extent // tp
    if ax == 1 and share % w.qtype.codes_per_byte:
        raise ShardingError(
            f"K={extent} over {tp} devices gives {share} columns a device, not a whole number of bytes of "
            f"{w.qtype.container_bits}-bit codes ({w.qtype.codes_per_byte} a byte)",
            tensor=name,
        )
    block = w.block[ax]
    if w.scale_shape[ax] == 1 or share % block == 0:
        return None  # one scale along this axis (kept whole on every device), or shares on block edges
    if extent % block == 0 and block % share == 0:
        return ax, block // share
    raise ShardingError(
        f"{what}={extent} over {tp} devices gives {share} a device, which neither divides nor is a multiple of "
        f"the scale block {w.block} along {what} ({layout.value} layout)",
        tensor=name,
    )


def needs_reblock(w: QArray, layout: Layout, tp: int, *, name: str | None = None) -> bool:
    """Whether `fit` would re-block ``w``'s scales (``w`` may hold ShapeDtypeStructs); raises like `fit`."""
    if layout is Layout.REPLICATED or tp == 1:
        return False
    return _reblock_plan(w, layout, tp, name) is not None


def fit(w: QArray | object, layout: Layout, tp: int, *, name: str | None = None):
    """``w``, with its scale blocks re-blocked where needed, so that ``layout`` over ``tp`` devices is
    group- and byte-aligned (module docstring). Dense arrays and `Layout.REPLICATED` pass through.

    Args:
        w: a `QArray` (numpy or device arrays, possibly stacked) or a dense array [..., N, K].
        layout: the weight's layout.
        tp: devices along the split axis.
        name: named in errors.

    Returns:
        a `QArray` whose `jquant.core.dequantize` equals ``w``'s bit for bit, or ``w`` itself.

    Raises:
        ShardingError: the split cannot be aligned (the message names the tensor and the numbers).
    """
    if layout is Layout.REPLICATED or tp == 1:
        return w
    if not isinstance(w, QArray):
        why = why_not_split(tuple(w.shape), layout, tp)
        if why:
            raise ShardingError(why, tensor=name)
        return w
    plan = _reblock_plan(w, layout, tp, name)
    if plan is None:
        return w
    ax, reps = plan  # each scale entry repeated over the device shares of its block
    lead = w.data.ndim - 2
    changes = {f: _repeat(getattr(w, f), reps, lead + ax) for f in ("scale", "zero") if getattr(w, f) is not None}
    share = w.shape[ax] // tp
    new_block = (share, w.block[1]) if ax == 0 else (w.block[0], share)
    return w.replace(block=new_block, **changes)
