"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum, AutoRound's ``auto_gptq`` export; ``quant_method: "gptq"``).

Config (formats.md 1.1; GPTQModel ``quantization/config.py QuantizeConfig.to_dict``): ``bits``
(2, 3, 4, 8), ``group_size`` (-1 = per output channel), ``sym``, ``desc_act``, ``lm_head``,
``checkpoint_format`` / ``format`` (synonyms: ``gptq`` = v1 zero points stored as ``z - 1``,
``gptq_v2`` = stored as ``z``), ``pack_dtype`` (int32) and GPTQModel's ``dynamic``: a dict
``regex -> overrides`` matched with ``re.match`` against the module name, first match wins;
``-:regex`` excludes a module from quantization (it is stored dense), ``+:regex`` or a bare regex
overrides ``bits`` / ``group_size`` / ``sym`` / ``desc_act`` for it
(vLLM ``quantization/utils/gptq_utils.py get_dynamic_override``). The ``quantize_config.json``
side file is merged into ``quantization_config`` by `jquant.convert.hf`.

Tensors and their decoding are in `jquant.formats._int_packed`. A module is quantized when it has
a ``qweight``; everything else (embeddings, norms, an unquantized ``lm_head``) passes through.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.formats._int_packed import CONFIG_FILE, IntScheme, check_bits_group, convert_gptq_group
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = ["GPTQ", "GPTQConfig", "DynamicRule"]

# checkpoint_format -> zero points stored as z - 1 (v1)? (GPTQModel model_dequant._uses_gptq_v1_qzeros)
_ZERO_CONVENTION = {"gptq": True, "gptq_v2": False}
# Layouts GPTQModel / AutoGPTQ can also write; each repacks codes differently (formats.md 3).
_OTHER_LAYOUTS = ("gptq_p", "marlin", "marlin_24", "bitblas", "qqq", "gemm", "gemv", "gemv_fast")
_OVERRIDABLE = ("bits", "group_size", "sym", "desc_act")


@dataclasses.dataclass(frozen=True)
class DynamicRule:
    """One GPTQModel ``dynamic`` entry: ``exclude`` for ``-:`` patterns, else field overrides."""

    pattern: str
    exclude: bool
    overrides: tuple[tuple[str, Any], ...] = ()

    def matches(self, module: str) -> bool:
        return re.match(self.pattern, module) is not None


def _bool(qc: Mapping[str, Any], key: str, default: bool, file) -> bool:
    v = qc.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} must be true or false", file=file, tensor=f"quantization_config.{key}")
    return v


@dataclasses.dataclass(frozen=True)
class GPTQConfig:
    """A parsed GPTQ ``quantization_config``.

    Attributes:
        bits: default code width (2, 3, 4, 8).
        group_size: default group size, -1 for per output channel.
        sym: default symmetric flag (a hint; zeros are read from the checkpoint).
        desc_act: act-order (``g_idx`` must be stored).
        checkpoint_format: ``"gptq"`` (v1 zeros) or ``"gptq_v2"``.
        lm_head: whether ``lm_head`` is quantized.
        dynamic: GPTQModel per-module rules, in config order.
    """

    bits: int
    group_size: int
    sym: bool = True
    desc_act: bool = False
    checkpoint_format: str = "gptq"
    lm_head: bool = False
    dynamic: tuple[DynamicRule, ...] = ()

    @classmethod
    def from_dict(cls, qc: Mapping[str, Any], file=None) -> GPTQConfig:
        """Parses and validates ``quantization_config``.

        Raises:
            ConfigError: missing or contradictory keys (``format`` vs ``checkpoint_format``),
                bad values, malformed ``dynamic``.
            UnsupportedFormatError: marlin / bitblas / planar layouts, 5-7 bits, non-int32 packing.
        """
        if qc.get("is_marlin_format") or qc.get("is_bitblas_format"):
            raise UnsupportedFormatError(
                "legacy Marlin/BitBLAS-repacked GPTQ checkpoint (is_marlin_format / is_bitblas_format)", file=file
            )
        fmts = {k: str(qc[k]).lower() for k in ("checkpoint_format", "format") if qc.get(k) is not None}
        if len(set(fmts.values())) > 1:
            raise ConfigError(
                f"checkpoint_format={fmts['checkpoint_format']!r} contradicts format={fmts['format']!r}",
                file=file,
                tensor="quantization_config.checkpoint_format",
            )
        fmt = next(iter(fmts.values()), "gptq")
        if fmt in _OTHER_LAYOUTS:
            raise UnsupportedFormatError(
                f"checkpoint_format={fmt!r} is not supported (only {sorted(_ZERO_CONVENTION)})",
                file=file,
                tensor="quantization_config.checkpoint_format",
            )
        if fmt not in _ZERO_CONVENTION:
            raise ConfigError(
                f"unknown checkpoint_format={fmt!r} (expected one of {sorted(_ZERO_CONVENTION)})",
                file=file,
                tensor="quantization_config.checkpoint_format",
            )
        pack_dtype = str(qc.get("pack_dtype", "int32")).removeprefix("torch.")
        if pack_dtype != "int32":
            raise UnsupportedFormatError(
                f"pack_dtype={pack_dtype!r}: only int32 words are supported",
                file=file,
                tensor="quantization_config.pack_dtype",
            )
        if "bits" not in qc or "group_size" not in qc:
            missing = [k for k in ("bits", "group_size") if k not in qc]
            raise ConfigError(f"GPTQ config lacks {', '.join(missing)}", file=file, tensor="quantization_config")
        bits, group_size = check_bits_group(qc["bits"], qc["group_size"], file=file)
        return cls(
            bits=bits,
            group_size=group_size,
            sym=_bool(qc, "sym", True, file),
            desc_act=_bool(qc, "desc_act", False, file),
            checkpoint_format=fmt,
            lm_head=_bool(qc, "lm_head", False, file),
            dynamic=_parse_dynamic(qc.get("dynamic"), file),
        )

    def scheme(self, module: str) -> IntScheme | None:
        """The storage scheme of ``module``, or None when ``dynamic`` excludes it (``-:`` rule)."""
        fields = {"bits": self.bits, "group_size": self.group_size, "sym": self.sym, "desc_act": self.desc_act}
        for rule in self.dynamic:
            if rule.matches(module):
                if rule.exclude:
                    return None
                fields.update(rule.overrides)
                break
        return IntScheme(**fields, zeros_v1=_ZERO_CONVENTION[self.checkpoint_format])


def _parse_dynamic(dynamic, file) -> tuple[DynamicRule, ...]:
    if dynamic is None:
        return ()
    where = "quantization_config.dynamic"
    if not isinstance(dynamic, Mapping):
        raise ConfigError(
            f"dynamic must be a mapping of regex -> overrides, got {type(dynamic).__name__}", file=file, tensor=where
        )
    rules = []
    for key, overrides in dynamic.items():
        exclude = key.startswith("-:")
        pattern = key[2:] if exclude or key.startswith("+:") else key
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"bad regex {key!r}: {e}", file=file, tensor=where) from None
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{key!r} maps to {overrides!r}, expected a dict", file=file, tensor=where)
        picked = {k: overrides[k] for k in _OVERRIDABLE if k in overrides}
        if not exclude and ("bits" in picked or "group_size" in picked):
            check_bits_group(
                picked.get("bits", 4), picked.get("group_size", -1), file=file, key_bits=f"dynamic[{key!r}].bits",
                key_group=f"dynamic[{key!r}].group_size",
            )  # fmt: skip
        for k in ("sym", "desc_act"):
            if k in picked and not isinstance(picked[k], bool):
                raise ConfigError(f"{key!r}: {k}={picked[k]!r} must be true or false", file=file, tensor=where)
        rules.append(DynamicRule(pattern, exclude, tuple(sorted(picked.items()))))
    return tuple(rules)


class GPTQ(Format, name="gptq"):
    """GPTQ int32-packed checkpoints -> ``uint{b}b{2^(b-1)}`` (symmetric) or ``uint{b}`` + zeros."""

    quant_methods = ("gptq",)
    partner_suffixes = frozenset({"qzeros", "scales", "g_idx"})
    main_suffix = "qweight"

    def __init__(self, cfg: GPTQConfig, file=None):
        self.cfg = cfg
        self.file = file

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> GPTQ:
        qc = quant_config(config) or {}
        if not any(n.endswith(".qweight") for n in tensor_names):
            raise ConfigError(
                "quant_method is gptq but no tensor is named *.qweight", file=CONFIG_FILE, tensor="quantization_config"
            )
        return cls(GPTQConfig.from_dict(qc, file=CONFIG_FILE))

    def convert_module(self, group: TensorGroup):
        if "qweight" not in group:
            return self.passthrough(group)
        scheme = self.cfg.scheme(group.prefix)
        excluded = scheme is None or (group.prefix.split(".")[-1] == "lm_head" and not self.cfg.lm_head)
        if excluded:
            why = "dynamic '-:' rule excludes it" if scheme is None else "lm_head is false"
            raise group.error(
                "qweight", f"module is quantized on disk but the config says it is not ({why})", ConfigError
            )
        return convert_gptq_group(group, scheme)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["dynamic"] = {("-:" if r.exclude else "+:") + r.pattern: dict(r.overrides) for r in self.cfg.dynamic}
        return {"format": self.name, "gptq": d}
