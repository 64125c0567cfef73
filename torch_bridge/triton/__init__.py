"""Triton kernels of the Torch bridge over the canonical layout (imported only when triton is installed).

``TRITON_INTERPRET=1`` must be set before this package is first imported to run the kernels on
the CPU interpreter (the ``@triton.jit`` decorator picks interpreter or compiler at import).
"""

from torch_bridge.triton import backends  # noqa: F401  (registers the backends)
from torch_bridge.triton.configs import TileConfig
from torch_bridge.triton.w8a8 import w8a8_matmul
from torch_bridge.triton.wxa16 import is_interpreter, wxa16_matmul

__all__ = ["TileConfig", "is_interpreter", "w8a8_matmul", "wxa16_matmul"]
