"""kernels_cpu: a C++ CPU qmatmul for jquant, called from JAX through the XLA FFI (`jax.ffi`) and from
the Torch bridge through ctypes.

`kernels_cpu.qmatmul` registers the ``cpu_qmatmul`` backend when imported; importing this package does
so when JAX is already loaded (the JAX dispatcher imports it on first use on the CPU), and otherwise
imports nothing of JAX, so that the Torch bridge can use `kernels_cpu.build` (``ffi=False``) without
it. The public names below load `kernels_cpu.qmatmul` (and JAX) on first access. The shared library
is compiled with the system C++ compiler on first use (`kernels_cpu.build`); the backend is
unavailable, with the reason, when it cannot be (the dispatcher then falls back to
``xla_cpu_chunked``). It reads the canonical 4-bit / 8-bit `QArray` as stored, dequantizes in
registers and multiplies with f32 activations, with AVX-512 / AVX2 / scalar code picked at run time
and the rows split over its own small thread pool.
"""

import sys

__all__ = [
    "CAPS",
    "CpuQmatmulBackend",
    "cpu_qmatmul",
    "get_act_quant",
    "get_isa",
    "read_bandwidth",
    "set_act_quant",
    "set_isa",
    "set_threads",
    "why_not",
]


def __getattr__(name: str):
    if name in __all__:
        from kernels_cpu import qmatmul

        return getattr(qmatmul, name)
    raise AttributeError(f"module 'kernels_cpu' has no attribute {name!r}")


if sys.modules.get("jax") is not None:  # the JAX side: register the backend now (kernels_cpu.qmatmul does on import)
    from kernels_cpu import qmatmul as _qmatmul  # noqa: F401
