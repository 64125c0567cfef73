"""jquant.pallas: Pallas GPU kernels, registered as `jquant.ops.qmatmul` backends on import.

Backends (platform ``"gpu"``; their order is `jquant.ops.routes.ROUTES`):

* ``pallas_triton_w8a8``: FP8 / INT8 W8A8 (fp8 e4m3, int8, uint8b128 codes; per-tensor,
  per-channel, group and 128x128-block scales) with the activations quantized per token / group /
  tensor in one XLA pass and the 8-bit products scaled in the kernel (`jquant.pallas.w8a8`).
* ``pallas_triton_wna16_decode``: W4A16 / W8A16 group-wise and per-channel, M <= 64, split-K tiles
  (`jquant.pallas.wna16_config.decode_config`).
* ``pallas_triton_wna16_prefill``: same weights, M <= 127, tensor-core tiles (from M = 128 XLA's
  dequantize -> cuBLAS dot is faster on Hopper).

* ``pallas_triton_wxa16``: every other weight-only code type (float zeros of GGUF Q4_1 / K-quants,
  16-column groups, 2-bit codes, codebooks NF4 / bnb FP4 / IQ4, fp4 E2M1 with e8m0 or e4m3 scales
  and ``scale2``, fp8 W8A16), M <= 127, dequantized in registers (`jquant.pallas.wxa16`).

and one `jquant.ops.grouped_qmatmul` backend (`jquant.ops.grouped.register_grouped_backend`):

* ``pallas_triton_grouped``: MoE expert stacks of 4-bit integer, fp4 e2m1 (MXFP4 / NVFP4) and fp8
  e4m3 codes, M <= 64, reading only the experts that have rows (`jquant.pallas.grouped_triton`).

All lower through Pallas' Triton backend (``pltriton.CompilerParams``); CPU tests run them with
``interpret=True`` and lower them for CUDA on the CPU host.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops.backend import register_backend  # noqa: E402
from jquant.ops.grouped import register_grouped_backend  # noqa: E402
from jquant.pallas.grouped_triton import PallasGrouped, grouped_triton_qmatmul  # noqa: E402
from jquant.pallas.w8a8 import PallasW8A8, pallas_w8a8_qmatmul  # noqa: E402
from jquant.pallas.wna16_backend import CAPS, WNA16Backend, layout_of, why_not, wna16_qmatmul  # noqa: E402
from jquant.pallas.wna16_config import WNA16Config, decode_config, prefill_config  # noqa: E402
from jquant.pallas.wna16_triton import WNA16Layout, wna16_matmul  # noqa: E402
from jquant.pallas.wxa16 import PallasWXA16, wxa16_qmatmul  # noqa: E402

register_backend(PallasW8A8())
register_backend(WNA16Backend("decode"))
register_backend(WNA16Backend("prefill"))
register_backend(PallasWXA16())
register_grouped_backend(PallasGrouped())

__all__ = [
    "CAPS",
    "PallasGrouped",
    "PallasW8A8",
    "PallasWXA16",
    "pallas_w8a8_qmatmul",
    "WNA16Backend",
    "WNA16Config",
    "WNA16Layout",
    "decode_config",
    "grouped_triton_qmatmul",
    "layout_of",
    "prefill_config",
    "why_not",
    "wna16_matmul",
    "wna16_qmatmul",
    "wxa16_qmatmul",
]
