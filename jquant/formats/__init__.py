"""jquant.formats: one file per source checkpoint format, a registry, and detection (numpy only).

Importing this package registers every format below. Add a format by writing one file with a
`Format` subclass and listing its module here.
"""

from jquant.formats import unquantized  # noqa: F401  (registers by import)
from jquant.formats import gguf  # noqa: F401
from jquant.formats import compressed_tensors, fp8, modelopt, mxfp4, quark  # noqa: F401
from jquant.formats import autoround, awq, gptq  # noqa: F401
from jquant.formats.base import (
    Format,
    TensorGroup,
    detect_format,
    get_format,
    quant_config,
    registered_formats,
)

__all__ = ["Format", "TensorGroup", "detect_format", "get_format", "quant_config", "registered_formats"]
