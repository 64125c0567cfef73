"""AWQ checkpoints (AutoAWQ GEMM, AutoRound's ``auto_awq`` export; ``quant_method: "awq"``).

Config (formats.md 2.1; AutoAWQ ``awq/models/_config.py AwqConfig.to_transformers_dict``):
``{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true, "version": "gemm",
"modules_to_not_convert": [...] | null}``; the legacy ``quant_config.json`` side file spells them
``w_bit`` / ``q_group_size`` and ``"GEMM"``. Only the GEMM layout is read (the one vLLM reads; it
assumes GEMM when ``version`` is absent); AutoAWQ's GEMV and GEMV_FAST layouts (``version:
"gemv" / "gemv_fast"``) are read by `jquant.formats.awq_gemv`; Marlin-repacked AWQ is refused with
`UnsupportedFormatError`. ``zero_point: false`` cannot be produced by AutoAWQ's GEMM
packer (``WQLinear_GEMM.from_linear`` asserts zeros) and is refused too. ``modules_to_not_convert``
entries are substrings of module names that stay dense.

Tensors and their decoding are in `jquant.formats._int_packed` (``convert_awq_group``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.formats._int_packed import CONFIG_FILE, check_bits_group, convert_awq_group
from jquant.formats.awq_gemv import convert_gemv_fast_group, convert_gemv_group
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = ["AWQ", "AWQConfig"]

_SYNONYMS = (("bits", "w_bit"), ("group_size", "q_group_size"))
# AutoAWQ writes ``version.lower()`` (awq/models/_config.py); the legacy side file says "GEMM" / "GEMV_FAST".
_VERSIONS = ("gemm", "gemv", "gemv_fast")


@dataclasses.dataclass(frozen=True)
class AWQConfig:
    """A parsed AWQ ``quantization_config``.

    Attributes:
        bits: 4 (the only width of the GEMM packing).
        group_size: input channels per scale, -1 for per output channel.
        version: ``"gemm"``, ``"gemv"`` or ``"gemv_fast"`` (the packing layout).
        modules_to_not_convert: module-name substrings stored unquantized.
    """

    bits: int
    group_size: int
    version: str = "gemm"
    modules_to_not_convert: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, qc: Mapping[str, Any], file=None) -> AWQConfig:
        """Parses and validates ``quantization_config``.

        Raises:
            ConfigError: missing / contradictory keys (``bits`` vs ``w_bit``), bad values.
            UnsupportedFormatError: other versions (Marlin), ``zero_point: false``, bits other than 4.
        """
        vals = {}
        for key, alias in _SYNONYMS:
            got = {k: qc[k] for k in (key, alias) if qc.get(k) is not None}
            if len(set(map(repr, got.values()))) > 1:
                raise ConfigError(
                    f"{key}={got[key]!r} contradicts {alias}={got[alias]!r}",
                    file=file,
                    tensor=f"quantization_config.{key}",
                )
            if not got:
                raise ConfigError(f"AWQ config lacks {key} (or {alias})", file=file, tensor="quantization_config")
            vals[key] = next(iter(got.values()))
        bits, group_size = check_bits_group(vals["bits"], vals["group_size"], file=file)
        if bits != 4:
            raise UnsupportedFormatError(
                f"bits={bits}: AWQ GEMM packing holds 4-bit codes only", file=file, tensor="quantization_config.bits"
            )
        version = str(qc.get("version") or "gemm").lower()
        if version not in _VERSIONS:
            raise UnsupportedFormatError(
                f"AWQ version {version!r} is not supported (only {', '.join(_VERSIONS)})",
                file=file,
                tensor="quantization_config.version",
            )
        zp = qc.get("zero_point", True)
        if zp is not True:
            raise UnsupportedFormatError(
                f"zero_point={zp!r}: AWQ GEMM checkpoints always carry zero points",
                file=file,
                tensor="quantization_config.zero_point",
            )
        skip = qc.get("modules_to_not_convert") or ()
        if isinstance(skip, str) or not all(isinstance(m, str) for m in skip):
            raise ConfigError(
                f"modules_to_not_convert must be a list of strings, got {skip!r}",
                file=file,
                tensor="quantization_config.modules_to_not_convert",
            )
        return cls(bits=bits, group_size=group_size, version=version, modules_to_not_convert=tuple(skip))

    def skips(self, module: str) -> bool:
        """True when ``module`` is listed (as a substring, as AutoAWQ and vLLM match) to stay dense."""
        return any(m in module for m in self.modules_to_not_convert)


class AWQ(Format, name="awq"):
    """AWQ GEMM / GEMV / GEMV_FAST checkpoints -> ``uint4`` codes + uint8 (or GEMV_FAST float) zeros."""

    quant_methods = ("awq",)
    partner_suffixes = frozenset({"qzeros", "scales", "g_idx"})
    main_suffix = "qweight"

    def __init__(self, cfg: AWQConfig):
        self.cfg = cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> AWQ:
        qc = quant_config(config) or {}
        if not any(n.endswith(".qweight") for n in tensor_names):
            raise ConfigError(
                "quant_method is awq but no tensor is named *.qweight", file=CONFIG_FILE, tensor="quantization_config"
            )
        return cls(AWQConfig.from_dict(qc, file=CONFIG_FILE))

    def convert_module(self, group: TensorGroup):
        if "qweight" not in group:
            return self.passthrough(group)
        if self.cfg.skips(group.prefix):
            raise group.error("qweight", "module is quantized on disk but modules_to_not_convert lists it", ConfigError)
        if self.cfg.version == "gemv":
            return convert_gemv_group(group, group_size=self.cfg.group_size)
        if self.cfg.version == "gemv_fast":
            return convert_gemv_fast_group(group, group_size=self.cfg.group_size)
        return convert_awq_group(group, bits=self.cfg.bits, group_size=self.cfg.group_size)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "awq": dataclasses.asdict(self.cfg)}
