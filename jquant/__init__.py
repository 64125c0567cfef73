"""jquant: quantized LLM checkpoints of the PyTorch ecosystem, run in JAX/Flax without dequantizing.

Public API::

    ckpt = jquant.convert(src)                     # HF folder, .gguf file, or canonical folder
    w = jquant.dequantize(ckpt.weights[name])      # dense [N, K] float32 (the spec)
    model = jquant.models.from_checkpoint(ckpt)    # Flax NNX causal LM
    qckpt = jquant.quantize(float_ckpt, "fp8")     # online quantization (jquant.quantize package)

``jquant.core`` / ``jquant.formats`` / ``jquant.convert`` import no JAX; the JAX-side subpackages
(``ops``, ``nn``, ``models``, ``pallas``) load on first attribute access.
"""

from __future__ import annotations

import importlib

from jquant.convert import Checkpoint, convert, load, save
from jquant.core import (
    ConfigError,
    CorruptFileError,
    FormatError,
    QArray,
    QType,
    UnsupportedFormatError,
    dequantize,
)
from jquant.quantize import quantize

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "ConfigError",
    "CorruptFileError",
    "FormatError",
    "QArray",
    "QType",
    "UnsupportedFormatError",
    "__version__",
    "convert",
    "dequantize",
    "load",
    "quantize",
    "save",
]

_LAZY = ("ops", "nn", "models", "pallas", "formats", "core", "parallel")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"jquant.{name}")
    raise AttributeError(f"module 'jquant' has no attribute {name!r}")
