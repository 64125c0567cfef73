"""jquant.core: qtypes, the canonical `QArray`, packing and reference dequantization.

Imports numpy and ml_dtypes only (never JAX or torch), so the format library and the Torch bridge
work where JAX is not installed.
"""

from jquant.core.dequant import decode_values, dequantize, expand_blocks
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from jquant.core.packing import pack_bitstream, pack_codes, unpack_bitstream, unpack_codes
from jquant.core.qarray import LAYOUT_VERSION, QArray, block_for, register_pytree
from jquant.core.qtypes import QType, get_qtype, int_type

__all__ = [
    "LAYOUT_VERSION",
    "ConfigError",
    "CorruptFileError",
    "FormatError",
    "QArray",
    "QType",
    "UnsupportedFormatError",
    "block_for",
    "decode_values",
    "dequantize",
    "expand_blocks",
    "get_qtype",
    "int_type",
    "pack_bitstream",
    "pack_codes",
    "register_pytree",
    "unpack_bitstream",
    "unpack_codes",
]
