"""`Checkpoint`: what `jquant.convert` returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jquant.core.qarray import QArray

__all__ = ["Checkpoint"]


@dataclasses.dataclass
class Checkpoint:
    """A converted checkpoint.

    Attributes:
        format: source format name ("gptq", "awq", "gguf", "compressed-tensors", "unquantized", ...).
        config: HF-style config dict (from config.json, or derived from GGUF metadata).
        weights: HF tensor name -> `QArray` (quantized linear weights, orientation [N, K]) or
            np.ndarray (everything else, in its stored dtype; memory-mapped where possible).
        metadata: format description, source path, layout version, and format-specific extras
            (e.g. KV-cache scales, tokenizer data).
    """

    format: str
    config: dict[str, Any]
    weights: dict[str, QArray | np.ndarray]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def quantized(self) -> dict[str, QArray]:
        return {k: v for k, v in self.weights.items() if isinstance(v, QArray)}

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.weights.values())

    def __repr__(self) -> str:
        nq = len(self.quantized())
        return f"Checkpoint(format={self.format!r}, tensors={len(self.weights)}, quantized={nq}, bytes={self.nbytes})"
