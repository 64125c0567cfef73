"""torch_bridge: run jquant's canonical quantized weights in PyTorch (Triton kernels, CPU kernels).

The same `QArray` the JAX side reads (no second layout), with torch tensors as leaves::

    ckpt = jquant.convert("path/to/gptq-model")
    model = AutoModelForCausalLM.from_config(...)       # or any model with the checkpoint's HF names
    torch_bridge.patch_model(model, ckpt)                # nn.Linear -> QuantLinear, dense weights copied
    logits = model(input_ids).logits
    tokens = torch_bridge.Decoder(model).generate(prompt_ids, max_new_tokens=64)  # lean greedy decode

    y = torch_bridge.qmatmul(x, torch_bridge.to_torch(w))   # == x @ jquant.dequantize(w).T

Backends (`torch_bridge.backend`): Triton kernels on any Triton GPU (``torch_triton_*``), torch's
CPU int4 / int8 kernels (``torch_cpu_*``), ``torch._scaled_mm`` for FP8 W8A8 on CUDA, and
dequantize + matmul everywhere. This package never
imports JAX.
"""

from torch_bridge import cpu as _cpu  # noqa: F401  (registers the CPU and reference backends)
from torch_bridge import vendor as _vendor  # noqa: F401  (registers torch's own fp8 GEMM)
from torch_bridge.backend import BACKENDS, explain, select
from torch_bridge.dequant import dequantize
from torch_bridge.linear import QuantLinear
from torch_bridge.ops import qmatmul
from torch_bridge.patch import Decoder, from_checkpoint, patch_model
from torch_bridge.tensor import as_tensor, checkpoint_to_torch, to_torch

try:  # Triton is optional: without it the CPU backends and the reference still run.
    import triton as _triton  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False
else:
    from torch_bridge import triton as _tb_triton  # noqa: F401  (registers the Triton backends)

    HAS_TRITON = True

__all__ = [
    "BACKENDS",
    "Decoder",
    "HAS_TRITON",
    "QuantLinear",
    "as_tensor",
    "checkpoint_to_torch",
    "dequantize",
    "explain",
    "from_checkpoint",
    "patch_model",
    "qmatmul",
    "select",
    "to_torch",
]
