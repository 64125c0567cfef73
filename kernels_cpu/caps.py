"""What the C++ CPU qmatmul reads, as data (numpy only: shared by the JAX backend and the Torch bridge).

The kernel and what it reads are described in `kernels_cpu.qmatmul`.
"""

from __future__ import annotations

import numpy as np

from jquant.core.routing import Capabilities

__all__ = ["CAPS", "M_MAX", "more_reasons", "code_table"]

# Routed range: M up to 32 (decode, batched decode, short prefill chunks). Above it XLA's own dot on a
# chunk-wise dequantized weight (xla_cpu_chunked) is faster: on SmolLM2's Q4_1 shapes, 2 threads, the
# kernel is 1.11x at M = 32, 0.94x at 37, 0.75x at 64 (bench/results/cpu/decode.md, `--prefill-only`).
M_MAX = 32

CAPS = Capabilities(
    platforms=frozenset({"cpu"}),
    codes=frozenset({"uint4", "uint8", "int8", "nf4", "iq4nl", "bnb_fp4", "fp4_e2m1"}),
    zeros=frozenset({"none", "uint8", "float32", "float16", "bfloat16"}),
    scale_dtypes=frozenset({"float32", "float16", "bfloat16"}),
    row_blocks=frozenset({1}),
    group_multiple=16,
    k_multiple=32,
    act_dtypes=frozenset({"float32", "bfloat16", "float16"}),
    m_max=M_MAX,
)


def more_reasons(call) -> str:
    """What `CAPS` cannot say: 4-bit codes are read 32 at a time, so their groups are multiples of 32."""
    if call.qtype.container_bits == 4 and call.group < call.k and call.group % 32:
        return f"group size {call.group} is not a multiple of 32 (4-bit codes are read 32 at a time)"
    return ""


def code_table(qtype) -> np.ndarray:
    """The f32 value of each 4-bit code (``code - bias``, or the codebook); zeros for 8-bit codes."""
    if qtype.container_bits != 4:
        return np.zeros(16, np.float32)
    if qtype.codebook is not None:
        return np.asarray(qtype.codebook, np.float32)
    return (np.arange(16) - qtype.bias).astype(np.float32)
