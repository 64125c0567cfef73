"""jquant.formats: one file per source checkpoint format, a registry, and detection (numpy only).

Importing this package registers every format below. Add a format by writing one file with a
`Format` subclass and listing its module here.
"""

# Each module registers its Format subclasses on import.
from jquant.formats import (  # noqa: F401
    autoround,
    awq,
    bnb,
    compressed_tensors,
    fp8,
    gguf,
    gptq,
    inc,
    marlin,
    modelopt,
    mxfp4,
    quark,
    torchao,
    unquantized,
)
from jquant.formats.base import (
    Format,
    TensorGroup,
    detect_format,
    get_format,
    quant_config,
    registered_formats,
)

__all__ = ["Format", "TensorGroup", "detect_format", "get_format", "quant_config", "registered_formats"]
