"""`ShardedWeights`: `jquant.nn.Weights` that places every tensor directly on its shards while loading.

The model builders (`jquant.models.llama`, `jquant.models.mixtral`) ask for tensors by HF name;
this subclass looks each name up in the `Rules`, fits it (`jquant.parallel.rules.fit`) and sends
each device only its slice of the (memory-mapped) host array (`jquant.parallel.place`). Linear
layers come back as `ShardedQuantLinear`; expert stacks are split along E (``expert_parallel``).
q/k/v and gate/up are not fused under a mesh: a contiguous N split of the fused weight would put
q columns and k columns on the same device (vLLM's ``QKVParallelLinear`` interleaves them per shard
instead; a later optimization). MoE gate/up stay fused: their split is along E, not N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from jax.sharding import Mesh

from jquant.core.errors import FormatError
from jquant.nn.linear import QuantLinear
from jquant.nn.weights import Weights
from jquant.parallel.linear import ShardedQuantLinear
from jquant.parallel.place import place
from jquant.parallel.rules import LLAMA_RULES, Layout, Rules
from jquant.parallel.tp_ops import ExpertParallel

__all__ = ["ShardedWeights"]


class ShardedWeights(Weights):
    """A checkpoint's tensors, each placed on ``mesh`` by ``rules`` as the model builder asks for it.

    Args:
        weights: HF name -> `QArray` | np.ndarray | jax.Array (``Checkpoint.weights``; device
            arrays, e.g. restored by `jquant.parallel.load_sharded`, are resharded if needed).
        dtype: compute dtype; float tensors are cast to it per slice.
        mesh: the device mesh.
        rules: layouts by name (default `LLAMA_RULES`).
        source: for error messages.
        on_place: optional callback ``(name)`` after each tensor is placed (the peak-memory test
            samples device memory there).
    """

    def __init__(
        self,
        weights: Mapping,
        dtype,
        *,
        mesh: Mesh,
        rules: Rules = LLAMA_RULES,
        source: object = None,
        on_place: Callable[[str], None] | None = None,
    ):
        super().__init__(weights, dtype, source=source)
        if rules.axis not in mesh.shape:
            raise ValueError(f"rules split over mesh axis {rules.axis!r}, but the mesh has axes {tuple(mesh.shape)}")
        self.mesh = mesh
        self.rules = rules
        self.on_place = on_place
        self.expert_parallel = ExpertParallel(mesh, rules.axis)

    def _place(self, name: str, w, layout: Layout, *, bias: bool = False):
        out = place(w, layout, self.mesh, self.rules.axis, dtype=self.dtype, name=name, bias=bias)
        if self.on_place is not None:
            self.on_place(name)
        return out

    def get(self, name: str, shape: tuple[int, ...] | None = None):
        w = self.raw(name)
        if shape is not None and tuple(w.shape) != tuple(shape):
            raise FormatError(f"shape {tuple(w.shape)}, expected {tuple(shape)}", file=self.source, tensor=name)
        layout = self.rules.layout_of(name)
        return self._place(name, w, layout, bias=name.endswith(".bias"))

    def linear(self, prefix: str, in_features: int, out_features: int, *, implementation=None) -> QuantLinear:
        q = super().linear(prefix, in_features, out_features, implementation=implementation)
        return ShardedQuantLinear.of(q, layout=self.rules.layout_of(prefix), mesh=self.mesh, axis=self.rules.axis)

    def fused_linear(self, prefixes, in_features, out_features, *, implementation=None):
        return None  # separate column-parallel linears (module docstring)

    def place_experts(self, stacked, name: str):
        """An expert stack (`jquant.core.experts.stack_experts`) split along E."""
        return self._place(name, stacked, Layout.EXPERT)
