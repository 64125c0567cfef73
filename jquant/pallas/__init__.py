"""jquant.pallas: Pallas GPU kernels, registered as `jquant.ops.qmatmul` backends on import.

Backends (platform ``"gpu"``):

* ``pallas_triton_wna16_decode`` (priority 20): W4A16 / W8A16 group-wise and per-channel, M <= 64,
  split-K tiles (`jquant.pallas.wna16_config.decode_config`).
* ``xla_dequant_dot`` (priority 15): M >= 128, XLA dequantize -> bf16 cuBLAS dot (faster than the
  fused Triton prefill on Hopper at those M; see `wna16_backend.TWO_STAGE_MIN_M`).
* ``pallas_triton_wna16_prefill`` (priority 10): same weights, any M, tensor-core tiles.

Both lower through Pallas' Triton backend (``pltriton.CompilerParams``); CPU tests run them with
``interpret=True`` and lower them for CUDA on the CPU host.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops.backend import register_backend  # noqa: E402
from jquant.pallas.wna16_backend import (  # noqa: E402
    DequantDotBackend,
    WNA16Backend,
    layout_of,
    why_not,
    wna16_qmatmul,
)
from jquant.pallas.wna16_config import WNA16Config, decode_config, prefill_config  # noqa: E402
from jquant.pallas.wna16_triton import WNA16Layout, wna16_matmul  # noqa: E402

register_backend(WNA16Backend("decode"))
register_backend(WNA16Backend("prefill"))
register_backend(DequantDotBackend())

__all__ = [
    "DequantDotBackend",
    "WNA16Backend",
    "WNA16Config",
    "WNA16Layout",
    "decode_config",
    "layout_of",
    "prefill_config",
    "why_not",
    "wna16_matmul",
    "wna16_qmatmul",
]
