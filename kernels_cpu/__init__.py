"""kernels_cpu: a C++ CPU qmatmul for jquant, called from JAX through the XLA FFI (`jax.ffi`).

Importing the package registers the ``cpu_qmatmul`` backend (`kernels_cpu.qmatmul`); the shared
library is compiled with the system C++ compiler on first use (`kernels_cpu.build`), and the
backend is unavailable, with the reason, when it cannot be (the dispatcher then falls back to
``xla_cpu_chunked``). It reads the canonical 4-bit / 8-bit `QArray` as stored, dequantizes in
registers and multiplies with f32 activations, with AVX-512 / AVX2 / scalar code picked at run time
and the rows split over XLA's intra-op threads.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops.backend import register_backend  # noqa: E402
from kernels_cpu.qmatmul import (  # noqa: E402
    CAPS,
    CpuQmatmulBackend,
    cpu_qmatmul,
    get_isa,
    read_bandwidth,
    set_isa,
    set_threads,
    why_not,
)

register_backend(CpuQmatmulBackend())

__all__ = [
    "CAPS",
    "CpuQmatmulBackend",
    "cpu_qmatmul",
    "get_isa",
    "read_bandwidth",
    "set_isa",
    "set_threads",
    "why_not",
]
