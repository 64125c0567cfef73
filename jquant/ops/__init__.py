"""jquant.ops: ``qmatmul(x, w)`` (``x @ dequantize(w).T``) with an XLA reference and kernel backends.

Importing this package makes `QArray` a JAX pytree and registers the XLA reference backend.
``qtake(w, ids)`` is the embedding-lookup twin: ``dequantize(w)[ids]`` touching only those rows.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops import xla_cpu, xla_w8a8  # noqa: E402, F401  (register their backends)
from jquant.ops.backend import Backend, available_backends, register_backend  # noqa: E402
from jquant.ops.qmatmul import explain, qmatmul, reference_qmatmul, select  # noqa: E402
from jquant.ops.qtake import qtake  # noqa: E402

__all__ = [
    "Backend",
    "available_backends",
    "explain",
    "qmatmul",
    "qtake",
    "reference_qmatmul",
    "register_backend",
    "select",
]
