"""jquant.pallas: Pallas GPU kernels, registered as `jquant.ops.qmatmul` backends on import.

Backends (platform ``"gpu"``; their order and its reasons: `jquant.ops.routes.ROUTES`), each
described in its module: ``pallas_triton_w8a8`` (FP8 / INT8 W8A8, `jquant.pallas.w8a8`),
``pallas_triton_wna16_decode`` / ``pallas_triton_wna16_prefill`` (4/8-bit integer codes,
`jquant.pallas.wna16_backend`), ``pallas_triton_wxa16`` (every other weight-only code type,
`jquant.pallas.wxa16`), and the `jquant.ops.grouped_qmatmul` backend ``pallas_triton_grouped``
(MoE expert stacks, `jquant.pallas.grouped_triton`).

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
