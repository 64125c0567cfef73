"""jquant.parallel: quantized models split over several devices with XLA SPMD (``jax.sharding``).

>>> mesh = jquant.parallel.make_mesh(4)                        # 4 devices on one axis "tp"
>>> model = jquant.models.from_checkpoint(ckpt, mesh=mesh)     # each device receives only its shards
>>> logits = jax.jit(lambda m, ids: m(ids))(model, ids)        # same logits as on one device

Pieces (a file per idea):

* `rules`: a weight's logical layout (column = N split, row = K split, expert = E split,
  replicated) by name (`Rules`, `LLAMA_RULES`), the `PartitionSpec` of every `QArray` field derived
  from it (`field_specs`), and the lossless re-blocking that aligns a split with scale groups and
  packed bytes (`fit`). Act-order ``perm`` under a K split is handled (see `rules`).
* `place`: one tensor onto its shards, slice by slice from the memory-mapped host array.
* `tp_ops`: the local ``qmatmul`` / ``grouped_qmatmul`` under ``jax.shard_map`` plus the layout's
  collective (psum after row-parallel; psum of disjoint rows after expert-parallel).
* `linear` / `weights`: `ShardedQuantLinear`, and `ShardedWeights`, which the model builders use to
  place each weight directly on its shards while loading (`jquant.models.from_checkpoint(mesh=)`).
* `shard`: ``shard(model, mesh, rules)`` for a model already built, `shard_checkpoint`,
  `load_sharded` (Orbax restore onto any mesh), `make_mesh`, `device_bytes`.

Everything between the sharded matmuls (attention, RoPE, norms, residuals) is left to GSPMD: the
model code is the single-device code; column-parallel outputs are sharded by heads when the head
count divides the axis, and the KV cache (`jquant.models.kv_cache`) is split by KV heads then.

Design notes (on paper, not built):

Pipeline parallelism. The layer-stacked decoder (``stacked_layers``: every array with a leading
layer axis L, run by ``lax.scan``) is the natural unit: a second mesh axis ``"pp"`` of size S splits
that leading axis (``P("pp", ...)`` prepended to every field spec of `field_specs`, which already
keeps leading axes whole; `Rules` would gain a layer-axis entry). Each stage holds L / S layers;
a ``shard_map`` over ``"pp"`` runs the stage's ``scan`` and hands activations to the next stage with
``lax.ppermute`` (GPipe-style microbatches over the batch axis keep the stages busy; decoding with
batch 1 would instead interleave requests). The KV cache is stacked the same way and split along
its layer axis with its stage. Quantized layers change nothing: a stage's local ``scan`` calls the
same sharded matmuls, and mixed-type checkpoints (unrolled ``layers``) would be cut into stages at
layer boundaries instead. Tensor parallelism stays on the ``"tp"`` axis within a stage (a 2-D mesh
``("pp", "tp")``, tp within a host's NVLink domain).

Multi-host. Nothing here assumes one process: `Mesh` over ``jax.devices()`` spans hosts after
``jax.distributed.initialize()``; `place` builds arrays with ``jax.make_array_from_callback``, which
asks each process only for the slices of its own addressable devices, so every host reads only
its shards from the memory-mapped checkpoint (or from Orbax, whose restore is already
multi-process). What must change: the canonical writers name their temporary folder by process id,
which differs across hosts; a multi-host Orbax save must use one agreed temporary path (process 0
creates and renames it, the others write their shards into it after a barrier, as Orbax's own
``CheckpointManager`` does). Tensor parallelism should stay within a host (psum per layer over
NVLink); data parallelism (a ``"dp"`` axis replicating weights) or pipeline stages go across hosts.
"""

from jquant.core.activation import register_pytree as _register_act
from jquant.core.qarray import register_pytree as _register_qarray

_register_qarray()
_register_act()

from jquant.parallel.linear import ShardedQuantLinear  # noqa: E402
from jquant.parallel.place import place  # noqa: E402
from jquant.parallel.rules import (  # noqa: E402
    LLAMA_RULES,
    Layout,
    Rules,
    ShardingError,
    field_specs,
    fit,
)
from jquant.parallel.shard import (  # noqa: E402
    device_bytes,
    kv_cache_sharding,
    load_sharded,
    make_mesh,
    shard,
    shard_checkpoint,
)
from jquant.parallel.tp_ops import ExpertParallel, expert_parallel_grouped_qmatmul, parallel_qmatmul  # noqa: E402
from jquant.parallel.weights import ShardedWeights  # noqa: E402

__all__ = [
    "LLAMA_RULES",
    "ExpertParallel",
    "Layout",
    "Rules",
    "ShardedQuantLinear",
    "ShardedWeights",
    "ShardingError",
    "device_bytes",
    "expert_parallel_grouped_qmatmul",
    "field_specs",
    "fit",
    "kv_cache_sharding",
    "load_sharded",
    "make_mesh",
    "parallel_qmatmul",
    "place",
    "shard",
    "shard_checkpoint",
]
