"""The part every `kernels_cuda` qmatmul backend shares: decline with the kernel's reason, or with the
build's when the CUDA library cannot be compiled or loaded here (the dispatcher then falls back to
the Pallas kernels instead of failing)."""

from __future__ import annotations

from jquant.ops.backend import Backend


class CudaBackend(Backend):
    """A `qmatmul` backend running a kernel of the `kernels_cuda` library on NVIDIA GPUs.

    Subclasses set ``name`` and implement `why_not`.
    """

    platforms = ("gpu",)
    priority = 30

    def why_not(self, x, w) -> str:
        """Empty string when the kernel computes ``x @ dequantize(w).T`` for these operands, else why not."""
        raise NotImplementedError

    def supports(self, x, w, **kw) -> tuple[bool, str]:
        why = self.why_not(x, w)
        if why:
            return False, why
        from kernels_cuda.build import BuildError, register

        try:
            register()
        except BuildError as e:
            return False, f"CUDA library unavailable: {str(e).splitlines()[0]}"
        return True, ""
