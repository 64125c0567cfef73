"""The `Format` protocol, the registry, and `TensorGroup` (one module's tensors, read lazily).

A format is a class registered by subclassing (``class GPTQ(Format, name="gptq")``). An instance
is built from the checkpoint's HF config by `Format.from_config` (which parses
``quantization_config`` into a dataclass and refuses contradictions), then converts one module at
a time: `Format.convert_module` receives every tensor whose name starts with that module's prefix
(``model.layers.0.self_attn.q_proj.*``), gathered across shards, and returns HF-named entries
(``...q_proj.weight -> QArray``, ``...q_proj.bias -> ndarray``).

This module and every format file import numpy only: no JAX, no torch.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.core.qarray import QArray

__all__ = ["Format", "TensorGroup", "get_format", "registered_formats", "detect_format", "quant_config"]

_REGISTRY: dict[str, type[Format]] = {}
# dtypes a ``weight`` only has as quantized codes: passed through as a plain array, it would be read
# as if the codes were the values (a missing scale tensor, or a config that does not cover the module).
_CODE_DTYPES = frozenset(
    {"int8", "uint8", "int16", "int32", "uint32", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"}
)


class TensorGroup(Mapping):
    """The tensors of one module, by suffix (``"qweight"``, ``"scales"``, ``"bias"``...), loaded on access.

    Attributes:
        prefix: the module name, e.g. ``"model.layers.0.mlp.down_proj"`` ("" for top-level names).
    """

    def __init__(self, prefix: str, sources: Mapping[str, tuple[Any, str]]):
        # sources: suffix -> (opened file with __getitem__/shape/dtype/path, full tensor name)
        self.prefix = prefix
        self._sources = dict(sources)

    def full_name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}" if self.prefix else suffix

    def __getitem__(self, suffix: str) -> np.ndarray:
        f, name = self._sources[suffix]
        return f[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def file(self, suffix: str) -> str | None:
        src = self._sources.get(suffix)
        return None if src is None else str(getattr(src[0], "path", None))

    def shape(self, suffix: str) -> tuple[int, ...]:
        f, name = self._sources[suffix]
        return tuple(f.shape(name))

    def dtype(self, suffix: str) -> np.dtype:
        f, name = self._sources[suffix]
        return np.dtype(f.dtype(name))

    def error(self, suffix: str, problem: str, cls: type[FormatError] = FormatError) -> FormatError:
        """A `FormatError` naming this module's tensor ``suffix`` and the file it lives in."""
        return cls(problem, file=self.file(suffix), tensor=self.full_name(suffix))

    def require(self, *suffixes: str) -> None:
        """Raises `FormatError` naming the first missing partner tensor."""
        for s in suffixes:
            if s not in self._sources:
                have = ", ".join(sorted(self._sources)) or "nothing"
                anyfile = next(iter(self._sources.values()), (None, None))[0]
                raise FormatError(
                    f"missing tensor (module has: {have})",
                    file=getattr(anyfile, "path", None),
                    tensor=self.full_name(s),
                )

    def expect(self, suffix: str, *, shape: tuple[int, ...] | None = None, dtypes: Collection[Any] | None = None):
        """Loads ``suffix`` after checking its shape / dtype, with an error naming it otherwise."""
        self.require(suffix)
        if shape is not None and self.shape(suffix) != tuple(shape):
            raise self.error(suffix, f"shape {list(self.shape(suffix))} but expected {list(shape)}")
        if dtypes is not None and self.dtype(suffix) not in {np.dtype(d) for d in dtypes}:
            want = ", ".join(sorted(np.dtype(d).name for d in dtypes))
            raise self.error(suffix, f"dtype {self.dtype(suffix).name} but expected one of {want}")
        return self[suffix]


class Format(abc.ABC):
    """A source checkpoint format (one file per format family under `jquant.formats`).

    Subclasses set ``quant_methods`` (the ``quantization_config.quant_method`` values they own)
    and register by name: ``class GPTQ(Format, name="gptq")``.
    """

    name: ClassVar[str]
    quant_methods: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, name: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if name is None:
            return
        if name in _REGISTRY:
            raise ValueError(f"format {name!r} registered twice ({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> Format:
        """Parses the HF config (with ``quantization_config`` merged in) for this format.

        Raises:
            ConfigError: missing or contradictory settings, or tensors that disagree with them.
        """

    @abc.abstractmethod
    def convert_module(self, group: TensorGroup) -> dict[str, QArray | np.ndarray]:
        """Converts one module's tensors into HF-named canonical entries (numpy only, lossless)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able summary stored in the canonical checkpoint's metadata."""
        return {"format": self.name}

    def split_name(self, name: str) -> tuple[str, str]:
        """(module prefix, suffix) of a tensor name: which `TensorGroup` it joins.

        The default splits at the last dot (``a.b.qweight -> ("a.b", "qweight")``). Formats whose
        partner tensors carry dotted suffixes (bitsandbytes' ``<m>.weight.absmax``) override it.
        """
        prefix, _, suffix = name.rpartition(".")
        return prefix, suffix

    # Suffixes that only exist beside a quantized weight (GPTQ's qzeros / scales / g_idx, fp8's
    # weight_scale...): `passthrough` refuses them, so that a module whose quantized weight is
    # missing fails naming it instead of leaving its partners behind as plain tensors.
    partner_suffixes: ClassVar[frozenset[str]] = frozenset()
    main_suffix: ClassVar[str] = "weight"

    # Shared helper: modules that are not quantized keep every tensor as is.
    def passthrough(self, group: TensorGroup, skip: Collection[str] = ()) -> dict[str, np.ndarray]:
        orphans = sorted(s for s in group if s in self.partner_suffixes and s not in skip)
        if orphans:
            have = ", ".join(sorted(group))
            raise FormatError(
                f"{', '.join(orphans)} without a quantized {self.main_suffix} (module has: {have})",
                file=group.file(orphans[0]),
                tensor=group.full_name(self.main_suffix),
            )
        if "weight" in group and "weight" not in skip and group.dtype("weight").name in _CODE_DTYPES:
            raise FormatError(
                f"{group.dtype('weight').name} weight (quantized codes) without its scales (module has: {', '.join(sorted(group))})",
                file=group.file("weight"),
                tensor=group.full_name("weight"),
            )
        return {group.full_name(s): group[s] for s in group if s not in skip}


def get_format(name: str) -> type[Format]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedFormatError(f"unknown format {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered_formats() -> dict[str, type[Format]]:
    return dict(_REGISTRY)


def quant_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    qc = config.get("quantization_config")
    return dict(qc) if isinstance(qc, Mapping) else None


# Tensor-name signatures of quantized formats (formats.md 0.4), used only to refuse a checkpoint whose
# config says "not quantized" but whose tensors say otherwise, and to explain contradictions.
_SIGNATURES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("gptq/awq-style qweight", lambda n: n.endswith(".qweight")),
    ("compressed-tensors weight_packed", lambda n: n.endswith(".weight_packed")),
    ("fp8 weight_scale_inv", lambda n: n.endswith(".weight_scale_inv")),
    ("bitsandbytes quant_state", lambda n: ".quant_state." in n or n.endswith(".SCB")),
)


def tensor_signature(names: Collection[str]) -> str | None:
    for label, pred in _SIGNATURES:
        if any(pred(n) for n in names):
            return label
    return None


def detect_format(config: Mapping[str, Any], tensor_names: Collection[str], *, file: Any = None) -> Format:
    """Picks the format from ``config["quantization_config"]["quant_method"]`` and builds it.

    The config is trusted; tensors are checked against it by the format itself. With no
    quantization config, the checkpoint must look unquantized.

    Raises:
        ConfigError: no config but quantized-looking tensors, or a config the format refuses.
        UnsupportedFormatError: a ``quant_method`` no registered format owns.
    """
    qc = quant_config(config)
    if qc is None:
        sig = tensor_signature(tensor_names)
        if sig is not None:
            raise ConfigError(
                f"config.json has no quantization_config but the tensors look quantized ({sig})", file=file
            )
        return get_format("unquantized").from_config(config, tensor_names)
    method = str(qc.get("quant_method", "")).lower()
    owners = [cls for cls in _REGISTRY.values() if method in cls.quant_methods]
    if not owners:
        known = sorted(m for c in _REGISTRY.values() for m in c.quant_methods if m)
        raise UnsupportedFormatError(f"quant_method {method!r} is not supported; supported: {known}", file=file)
    if len(owners) > 1:
        raise AssertionError(f"quant_method {method!r} claimed by {[c.name for c in owners]}")
    try:
        return owners[0].from_config(config, tensor_names)
    except FormatError as e:
        if file is not None and e.file is not None and e.file == os.path.basename(str(file)):
            raise type(e)(e.problem, file=file, tensor=e.tensor) from None  # "config.json" -> its full path
        raise e.with_file(file) from None
