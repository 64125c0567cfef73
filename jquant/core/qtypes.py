"""Quantized value types: what one stored code *means*, independent of any checkpoint format.

A `QType` is a static descriptor (hashable, usable as a jit static argument) of the values a code
decodes to, before scales and zero points are applied:

* ``kind="int"``: ``value = code - bias``. Sub-byte codes are always stored unsigned; a signed
  b-bit range is an unsigned type with bias ``2**(b-1)`` (``uint4b8`` is GPTQ's symmetric int4,
  vLLM's ``scalar_types.uint4b8``). 8-bit signed codes are stored as ``int8`` (``signed=True``).
* ``kind="float"``: the code is a small float: fp8 codes are stored as their own ml_dtypes dtype
  (``float8_e4m3fn``, ``float8_e5m2``); fp4 e2m1 is a 16-entry table (``codebook``).
* ``kind="codebook"``: ``value = codebook[code]`` (NF4, bitsandbytes FP4, GGUF IQ4_NL's table).

``bits`` is the information width; ``container_bits`` is the width a code occupies in the
canonical ``QArray.data`` (1, 2, 4 or 8). Odd widths are widened: 3-bit codes live in 4-bit
containers, 5/6/7-bit codes in bytes. Widening is lossless and makes every packed row a whole
number of bytes with power-of-two codes per byte, which is what the kernels read.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

__all__ = [
    "QType",
    "int_type",
    "get_qtype",
    "E2M1_VALUES",
    "NF4_VALUES",
    "BNB_FP4_VALUES",
    "IQ4NL_VALUES",
    "uint4b8",
    "uint8b128",
    "uint4",
    "uint8",
    "int8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp4_e2m1",
    "nf4",
    "bnb_fp4",
    "iq4nl",
]

Kind = Literal["int", "float", "codebook"]

# E2M1 (FP4) value of code s*8 + m (formats.md 0.2; compressed-tensors kE2M1ToFloat, ModelOpt e2m1_values).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# bitsandbytes NF4 table (bitsandbytes/functional.py get_4bit_type("nf4")), exact float32 values.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip

# bitsandbytes FP4 table (get_4bit_type("fp4")): sign bit 3, 2 exponent bits, 1 mantissa bit, scaled to max 1.
BNB_FP4_VALUES = (
    0.0, 0.005208333333, 0.6666666666666666, 1.0, 0.3333333333333333, 0.5, 0.16666666666666666, 0.25,
    -0.0, -0.005208333333, -0.6666666666666666, -1.0, -0.3333333333333333, -0.5, -0.16666666666666666, -0.25,
)  # fmt: skip

# GGUF IQ4_NL / IQ4_XS non-linear table (gguf-py quants.py IQ4_NL.kvalues).
IQ4NL_VALUES = (
    -127.0,
    -104.0,
    -83.0,
    -65.0,
    -49.0,
    -35.0,
    -22.0,
    -10.0,
    1.0,
    13.0,
    25.0,
    38.0,
    53.0,
    69.0,
    89.0,
    113.0,
)

_FLOAT_STORAGE = {"float8_e4m3fn", "float8_e5m2"}


@dataclasses.dataclass(frozen=True)
class QType:
    """Static description of a code's value set.

    Attributes:
        name: short unique name, e.g. ``"uint4b8"``, ``"fp8_e4m3"``, ``"nf4"``.
        kind: ``"int"``, ``"float"`` or ``"codebook"``.
        bits: information bits per code (2..8).
        signed: int kinds only: the container is a two's-complement ``int8`` (8-bit only).
        bias: int kinds only: ``value = code - bias``.
        codebook: the decoded value of each code, for table kinds (fp4 e2m1, nf4, ...).
        storage: ml_dtypes name for codes stored as a float dtype (``"float8_e4m3fn"``), else None.
    """

    name: str
    kind: Kind
    bits: int
    signed: bool = False
    bias: int = 0
    codebook: tuple[float, ...] | None = None
    storage: str | None = None

    def __post_init__(self):
        if not 1 <= self.bits <= 8:
            raise ValueError(f"QType {self.name}: bits={self.bits} outside 1..8")
        if self.signed and self.bits != 8:
            raise ValueError(f"QType {self.name}: signed containers exist only for 8-bit codes; use a bias")
        if self.codebook is not None and len(self.codebook) != 1 << self.bits:
            raise ValueError(f"QType {self.name}: codebook has {len(self.codebook)} entries for {self.bits} bits")
        if self.storage is not None and self.storage not in _FLOAT_STORAGE:
            raise ValueError(f"QType {self.name}: unknown storage {self.storage!r}")

    @property
    def container_bits(self) -> int:
        """Width of one code inside ``QArray.data``: 1, 2, 4 or 8."""
        for c in (1, 2, 4, 8):
            if self.bits <= c:
                return c
        raise AssertionError(self.bits)

    @property
    def codes_per_byte(self) -> int:
        return 8 // self.container_bits

    @property
    def storage_dtype(self) -> np.dtype:
        """numpy dtype of ``QArray.data``: uint8 (packed or unsigned bytes), int8, or an fp8 dtype."""
        if self.storage is not None:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.storage))
        return np.dtype(np.int8) if self.signed else np.dtype(np.uint8)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> QType:
        d = dict(d)
        if d.get("codebook") is not None:
            d["codebook"] = tuple(float(v) for v in d["codebook"])
        return cls(**d)

    def __repr__(self) -> str:
        return f"QType({self.name})"


def int_type(bits: int, *, bias: int = 0, signed: bool = False) -> QType:
    """The integer QType with ``value = code - bias``: ``uint{bits}`` or ``uint{bits}b{bias}`` or ``int8``."""
    if signed:
        return QType("int8", "int", 8, signed=True)
    name = f"uint{bits}" + (f"b{bias}" if bias else "")
    return QType(name, "int", bits, bias=bias)


uint4 = int_type(4)
uint8 = int_type(8)
uint4b8 = int_type(4, bias=8)
uint8b128 = int_type(8, bias=128)
int8 = int_type(8, signed=True)
fp8_e4m3 = QType("fp8_e4m3", "float", 8, storage="float8_e4m3fn")
fp8_e5m2 = QType("fp8_e5m2", "float", 8, storage="float8_e5m2")
fp4_e2m1 = QType("fp4_e2m1", "float", 4, codebook=E2M1_VALUES)
nf4 = QType("nf4", "codebook", 4, codebook=NF4_VALUES)
bnb_fp4 = QType("bnb_fp4", "codebook", 4, codebook=BNB_FP4_VALUES)
iq4nl = QType("iq4nl", "codebook", 4, codebook=IQ4NL_VALUES)

_NAMED = {
    q.name: q for q in (uint4, uint8, uint4b8, uint8b128, int8, fp8_e4m3, fp8_e5m2, fp4_e2m1, nf4, bnb_fp4, iq4nl)
}


def get_qtype(name: str) -> QType:
    """Look up a named QType; ``uint{b}`` and ``uint{b}b{bias}`` are built on demand."""
    if name in _NAMED:
        return _NAMED[name]
    import re

    m = re.fullmatch(r"uint([1-8])(?:b(\d+))?", name)
    if m:
        return int_type(int(m.group(1)), bias=int(m.group(2) or 0))
    raise KeyError(f"unknown qtype {name!r}; known: {sorted(_NAMED)} and uint<bits>[b<bias>]")
