"""AutoRound checkpoints (Intel auto-round; ``quant_method: "auto-round"``), integer weight-only exports.

Config, as auto-round 0.16.1 writes it (``auto_round/export/export_to_autoround/export.py
save_quantized_as_autoround``)::

    {"quant_method": "auto-round", "packing_format": "auto_round:auto_gptq", "bits": 4,
     "group_size": 128, "sym": true, "data_type": "int", "block_name_to_quantize": "model.layers",
     "extra_config": {"<layer name or regex>": {"bits": 8, "group_size": 32, "sym": false, ...}},
     "autoround_version": "0.16.1"}

``packing_format`` picks the layout (vLLM reads ``auto_round:auto_gptq`` when it is absent):

* ``auto_round:auto_gptq``: GPTQ layout with v1 zero points (``z - 1``;
  ``auto_round_extension/torch/qlinear_torch_zp.py pack_248_bits`` subtracts 1, its ``forward``
  adds it back) and no ``g_idx``. auto-round writes this for every symmetric ``format="auto_round"``
  export (the ``auto_round`` backend is renamed to ``auto_round:auto_gptq`` when ``sym``).
* ``auto_round`` (native, asymmetric) and ``auto_round:gptqmodel``: GPTQ layout with zero points
  stored as is (``auto_round_extension/torch/qlinear_torch.py``, v2 semantics; the gptqmodel
  variant also stores a trivial ``g_idx``).
* ``auto_round:auto_awq``: AWQ GEMM layout (auto-round 0.16 picks it for asymmetric 4-bit).

Other packings (``fp8``, ``llm_compressor``, MX/NV fp4, ``mlx``) and ``data_type`` other than int
are refused with `UnsupportedFormatError`. ``format="auto_gptq"`` / ``"auto_awq"`` exports write
``quant_method: "gptq"`` / ``"awq"`` configs and are read by `jquant.formats.gptq` / `.awq`.

Which layers are quantized (vLLM ``quantization/auto_round.py get_layer_config``): a layer
listed in ``extra_config`` (exact name first, then the keys that contain regex characters, by
``re.search``) takes its ``bits`` / ``group_size`` / ``sym`` from there; ``bits >= 16`` means
dense. Other layers are quantized with the global settings when they lie inside one of
``block_name_to_quantize`` (or when that key is absent). The tensors on disk decide: a layer with
``qweight`` that the config calls dense is a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.formats._int_packed import CONFIG_FILE, IntScheme, check_bits_group, convert_awq_group, convert_gptq_group
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = ["AutoRound", "AutoRoundConfig", "LAYOUTS"]

# packing_format -> (layout, GPTQ v1 zero points?)
LAYOUTS: dict[str, tuple[str, bool]] = {
    "auto_round:auto_gptq": ("gptq", True),
    "auto_round": ("gptq", False),
    "auto_round:gptqmodel": ("gptq", False),
    "auto_round:auto_awq": ("awq", False),
}
_REGEX_CHARS = set(r"*+?^$()[]{}|\\")
_LAYER_KEYS = ("bits", "group_size", "sym")


def _where(key: str) -> str:
    return f"quantization_config.{key}"


@dataclasses.dataclass(frozen=True)
class AutoRoundConfig:
    """A parsed AutoRound ``quantization_config`` (integer weight-only exports).

    Attributes:
        packing_format: a key of `LAYOUTS`.
        bits, group_size, sym: global settings.
        block_name_to_quantize: prefixes of the quantized blocks; empty means every layer.
        extra_config: per-layer overrides ``(name or regex, {bits, group_size, sym})`` in config order.
    """

    packing_format: str
    bits: int
    group_size: int
    sym: bool = True
    block_name_to_quantize: tuple[str, ...] = ()
    extra_config: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def from_dict(cls, qc: Mapping[str, Any], file=None) -> AutoRoundConfig:
        """Parses and validates ``quantization_config``.

        Raises:
            UnsupportedFormatError: non-integer data types, activation quantization, packings
                other than `LAYOUTS`.
            ConfigError: missing or malformed keys, bad per-layer overrides.
        """
        packing = str(qc.get("packing_format") or "auto_round:auto_gptq").lower()
        if packing not in LAYOUTS:
            raise UnsupportedFormatError(
                f"packing_format {packing!r} is not supported (integer exports only: {sorted(LAYOUTS)})",
                file=file,
                tensor=_where("packing_format"),
            )
        data_type = str(qc.get("data_type") or "int").lower()
        if data_type not in ("int", "int_sym", "int_asym"):
            raise UnsupportedFormatError(
                f"data_type {data_type!r} is not supported (only integer weights)",
                file=file,
                tensor=_where("data_type"),
            )
        act_bits = qc.get("act_bits", 16)
        if act_bits is not None and act_bits < 16:
            raise UnsupportedFormatError(
                f"act_bits={act_bits}: activation quantization is not supported", file=file, tensor=_where("act_bits")
            )
        missing = [k for k in ("bits", "group_size") if k not in qc]
        if missing:
            raise ConfigError(f"AutoRound config lacks {', '.join(missing)}", file=file, tensor="quantization_config")
        bits, group_size = check_bits_group(qc["bits"], qc["group_size"], file=file)
        sym = qc.get("sym", True)
        if not isinstance(sym, bool):
            raise ConfigError(f"sym={sym!r} must be true or false", file=file, tensor=_where("sym"))
        blocks = qc.get("block_name_to_quantize") or qc.get("to_quant_block_names") or ()
        if isinstance(blocks, str):
            blocks = [b.strip() for b in blocks.split(",") if b.strip()]
        if not all(isinstance(b, str) for b in blocks):
            # nested lists (multimodal models) name the blocks one by one; keep their common prefix
            blocks = [b if isinstance(b, str) else _common_prefix(b) for b in blocks]
        extra = qc.get("extra_config") or {}
        if not isinstance(extra, Mapping):
            raise ConfigError("extra_config must map layer names to settings", file=file, tensor=_where("extra_config"))
        parsed = []
        for name, layer in extra.items():
            if not isinstance(layer, Mapping):
                raise ConfigError(
                    f"{name!r} maps to {layer!r}, expected a dict", file=file, tensor=_where("extra_config")
                )
            if (
                str(layer.get("data_type", "int")).lower() not in ("int", "int_sym", "int_asym")
                and layer.get("bits", bits) < 16
            ):
                raise UnsupportedFormatError(
                    f"{name!r}: data_type {layer.get('data_type')!r} is not supported",
                    file=file,
                    tensor=_where("extra_config"),
                )
            picked = {k: layer[k] for k in _LAYER_KEYS if layer.get(k) is not None}
            if picked.get("bits", bits) < 16:
                check_bits_group(
                    picked.get("bits", bits), picked.get("group_size", group_size), file=file,
                    key_bits=f"extra_config[{name!r}].bits", key_group=f"extra_config[{name!r}].group_size",
                )  # fmt: skip
            parsed.append((name, tuple(sorted(picked.items()))))
        return cls(packing, bits, group_size, sym, tuple(blocks), tuple(parsed))

    @property
    def layout(self) -> str:
        return LAYOUTS[self.packing_format][0]

    def scheme(self, module: str) -> IntScheme | None:
        """The storage scheme of ``module``, or None when the config leaves it dense."""
        override = self._override(module)
        if override is None:
            inside = not self.block_name_to_quantize or any(module.startswith(b) for b in self.block_name_to_quantize)
            if not inside:
                return None
            override = {}
        fields = {"bits": self.bits, "group_size": self.group_size, "sym": self.sym, **override}
        if fields["bits"] >= 16:
            return None
        return IntScheme(**fields, desc_act=False, zeros_v1=LAYOUTS[self.packing_format][1])

    def _override(self, module: str) -> dict[str, Any] | None:
        table = dict(self.extra_config)
        if module in table:
            return dict(table[module])
        for pattern, layer in self.extra_config:
            if any(c in _REGEX_CHARS for c in pattern):
                try:
                    if re.search(pattern, module):
                        return dict(layer)
                except re.error:
                    continue
        return None


def _common_prefix(names) -> str:
    import os

    return os.path.commonprefix(list(names)).rstrip(".")


class AutoRound(Format, name="auto-round"):
    """AutoRound integer exports, read through the GPTQ or AWQ layout its ``packing_format`` names."""

    quant_methods = ("auto-round", "autoround", "intel/auto-round")
    partner_suffixes = frozenset({"qzeros", "scales", "g_idx"})
    main_suffix = "qweight"

    def __init__(self, cfg: AutoRoundConfig):
        self.cfg = cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> AutoRound:
        qc = quant_config(config) or {}
        cfg = AutoRoundConfig.from_dict(qc, file=CONFIG_FILE)
        if not any(n.endswith(".qweight") for n in tensor_names):
            raise ConfigError(
                f"packing_format {cfg.packing_format!r} but no tensor is named *.qweight",
                file=CONFIG_FILE,
                tensor="quantization_config.packing_format",
            )
        return cls(cfg)

    def convert_module(self, group: TensorGroup):
        if "qweight" not in group:
            return self.passthrough(group)
        scheme = self.cfg.scheme(group.prefix)
        if scheme is None:
            raise group.error(
                "qweight",
                "module is quantized on disk but the config leaves it dense (extra_config / block_name_to_quantize)",
                ConfigError,
            )
        if self.cfg.layout == "awq":
            return convert_awq_group(group, bits=scheme.bits, group_size=scheme.group_size)
        return convert_gptq_group(group, scheme)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["block_name_to_quantize"] = list(self.cfg.block_name_to_quantize)
        d["extra_config"] = {name: dict(layer) for name, layer in self.cfg.extra_config}
        return {"format": self.name, "autoround": d}
