"""Unquantized HF checkpoints (bf16 / f16 / f32): every tensor passes through in its own dtype."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from jquant.formats.base import Format, TensorGroup


class Unquantized(Format, name="unquantized"):
    """A checkpoint with no ``quantization_config``: nothing to convert, tensors kept as stored."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> Unquantized:
        return cls()

    def convert_module(self, group: TensorGroup):
        return self.passthrough(group)
