"""GPTQ checkpoints (AutoGPTQ, GPTQModel, optimum, AutoRound's ``auto_gptq`` export; ``quant_method: "gptq"``).

Config (formats.md 1.1; GPTQModel ``quantization/config.py QuantizeConfig.to_dict``): ``bits``
(2, 3, 4, 8; 5, 6, 7 in GPTQModel's planar layout, `jquant.formats.gptq_planar`), ``group_size``
(-1 = per output channel), ``sym``, ``desc_act``, ``lm_head``, ``checkpoint_format`` / ``format``
(synonyms: ``gptq`` = v1 zero points stored as ``z - 1``, ``gptq_v2`` = stored as ``z``,
``gptq_p`` = planar with v2 zeros, ``marlin`` = Marlin-repacked, below), ``pack_dtype`` (int32)
and GPTQModel's ``dynamic``: a dict ``regex -> overrides`` matched with ``re.match`` against the
module name, first match wins; ``-:regex`` excludes a module from quantization (it is stored
dense), ``+:regex`` or a bare regex overrides ``bits`` / ``group_size`` / ``sym`` / ``desc_act``
for it (vLLM ``quantization/utils/gptq_utils.py get_dynamic_override``). The ``quantize_config.json``
side file is merged into ``quantization_config`` by `jquant.convert.hf`.

Tensors and their decoding are in `jquant.formats._int_packed`. Marlin-repacked checkpoints
(``checkpoint_format: "marlin"``, or AutoGPTQ <= 0.7.1's ``is_marlin_format: true``) store ``B`` +
``s`` per module, read by `jquant.formats.marlin`; a module that instead holds plain GPTQ tensors
under that config (what GPTQModel 7.x's ``FORMAT.MARLIN`` holder reads: ``qweight`` / ``qzeros``
with v1 zero points, ``nn_modules/qlinear/mlx.py GPTQMarlinMlxQuantLinear.pack_source``) is read
as GPTQ v1. BitBLAS-repacked checkpoints (``checkpoint_format: "bitblas"`` or
``is_bitblas_format: true``) are read by `jquant.formats.bitblas`. A module is quantized when it
has a ``qweight`` (or Marlin's ``B``); everything else (embeddings, norms, an unquantized
``lm_head``) passes through.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.formats._int_packed import CONFIG_FILE, IntScheme, check_bits_group, convert_gptq_group
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.bitblas import convert_bitblas_group
from jquant.formats.gptq_planar import PLANAR_ONLY_BITS, convert_planar_group
from jquant.formats.marlin import check_marlin_config, convert_marlin_group

__all__ = ["GPTQ", "GPTQConfig", "DynamicRule", "PlanarScheme"]

# checkpoint_format -> zero points stored as z - 1 (v1)? (GPTQModel model_dequant._uses_gptq_v1_qzeros)
# "marlin": plain GPTQ tensors under a marlin config keep v1 zeros (module docstring).
# "bitblas": zero points stored as BitBLAS reads them, w = (q - z) * s (`jquant.formats.bitblas`).
_ZERO_CONVENTION = {"gptq": True, "gptq_v2": False, "gptq_p": False, "marlin": True, "bitblas": False}
# Layouts GPTQModel / AutoGPTQ can also write; each repacks codes differently (formats.md 3).
_OTHER_LAYOUTS = ("marlin_24", "qqq", "gemm", "gemv", "gemv_fast")
_OVERRIDABLE = ("bits", "group_size", "sym", "desc_act")


@dataclasses.dataclass(frozen=True)
class PlanarScheme:
    """A module stored in GPTQModel's planar layout (`jquant.formats.gptq_planar`); zeros are v2."""

    bits: int
    group_size: int
    desc_act: bool = False


def _bits_group(qc_bits, qc_group, *, file, key_bits="bits", key_group="group_size") -> tuple[int, int]:
    # `check_bits_group` (shared with AWQ / AutoRound, which cannot hold them) refuses 5/6/7 bits;
    # GPTQ reads them in the planar layout, so only the group size is checked for those widths.
    if qc_bits in PLANAR_ONLY_BITS and not isinstance(qc_bits, bool):
        return qc_bits, check_bits_group(4, qc_group, file=file, key_bits=key_bits, key_group=key_group)[1]
    return check_bits_group(qc_bits, qc_group, file=file, key_bits=key_bits, key_group=key_group)


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
        checkpoint_format: ``"gptq"`` (v1 zeros), ``"gptq_v2"``, ``"gptq_p"`` or ``"marlin"``.
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
            UnsupportedFormatError: marlin_24 / qqq layouts, non-int32 packing, Marlin
                with anything but 4-bit symmetric without act-order.
        """
        fmts = {k: str(qc[k]).lower() for k in ("checkpoint_format", "format") if qc.get(k) is not None}
        if qc.get("is_bitblas_format") is True:  # the legacy boolean spelling (formats.md 0.4)
            fmts["is_bitblas_format"] = "bitblas"
        if qc.get("is_marlin_format") is True:  # AutoGPTQ <= 0.7.1 (vLLM MarlinConfig reads both)
            fmts["is_marlin_format"] = "marlin"
        if len(set(fmts.values())) > 1:
            a, b = list(fmts)[:2]
            raise ConfigError(
                f"{a}={qc[a]!r} contradicts {b}={qc[b]!r}",
                file=file,
                tensor=f"quantization_config.{a}",
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
        bits, group_size = _bits_group(qc["bits"], qc["group_size"], file=file)
        if fmt == "marlin":
            check_marlin_config(qc, file=file)
        return cls(
            bits=bits,
            group_size=group_size,
            sym=_bool(qc, "sym", True, file),
            desc_act=_bool(qc, "desc_act", False, file),
            checkpoint_format=fmt,
            lm_head=_bool(qc, "lm_head", False, file),
            dynamic=_parse_dynamic(qc.get("dynamic"), file),
        )

    def scheme(self, module: str) -> IntScheme | PlanarScheme | None:
        """The storage scheme of ``module``, or None when ``dynamic`` excludes it (``-:`` rule).

        5/6/7 bits (any label) and 3 bits under ``gptq_p`` are planar (`PlanarScheme`).
        """
        fields = {"bits": self.bits, "group_size": self.group_size, "sym": self.sym, "desc_act": self.desc_act}
        for rule in self.dynamic:
            if rule.matches(module):
                if rule.exclude:
                    return None
                fields.update(rule.overrides)
                break
        if fields["bits"] in PLANAR_ONLY_BITS or (fields["bits"] == 3 and self.checkpoint_format == "gptq_p"):
            return PlanarScheme(fields["bits"], fields["group_size"], fields["desc_act"])
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
            _bits_group(
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
        cfg = GPTQConfig.from_dict(qc, file=CONFIG_FILE)
        mains = (".qweight", ".B") if cfg.checkpoint_format == "marlin" else (".qweight",)
        if not any(n.endswith(mains) for n in tensor_names):
            want = " or ".join(f"*{m}" for m in mains)
            raise ConfigError(
                f"quant_method is gptq but no tensor is named {want}", file=CONFIG_FILE, tensor="quantization_config"
            )
        fmt = cls(cfg)
        if cfg.checkpoint_format == "bitblas":
            fmt.partner_suffixes = cls.partner_suffixes | {"zeros"}  # GPTQModel's first BitBLAS QuantLinear
        if cfg.checkpoint_format == "marlin":
            fmt.partner_suffixes = cls.partner_suffixes | {"s"}  # Marlin's scales without its B
            fmt.main_suffix = "B"
        return fmt

    def convert_module(self, group: TensorGroup):
        main = "B" if self.cfg.checkpoint_format == "marlin" and "B" in group else "qweight"
        if main not in group:
            return self.passthrough(group)
        scheme = self.cfg.scheme(group.prefix)
        excluded = scheme is None or (group.prefix.split(".")[-1] == "lm_head" and not self.cfg.lm_head)
        if excluded:
            why = "dynamic '-:' rule excludes it" if scheme is None else "lm_head is false"
            raise group.error(main, f"module is quantized on disk but the config says it is not ({why})", ConfigError)
        if main == "B":
            return convert_marlin_group(group, group_size=scheme.group_size)
        if self.cfg.checkpoint_format == "bitblas":
            return convert_bitblas_group(group, scheme)
        if isinstance(scheme, PlanarScheme):
            return convert_planar_group(group, bits=scheme.bits, group_size=scheme.group_size, desc_act=scheme.desc_act)
        return convert_gptq_group(group, scheme)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["dynamic"] = {("-:" if r.exclude else "+:") + r.pattern: dict(r.overrides) for r in self.cfg.dynamic}
        return {"format": self.name, "gptq": d}
