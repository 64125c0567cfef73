"""What every `kernels_cuda` op and backend shares: the FFI call (optionally into a NaN-poisoned
output) and the backend's answer — decline with the kernel's reason, or with the build's when the
CUDA library cannot be compiled or loaded here (the dispatcher then falls back to the Pallas
kernels instead of failing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jquant.ops.backend import Backend


def call_kernel(target: str, result: jax.ShapeDtypeStruct, operands: tuple, *, poison: bool = False, **attrs):
    """Calls the FFI ``target`` of the library on ``operands`` with ``attrs``.

    Args:
        poison: write into a NaN-filled buffer (the ``<target>_poisoned`` twin, which takes it as an
            extra operand aliased to the result) instead of a fresh one, so that any output the
            kernel does not write stays NaN (tests).
    """
    if not poison:
        return jax.ffi.ffi_call(target, result)(*operands, **attrs)
    init = jnp.full(result.shape, jnp.nan, result.dtype)
    call = jax.ffi.ffi_call(f"{target}_poisoned", result, input_output_aliases={len(operands): 0})
    return call(*operands, init, **attrs)


class CudaBackend(Backend):
    """A `qmatmul` backend running a kernel of the `kernels_cuda` library on NVIDIA GPUs."""

    def unavailable(self, call) -> str:
        from kernels_cuda.build import BuildError, register

        try:
            register()
        except BuildError as e:
            return f"CUDA library unavailable: {str(e).splitlines()[0]}"
        return ""
