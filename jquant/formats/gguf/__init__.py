"""GGUF (llama.cpp): GGML-typed tensors -> canonical `QArray` / dense arrays under HF names.

`GGUF` is the registered `Format`. It is built from a file's metadata (`GGUF.from_metadata`), not
from an HF ``quantization_config`` (no HF checkpoint declares ``quant_method: gguf``), and converts
one module at a time like every format: `GGUF.convert_module` gets a `TensorGroup` keyed by the HF
suffix (``weight``, ``bias``) whose entries are `RawTensor` records (name, GGML type, HF shape and
the raw bytes, memory-mapped); `jquant.convert.gguf` builds such groups from a
`jquant.convert.gguf_reader.GGUFFile`.

Per tensor:

* dense F32 / F16 / BF16 / F64 / ints -> numpy array in HF shape (reversed ggml dims), zero-copy.
* a type with a canonical form (`types.CANONICAL`) and 2 dims -> `QArray` [N, K].
* IQ1/IQ2/IQ3/TQ1_0 (grid / base-3 codes, no canonical form), and quantized tensors of other ranks
  -> float32, dequantized exactly by gguf-py at convert time, with a warning.
* llama-family ``attn_q`` / ``attn_k`` rows are put back in HF order (`arch.qk_row_order`): every
  GGML block lies inside one row, so gathering rows of codes, scales and zeros is lossless.
* MoE experts ``ffn_{gate,up,down}_exps`` (3-D, numpy [E, N, K]) become one 2-D tensor per expert
  under ``mlp.experts.{e}.<proj>.weight``: expert e is rows ``e*N ... (e+1)*N - 1`` of the stored
  blocks, converted like any 2-D weight (`QArray` for canonical types), so the split is lossless.
  Mixtral (a ``llama`` file with ``llama.expert_count``, `arch.MIXTRAL`) names them
  ``block_sparse_moe.experts.{e}.{w1,w3,w2}.weight`` instead; gpt-oss (`arch.GPT_OSS`) has expert
  biases ``ffn_*_exps.bias`` [E, N] and re-joins its gate / up halves into HF's interleaved
  ``experts.{e}.gate_up_proj`` (rows g0, u0, g1, u1...), a lossless row gather.

This package imports numpy and ml_dtypes only; gguf-py is imported lazily for the fallback.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jquant.core.concat import concat_rows, why_not_concat
from jquant.core.errors import FormatError, UnsupportedFormatError
from jquant.core.qarray import QArray
from jquant.formats.base import Format, TensorGroup
from jquant.formats.gguf.arch import (
    ARCHS,
    MIXTRAL,
    NON_WEIGHTS,
    ArchSpec,
    arch_spec,
    hf_config,
    hf_name,
    llama3_rope_scaling,
    qk_row_order,
)
from jquant.formats.gguf.types import CANONICAL, GGML_TYPES, GGMLType, ggml_type, to_qarray

__all__ = [
    "GGUF",
    "RawTensor",
    "GGMLType",
    "GGML_TYPES",
    "CANONICAL",
    "ARCHS",
    "ggml_type",
    "hf_config",
    "hf_name",
    "NON_WEIGHTS",
    "convert_tensor",
    "dequantize_gguf",
]


@dataclasses.dataclass(frozen=True)
class RawTensor:
    """One GGUF tensor as stored.

    Attributes:
        name: GGUF name (``blk.0.attn_q.weight``).
        type: its GGML type.
        shape: numpy / HF shape (reversed ggml dims).
        data: dense array in ``shape`` for dense types, else uint8 rows [prod(shape[:-1]), row_bytes].
        file: the file it came from (for error messages).
    """

    name: str
    type: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray
    file: Any = None


def dequantize_gguf(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...], *, name: str = "", file: Any = None):
    """Exact float32 dequantization of a non-canonical type by gguf-py (imported here, lazily).

    Raises:
        UnsupportedFormatError: gguf-py is missing or has no dequantizer for the type.
    """
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise UnsupportedFormatError(
            f"type {t.name} has no canonical form and dequantizing it needs gguf-py (pip install gguf)",
            file=file,
            tensor=name,
        ) from None
    try:
        out = dequantize(np.asarray(raw), GGMLQuantizationType(t.id))
    except (NotImplementedError, ValueError) as e:
        raise UnsupportedFormatError(f"type {t.name} cannot be converted ({e})", file=file, tensor=name) from None
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def convert_tensor(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...], *, name: str = "", file: Any = None):
    """One GGUF tensor -> `QArray` (2-D, canonical type), numpy array (dense), or exact float32.

    Args:
        raw: dense array in ``shape`` for dense types; else uint8 rows [prod(shape[:-1]), row_bytes].
        t: its GGML type.
        shape: numpy / HF shape (reversed ggml dims).
    """
    if t.dense is not None:
        return raw
    if t.name in CANONICAL and len(shape) == 2:
        return to_qarray(t, raw)
    why = "has no canonical form" if t.name not in CANONICAL else f"is {len(shape)}-D"
    warnings.warn(
        f"{file}: tensor {name!r} of type {t.name} {why}; dequantized exactly to float32 at convert time",
        stacklevel=3,
    )
    return dequantize_gguf(raw, t, shape, name=name, file=file)


def _take_rows(w, order: np.ndarray):
    if isinstance(w, QArray):
        return w.replace(
            data=np.ascontiguousarray(w.data[order]),
            scale=np.ascontiguousarray(w.scale[order]),
            zero=None if w.zero is None else np.ascontiguousarray(w.zero[order]),
        )
    return np.ascontiguousarray(np.asarray(w)[order])


def _interleave_rows(parts, raw: RawTensor):
    """gpt-oss' HF ``gate_up_proj`` of one expert from its GGUF gate and up halves: rows g0, u0, g1, u1...

    Raises:
        UnsupportedFormatError: halves of different types / blocks (they cannot share one tensor).
    """
    gate, up = parts
    why = why_not_concat(parts)  # QArrays of one type and block, or dense arrays of one dtype (biases: 1-D)
    if why or np.shape(gate)[0] != np.shape(up)[0]:
        raise UnsupportedFormatError(
            f"gate and up expert halves do not interleave into one gate_up_proj: {why or 'row counts differ'}",
            file=raw.file,
            tensor=raw.name,
        )
    n = np.shape(gate)[0]
    order = np.arange(2 * n).reshape(2, n).T.reshape(-1)  # [0, n, 1, n + 1, ...]
    if isinstance(gate, QArray):
        return _take_rows(concat_rows(parts), order)
    return np.ascontiguousarray(np.concatenate([np.asarray(gate), np.asarray(up)])[order])


class GGUF(Format, name="gguf"):
    """llama.cpp GGUF files (see the module docstring).

    Attributes:
        spec: the architecture.
        config: the HF-style config derived from the metadata.
    """

    quant_methods = ()  # detected by file magic in `jquant.convert`, never by an HF quantization_config

    def __init__(self, spec: ArchSpec, config: dict[str, Any], file: Any = None):
        self.spec, self.config, self.file = spec, config, file

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        tensor_names: Collection[str],
        *,
        rope_freqs: np.ndarray | None = None,
        file: Any = None,
    ) -> GGUF:
        """Builds the format (and the HF config) from a file's metadata.

        Args:
            metadata: key -> value.
            tensor_names: GGUF tensor names in the file.
            rope_freqs: the file's ``rope_freqs.weight`` (float32 [head_dim / 2]) if it has one:
                Llama-3.1 rope scaling, turned back into ``config["rope_scaling"]``.
            file: for error messages.
        """
        config = hf_config(metadata, tensor_names, file=file)
        if rope_freqs is not None and config.get("rope_scaling") is None:
            scaling = llama3_rope_scaling(rope_freqs, config["rope_theta"], config["head_dim"])
            if scaling is None:
                warnings.warn(
                    f"{file}: rope_freqs.weight does not match Llama-3 rope scaling; it is kept in "
                    "Checkpoint.metadata['rope_freqs'] and config['rope_scaling'] is left unset",
                    stacklevel=2,
                )
            config["rope_scaling"] = scaling
        return cls(arch_spec(metadata, file=file), config, file)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> GGUF:
        """From an HF config already derived from GGUF metadata (``model_type`` picks the arch)."""
        mt = config.get("model_type")
        spec = next((s for s in (*ARCHS.values(), MIXTRAL) if s.model_type == mt), None)
        if spec is None:
            raise UnsupportedFormatError(f"model_type {mt!r} has no GGUF mapping; supported: {sorted(ARCHS)}")
        return cls(spec, dict(config))

    def convert_module(self, group: TensorGroup) -> dict[str, QArray | np.ndarray]:
        """Converts one HF module's GGUF tensors; ``group[suffix]`` is a `RawTensor`."""
        base, _, proj = group.prefix.rpartition(".experts.")
        if proj in self.spec.expert_projs and "." not in proj:
            return self.convert_experts(group, f"{base}.experts", proj)
        out = {group.full_name(suffix): self.convert_one(group[suffix]) for suffix in group}
        gate = group.full_name("weight")
        if group.prefix.endswith(".shared_expert_gate") and getattr(out.get(gate), "ndim", 0) == 1:
            out[gate] = out[gate].reshape(1, -1)  # llama.cpp may store the [1, hidden] gate as 1-D
        return out

    def convert_experts(self, group: TensorGroup, prefix: str, proj: str) -> dict[str, QArray | np.ndarray]:
        """``ffn_<proj>_exps.weight`` [E, N, K] -> ``<prefix>.{e}.<proj>.weight`` [N, K] per expert.

        gpt-oss (``spec.gate_up_interleaved``) also has 2-D biases ``ffn_<proj>_exps.bias`` [E, N]
        (-> ``.bias`` [N] per expert), and its gate / up halves arrive as suffixes ``gate_weight`` /
        ``up_weight`` (``gate_bias`` / ``up_bias``) of one ``gate_up_proj`` group: per expert they
        are concatenated and their rows interleaved (gate row i -> row 2i, up row i -> row 2i + 1),
        a row gather of whole GGML blocks, so lossless.

        Raises:
            FormatError: anything but 3-D weights (and 2-D biases where allowed), or a missing half,
                naming the tensor.
            UnsupportedFormatError: gate and up halves whose types do not concatenate.
        """
        fused = self.spec.gate_up_interleaved and proj == self.spec.expert_projs[0]
        halves = ("gate_", "up_") if fused else ("",)
        leaves = ("weight", "bias") if self.spec.gate_up_interleaved else ("weight",)
        allowed = {f"{h}{leaf}": 2 if leaf == "bias" else 3 for h in halves for leaf in leaves}
        for suffix in group:
            raw = group[suffix]
            if allowed.get(suffix) != len(raw.shape):
                what = "one 3-D expert weight [E, N, K]" + (" and 2-D biases [E, N]" if len(leaves) == 2 else "")
                raise FormatError(
                    f"expected {what}, got {suffix} of shape {list(raw.shape)}", file=raw.file, tensor=raw.name
                )
        for h in halves:
            if f"{h}weight" not in group:
                other = group[next(iter(group))]
                what = f"ffn_{h.rstrip('_')}_exps.weight" if h else "the expert weight"
                raise FormatError(f"{what} is missing next to this tensor", file=other.file, tensor=other.name)
        per = {suffix: self._split_experts(group[suffix]) for suffix in group}
        counts = {suffix: len(v) for suffix, v in per.items()}
        if len(set(counts.values())) != 1:
            raw = group[next(iter(group))]
            raise FormatError(f"expert counts differ within one projection: {counts}", file=raw.file, tensor=raw.name)
        e = len(next(iter(per.values())))
        out = {}
        for j in range(e):
            for leaf in leaves:
                parts = [per[f"{h}{leaf}"][j] for h in halves if f"{h}{leaf}" in per]
                if not parts:
                    continue
                raw = group[next(f"{h}{leaf}" for h in halves if f"{h}{leaf}" in per)]
                name = f"{prefix}.{j}.{proj}.{leaf}"
                w = parts[0] if len(parts) == 1 else _interleave_rows(parts, raw)
                if isinstance(w, QArray):
                    try:
                        w.validate(name)
                    except FormatError as err:
                        raise type(err)(
                            f"expert {j}: {err.problem} ({raw.type.name})", file=raw.file, tensor=raw.name
                        ) from None
                out[name] = w
        return out

    @staticmethod
    def _split_experts(raw: RawTensor) -> list:
        """The E per-expert values of a 3-D expert weight (`QArray` for canonical types) or a 2-D bias."""
        e = raw.shape[0]
        if len(raw.shape) == 3 and raw.type.dense is None and raw.type.name in CANONICAL:
            rows = np.asarray(raw.data).reshape(e, raw.shape[1], -1)
            return [to_qarray(raw.type, rows[j]) for j in range(e)]
        # dense, or dequantized exactly as a whole (with convert_tensor's warning), then sliced
        whole = convert_tensor(raw.data, raw.type, raw.shape, name=raw.name, file=raw.file)
        return [np.asarray(whole)[j] for j in range(e)]

    def convert_one(self, raw: RawTensor):
        """One `RawTensor` -> HF-oriented value, Q/K rows in HF order, `QArray`s validated."""
        w = convert_tensor(raw.data, raw.type, raw.shape, name=raw.name, file=raw.file)
        order = qk_row_order(raw.name, raw.shape[0], self.config, self.spec)
        if order is not None:
            w = _take_rows(w, order)
        if isinstance(w, QArray):
            try:
                w.validate(raw.name)
            except FormatError as e:
                raise type(e)(f"{e.problem} ({raw.type.name})", file=raw.file, tensor=raw.name) from None
        return w

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "architecture": self.spec.arch}
