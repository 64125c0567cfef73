"""jquant.ops: ``qmatmul(x, w)`` (``x @ dequantize(w).T``) with an XLA reference and kernel backends.

Importing this package makes `QArray` a JAX pytree and registers the XLA reference backend.
``qtake(w, ids)`` is the embedding-lookup twin: ``dequantize(w)[ids]`` touching only those rows.
``grouped_qmatmul(x, w, group_sizes)`` runs expert-stacked weights over rows grouped by expert (MoE).
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops import xla_cpu, xla_w8a8  # noqa: E402, F401  (register their backends)
from jquant.ops.backend import Backend, available_backends, register_backend  # noqa: E402
from jquant.ops.grouped import explain_grouped, grouped_qmatmul  # noqa: E402
from jquant.ops.qmatmul import explain, qmatmul, reference_qmatmul, select  # noqa: E402
from jquant.ops.qtake import qtake  # noqa: E402

__all__ = [
    "Backend",
    "available_backends",
    "explain",
    "explain_grouped",
    "grouped_qmatmul",
    "qmatmul",
    "qtake",
    "reference_qmatmul",
    "register_backend",
    "select",
]
