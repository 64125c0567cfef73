"""jquant.ops: ``qmatmul(x, w)`` (``x @ dequantize(w).T``) with an XLA reference and kernel backends.

Importing this package makes `QArray` a JAX pytree and registers the XLA reference backend.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops.backend import Backend, available_backends, register_backend  # noqa: E402
from jquant.ops.qmatmul import explain, qmatmul, reference_qmatmul  # noqa: E402

__all__ = ["Backend", "available_backends", "explain", "qmatmul", "reference_qmatmul", "register_backend"]
