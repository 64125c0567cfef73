"""The benchmark and test shape matrix of BENCH.md, in one place (bench/ and tests/pallas import it).

K x N are ``in_features x out_features`` of one linear layer; ``M`` is the number of tokens.
"""

from __future__ import annotations

import dataclasses

__all__ = ["LinearShape", "SHAPES", "SHAPES_BY_NAME", "M_VALUES", "M_TABLE", "GROUPS", "M_TEST"]


@dataclasses.dataclass(frozen=True)
class LinearShape:
    """One linear layer: ``y[M, N] = x[M, K] @ W[N, K].T``."""

    name: str
    k: int
    n: int


SHAPES: tuple[LinearShape, ...] = (
    # Llama-3-8B: fused qkv, o_proj, fused gate+up, down_proj.
    LinearShape("8b_qkv", 4096, 6144),
    LinearShape("8b_o", 4096, 4096),
    LinearShape("8b_gate_up", 4096, 28672),
    LinearShape("8b_down", 14336, 4096),
    # Llama-3-70B: fused qkv, o_proj (also the 8192x8192 square), fused gate+up, down_proj.
    LinearShape("70b_qkv", 8192, 10240),
    LinearShape("70b_o", 8192, 8192),
    LinearShape("70b_gate_up", 8192, 57344),
    LinearShape("70b_down", 28672, 8192),
)
SHAPES_BY_NAME = {s.name: s for s in SHAPES}

# Every M of BENCH.md; M_TABLE is the subset of the all-shapes table (the M sweep runs on 70b_o).
M_VALUES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
M_TABLE: tuple[int, ...] = (1, 16, 64, 128, 1024, 4096)
# Group sizes; -1 is per-channel.
GROUPS: tuple[int, ...] = (32, 64, 128, -1)
# M values the GPU tests run: tile edges of the decode (16) and prefill (128) tiles.
M_TEST: tuple[int, ...] = (1, 7, 16, 127, 128, 129, 1024)
