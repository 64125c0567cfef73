"""Quantization schemes as data: a `WeightRecipe` (how one float weight becomes a `QArray`), an
optional `ActQuant` (how its input activations are quantized at run time), and one registry of
scheme names.

Every scheme names the producer whose output it reproduces (``Scheme.producer``); the quantizer
families (`jquant.quantize.fp8`, ``integer``, ``nf4``, ``microfloat``) follow that producer's
arithmetic step by step, so that where a CPU producer exists the codes and scales are the
producer's own, bit for bit (tests/quantize check it).

This module imports numpy only (through `jquant.core`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jquant.core.activation import ActQuant
from jquant.core.errors import UnsupportedFormatError
from jquant.core.qtypes import fp4_e2m1, fp8_e4m3, int8

__all__ = ["WeightRecipe", "Scheme", "SCHEMES", "get_scheme", "register_scheme", "scheme_names"]

Kind = Literal["fp8", "int", "nf4", "mxfp4", "fp6"]
Granularity = Literal["tensor", "channel", "group", "block"]
Arithmetic = Literal["source", "float32"]


@dataclasses.dataclass(frozen=True)
class WeightRecipe:
    """How a float weight [N, K] is quantized (round-to-nearest, no calibration data).

    Attributes:
        kind: the quantizer family: ``"fp8"`` (float8 e4m3 codes), ``"int"`` (integer codes),
            ``"nf4"`` (bitsandbytes NF4 table), ``"mxfp4"`` (OCP MX fp4 e2m1 with e8m0 scales),
            ``"fp6"`` (fp6 e3m2 codes, DeepSpeedFP-style).
        bits: code width (8 for fp8 / int8, 4 for int4 / nf4 / mxfp4, 6 for fp6).
        granularity: one scale per ``"tensor"``, per output ``"channel"`` (row), per ``"group"``
            of ``group_size`` consecutive input channels of a row, or per 2-D ``"block"``.
        group_size: columns per scale for ``"group"``; a last partial group is allowed (the
            canonical ``QArray`` block covers ``ceil(K / G)`` groups) unless the family says not.
        block: (rows, columns) per scale for ``"block"`` (partial edge blocks allowed).
        symmetric: no zero point (``w = s * q``); asymmetric recipes store an integer zero point.
        arithmetic: ``"source"``: scales and codes are computed in the weight's own float dtype
            (fp16 / bf16 / f32) and scales are stored in it, as compressed-tensors does;
            ``"float32"``: computed in float32, float32 scales (bitsandbytes, DeepSpeedFP).
    """

    kind: Kind
    bits: int
    granularity: Granularity
    group_size: int | None = None
    block: tuple[int, int] | None = None
    symmetric: bool = True
    arithmetic: Arithmetic = "source"

    def __post_init__(self):
        if self.kind not in ("fp8", "int", "nf4", "mxfp4", "fp6"):
            raise ValueError(f"unknown weight quantizer kind {self.kind!r}")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError(f"group_size={self.group_size} does not go with granularity {self.granularity!r}")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group_size must be positive, got {self.group_size}")
        if (self.granularity == "block") != (self.block is not None):
            raise ValueError(f"block={self.block} does not go with granularity {self.granularity!r}")
        if self.block is not None and (len(self.block) != 2 or min(self.block) <= 0):
            raise ValueError(f"block must be two positive ints, got {self.block}")
        if not self.symmetric and self.kind != "int":
            raise ValueError(f"asymmetric quantization exists only for integer codes, not {self.kind}")
        if self.kind == "int" and self.bits not in (4, 8):
            raise ValueError(f"integer weights of {self.bits} bits are not supported (4 or 8)")
        if self.kind == "int" and self.bits == 8 and not self.symmetric:
            raise ValueError("8-bit asymmetric weights are not supported")

    def describe(self) -> dict:
        """JSON-able summary (stored in the checkpoint metadata)."""
        d = dataclasses.asdict(self)
        if d["block"] is not None:
            d["block"] = list(d["block"])
        return d


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A named online-quantization scheme.

    Attributes:
        name: registry name, e.g. ``"fp8"``, ``"w4a16-g128"``.
        weight: how each selected linear weight is quantized.
        activation: the run-time input-activation recipe put beside each quantized linear
            (``<module>.input_quant``), or None for weight-only schemes.
        producer: the producer (and recipe) whose output this scheme reproduces, or what it
            follows where no CPU producer exists.
        description: one line for ``--help`` and the README.
    """

    name: str
    weight: WeightRecipe
    activation: ActQuant | None
    producer: str
    description: str

    def describe(self) -> dict:
        """JSON-able summary (stored in ``Checkpoint.metadata["quantize"]``)."""
        return {
            "scheme": self.name,
            "weight": self.weight.describe(),
            "activation": None if self.activation is None else self.activation.static_json(),
            "producer": self.producer,
        }


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Adds ``scheme`` to `SCHEMES`; a name registered twice is an error."""
    if scheme.name in SCHEMES:
        raise ValueError(f"quantization scheme {scheme.name!r} registered twice")
    if scheme.activation is not None:
        scheme.activation.validate(f"scheme {scheme.name}")
    SCHEMES[scheme.name] = scheme
    return scheme


def scheme_names() -> list[str]:
    return sorted(SCHEMES)


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The registered scheme of that name (a `Scheme` passes through).

    Raises:
        UnsupportedFormatError: an unknown name, listing the known ones.
    """
    if isinstance(scheme, Scheme):
        return scheme
    key = str(scheme).lower().replace("_", "-")
    if key not in SCHEMES:
        raise UnsupportedFormatError(f"unknown quantization scheme {scheme!r}; known: {', '.join(scheme_names())}")
    return SCHEMES[key]


# compressed-tensors' own QDQ forward computes dynamic scales as amax / (bit_range / 2)
# (quantization/utils/helpers.py calculate_qparams), which the compressed-tensors loader records as
# scale_rule="half_range": the same recipe here makes a scheme's checkpoint identical to the one
# jquant converts from llm-compressor's output. For fp8 / fp4 both rules give the same scales.
_CT = "half_range"
_CT_PRODUCER = "llm-compressor 0.14 QuantizationModifier(scheme={}) (compressed-tensors 0.20 arithmetic)"

register_scheme(
    Scheme(
        "fp8",
        WeightRecipe("fp8", 8, "tensor"),
        ActQuant(fp8_e4m3, True, "tensor"),
        _CT_PRODUCER.format('"FP8"') + " weights; activations dynamic per tensor as vLLM's online fp8",
        "fp8 e4m3 weights with one scale per tensor, dynamic per-tensor fp8 activations",
    )
)
register_scheme(
    Scheme(
        "fp8-channel",
        WeightRecipe("fp8", 8, "channel"),
        ActQuant(fp8_e4m3, True, "token", scale_rule=_CT),
        _CT_PRODUCER.format('"FP8_DYNAMIC"'),
        "fp8 e4m3 weights with one scale per output channel, dynamic per-token fp8 activations",
    )
)
register_scheme(
    Scheme(
        "fp8-block",
        WeightRecipe("fp8", 8, "block", block=(128, 128)),
        ActQuant(fp8_e4m3, True, "group", 128, scale_rule=_CT),
        _CT_PRODUCER.format('"FP8_BLOCK"'),
        "fp8 e4m3 weights with one scale per 128x128 block, dynamic fp8 activations per 128 channels",
    )
)
register_scheme(
    Scheme(
        "int8",
        WeightRecipe("int", 8, "channel"),
        ActQuant(int8, True, "token", scale_rule=_CT),
        _CT_PRODUCER.format('"W8A8"') + " (round-to-nearest, no SmoothQuant / GPTQ)",
        "W8A8: int8 weights per output channel, dynamic per-token int8 activations",
    )
)
register_scheme(
    Scheme(
        "w8a16",
        WeightRecipe("int", 8, "group", group_size=128),
        None,
        _CT_PRODUCER.format('"W8A16"'),
        "int8 weights, one scale per 128 input channels (symmetric), activations unquantized",
    )
)
register_scheme(
    Scheme(
        "w4a16-g128",
        WeightRecipe("int", 4, "group", group_size=128),
        None,
        _CT_PRODUCER.format('"W4A16"') + " (round-to-nearest)",
        "int4 weights, one scale per 128 input channels (symmetric), activations unquantized",
    )
)
register_scheme(
    Scheme(
        "w4a16-g128-asym",
        WeightRecipe("int", 4, "group", group_size=128, symmetric=False),
        None,
        _CT_PRODUCER.format('"W4A16_ASYM"') + " (round-to-nearest)",
        "int4 weights, scale and integer zero point per 128 input channels, activations unquantized",
    )
)
register_scheme(
    Scheme(
        "nf4",
        WeightRecipe("nf4", 4, "group", group_size=64, arithmetic="float32"),
        None,
        "bitsandbytes 0.50 quantize_4bit(quant_type='nf4', blocksize=64, compress_statistics=False)",
        "bitsandbytes NF4 codes with a float32 absmax per 64 weights, activations unquantized",
    )
)
register_scheme(
    Scheme(
        "mxfp4",
        WeightRecipe("mxfp4", 4, "group", group_size=32),
        ActQuant(fp4_e2m1, True, "group", 32, scale_dtype="float8_e8m0fnu", scale_rule=_CT),
        _CT_PRODUCER.format('"MXFP4"'),
        "OCP MXFP4: fp4 e2m1 weights and activations with e8m0 scales per 32 channels",
    )
)
register_scheme(
    Scheme(
        "mxfp4-a16",
        WeightRecipe("mxfp4", 4, "group", group_size=32),
        None,
        _CT_PRODUCER.format('"MXFP4"') + " weights; activations unquantized (gpt-oss style)",
        "OCP MXFP4 weights (fp4 e2m1, e8m0 scales per 32), activations unquantized",
    )
)
register_scheme(
    Scheme(
        "fp6",
        WeightRecipe("fp6", 6, "group", group_size=128, arithmetic="float32"),
        None,
        "DeepSpeedFP-style fp6 e3m2 (vLLM deepspeedfp, FP6-LLM): absmax / 28 per group, round to nearest even;"
        " no CPU producer",
        "fp6 e3m2 weights (one byte per code) with a float32 scale per 128 input channels",
    )
)
