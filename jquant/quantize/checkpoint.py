"""Quantizing a whole checkpoint: which tensors, eagerly (`quantize`) or one at a time (`QuantizedWeights`).

What is quantized: every 2-D float ``<module>.weight`` except, as the producers do
(llm-compressor ``ignore=["lm_head"]`` and its ``targets="Linear"``; bitsandbytes'
``llm_int8_skip_modules``; vLLM's unquantized ``ReplicatedLinear`` routers):

* token embeddings (``embed_tokens``, ``wte``, ``word_embeddings``...; ``include_embeddings``),
* the output head ``lm_head`` (``include_lm_head``),
* MoE routers (``mlp.gate``, ``block_sparse_moe.gate``),
* anything matched by ``ignore``: a module name, a dotted prefix / suffix of one, or
  ``"re:<regex>"`` matched (``re.match``) against the module name, as llm-compressor's ``ignore``.

Norms and biases are 1-D and never quantized. Each quantized linear of a scheme with activation
quantization gets the scheme's `ActQuant` at ``<module>.input_quant``. A checkpoint that already
holds `QArray` weights is refused (`dequantized` turns one into a float checkpoint first).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from jquant.convert.checkpoint import Checkpoint
from jquant.core.activation import ActQuant
from jquant.core.dequant import dequantize
from jquant.core.errors import FormatError
from jquant.core.qarray import QArray
from jquant.quantize._common import FLOAT_DTYPES
from jquant.quantize.fp8 import quantize_fp8
from jquant.quantize.integer import quantize_int
from jquant.quantize.microfloat import quantize_fp6, quantize_mxfp4
from jquant.quantize.nf4 import quantize_nf4
from jquant.quantize.scheme import Scheme, get_scheme

__all__ = ["quantize", "quantize_weight", "QuantizedWeights", "Selection", "dequantized", "FORMAT"]

# `Checkpoint.format` of a checkpoint made by `quantize` (the source's format is kept in the metadata).
FORMAT = "jquant-quantize"
INPUT_QUANT = "input_quant"

_QUANTIZERS: dict[str, Callable[[str, np.ndarray, Any], QArray]] = {
    "fp8": quantize_fp8,
    "int": quantize_int,
    "nf4": quantize_nf4,
    "mxfp4": quantize_mxfp4,
    "fp6": quantize_fp6,
}
_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "embeddings", "embed_in", "tok_embeddings")
_ROUTERS = re.compile(r"(^|\.)(mlp|block_sparse_moe)\.gate$")


def quantize_weight(name: str, w: np.ndarray, scheme: str | Scheme) -> QArray:
    """One float weight [N, K] -> `QArray` by ``scheme``'s weight recipe (numpy; the spec the tests check).

    Raises:
        FormatError: naming ``name``: not a 2-D float weight, or a shape the recipe cannot cover.
    """
    s = get_scheme(scheme)
    return _QUANTIZERS[s.weight.kind](name, np.asarray(w), s.weight)


class Selection:
    """Which weights a scheme quantizes (see the module docstring).

    Args:
        ignore: module names / prefixes / suffixes, or ``"re:<regex>"`` patterns, left unquantized.
        include_embeddings: quantize token embeddings too.
        include_lm_head: quantize ``lm_head`` too.
    """

    def __init__(self, ignore: Sequence[str] = (), *, include_embeddings: bool = False, include_lm_head: bool = False):
        if isinstance(ignore, str):
            ignore = (ignore,)
        self.ignore = tuple(ignore)
        self.include_embeddings = include_embeddings
        self.include_lm_head = include_lm_head
        self._regexes = []
        for p in self.ignore:
            if p.startswith("re:"):
                try:
                    self._regexes.append(re.compile(p[3:]))
                except re.error as e:
                    raise FormatError(f"ignore pattern {p!r} is not a valid regular expression ({e})") from None

    def _ignored(self, module: str) -> bool:
        for p in self.ignore:
            if p.startswith("re:"):
                continue
            if module == p or module.startswith(p + ".") or module.endswith("." + p):
                return True
        return any(r.match(module) for r in self._regexes)

    def is_embedding(self, module: str) -> bool:
        return module.rpartition(".")[2] in _EMBEDDINGS

    def wants(self, name: str, value: Any) -> bool:
        """Whether tensor ``name`` (from ``Checkpoint.weights``) is quantized."""
        if not name.endswith(".weight") or not isinstance(value, np.ndarray) or value.ndim != 2:
            return False
        if np.dtype(value.dtype) not in FLOAT_DTYPES:
            return False
        module = name[: -len(".weight")]
        if self._ignored(module) or _ROUTERS.search(module):
            return False
        if self.is_embedding(module):
            return self.include_embeddings
        if module.rpartition(".")[2] == "lm_head":
            return self.include_lm_head
        return True

    def describe(self) -> dict:
        return {
            "ignore": list(self.ignore),
            "include_embeddings": self.include_embeddings,
            "include_lm_head": self.include_lm_head,
        }


def _refuse_quantized(weights: Mapping[str, Any], file=None) -> None:
    for name, v in weights.items():
        if isinstance(v, QArray):
            raise FormatError(
                f"already quantized ({v.qtype.name}); quantize float checkpoints only "
                "(jquant.quantize.dequantized(ckpt) makes a float checkpoint of a quantized one)",
                file=file,
                tensor=name,
            )


class QuantizedWeights(Mapping):
    """``Checkpoint.weights`` with the selected float weights quantized on access (streaming).

    A read-only mapping over the source weights: ``m[name]`` quantizes that one weight from the
    (memory-mapped) source when it is selected; ``m["<module>.input_quant"]`` is the scheme's
    activation recipe. Nothing is precomputed but the shape checks, so a model loader that reads
    one layer at a time never holds more than one float weight beyond the source's own pages. The
    last ``cache`` results are kept (a loader may read the same weight twice, e.g. when it tries to
    fuse q/k/v first).

    Raises (at construction):
        FormatError: a source weight that is already quantized, or a selected weight whose shape
            or dtype the scheme cannot quantize, naming it.
    """

    def __init__(
        self,
        weights: Mapping[str, Any],
        scheme: str | Scheme,
        selection: Selection | None = None,
        *,
        cache: int = 8,
        file=None,
    ):
        self.scheme = get_scheme(scheme)
        self.selection = selection or Selection()
        self._src = weights
        self._cache: OrderedDict[str, QArray] = OrderedDict()
        self._cache_size = cache
        _refuse_quantized(weights, file)
        self._selected = {n for n, v in weights.items() if self.selection.wants(n, v)}
        self._acts: dict[str, ActQuant] = {}
        if self.scheme.activation is not None:
            for n in self._selected:
                module = n[: -len(".weight")]
                if not self.selection.is_embedding(module):  # a table lookup has no input activations
                    self._acts[f"{module}.{INPUT_QUANT}"] = self.scheme.activation
        clash = sorted(set(self._acts) & set(weights))
        if clash:
            raise FormatError("the source already has an activation recipe under this name", file=file, tensor=clash[0])
        for n in sorted(self._selected):
            self._precheck(n, weights[n], file)

    def _precheck(self, name: str, w: np.ndarray, file) -> None:
        """Shape checks that need no arithmetic, so that a bad tensor fails before any work."""
        r = self.scheme.weight
        k = int(w.shape[1])
        problem = None
        if r.bits == 4 and k % 2:
            problem = f"K={k} is odd: 4-bit codes are packed two per byte along K"
        elif r.kind == "nf4" and k % int(r.group_size):
            problem = f"K={k} is not a multiple of the NF4 block size {r.group_size}"
        if problem:
            raise FormatError(f"cannot quantize with scheme {self.scheme.name!r}: {problem}", file=file, tensor=name)

    @property
    def quantized_names(self) -> list[str]:
        return sorted(self._selected)

    def __getitem__(self, name: str):
        if name in self._acts:
            return self._acts[name]
        if name not in self._selected:
            return self._src[name]
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        q = quantize_weight(name, self._src[name], self.scheme)
        if self._cache_size:
            self._cache[name] = q
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return q

    def __contains__(self, name) -> bool:
        return name in self._acts or name in self._src

    def __iter__(self) -> Iterator[str]:
        yield from self._src
        yield from self._acts

    def __len__(self) -> int:
        return len(self._src) + len(self._acts)


def quantize(
    ckpt: Checkpoint | str | os.PathLike,
    scheme: str | Scheme,
    *,
    ignore: Sequence[str] = (),
    include_embeddings: bool = False,
    include_lm_head: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Checkpoint:
    """Quantizes a float checkpoint's linear weights online (round to nearest, no calibration).

    >>> ckpt = jquant.quantize("Llama-3.2-1B/", "fp8")          # or a Checkpoint
    >>> jquant.save(ckpt, "llama-fp8/")                         # canonical folder

    Args:
        ckpt: a `Checkpoint` with float weights, or a source path for `jquant.convert`.
        scheme: a registered scheme name (`jquant.quantize.scheme_names`) or a `Scheme`.
        ignore: modules left unquantized (names, dotted prefixes / suffixes, ``"re:<regex>"``).
        include_embeddings: quantize token embeddings too (default: keep them as they are).
        include_lm_head: quantize ``lm_head`` too (default: keep it).
        progress: optional callback ``(done, total, current_name)``.

    Returns:
        a new `Checkpoint` (format ``"jquant-quantize"``) whose selected weights are validated
        `QArray` s and whose quantized linears carry the scheme's ``input_quant``; every other
        tensor is the source's own array; ``metadata["quantize"]`` records the scheme and the
        selection, ``metadata["source_format"]`` the source's format.

    Raises:
        FormatError: the source holds quantized weights, or a selected weight the scheme cannot
            quantize, naming the tensor; `UnsupportedFormatError` for an unknown scheme name.
    """
    s = get_scheme(scheme)
    if not isinstance(ckpt, Checkpoint):
        from jquant.convert import convert

        ckpt = convert(ckpt)
    src = ckpt.metadata.get("canonical_path") or ckpt.metadata.get("source")
    sel = Selection(ignore, include_embeddings=include_embeddings, include_lm_head=include_lm_head)
    lazy = QuantizedWeights(ckpt.weights, s, sel, cache=0, file=src)
    weights: dict[str, Any] = {}
    names = list(ckpt.weights)
    for i, name in enumerate(names):
        if progress is not None:
            progress(i, len(names), name)
        weights[name] = lazy[name]
        act = f"{name[: -len('.weight')]}.{INPUT_QUANT}" if name.endswith(".weight") else None
        if act is not None and act in lazy._acts:
            weights[act] = lazy[act]
    if progress is not None:
        progress(len(names), len(names), "")
    if not lazy.quantized_names:
        raise FormatError(
            f"scheme {s.name!r} found no linear weight to quantize (selection: {sel.describe()})", file=src
        )
    metadata = {
        **ckpt.metadata,
        "source_format": ckpt.format,
        "quantize": {**s.describe(), **sel.describe(), "quantized": len(lazy.quantized_names)},
    }
    metadata.pop("canonical_path", None)
    return Checkpoint(format=FORMAT, config=dict(ckpt.config), weights=weights, metadata=metadata)


def dequantized(ckpt: Checkpoint, dtype: Any = ml_dtypes.bfloat16) -> Checkpoint:
    """A float copy of a checkpoint: every `QArray` dequantized (the spec) and cast to ``dtype``.

    Activation recipes (``*.input_quant``) are dropped with the weights they belonged to; plain
    arrays are kept as they are. Useful to re-quantize a quantized model with another scheme.

    Returns:
        a `Checkpoint` with the same format name, config and metadata, holding only arrays.
    """
    weights = {}
    for name, v in ckpt.weights.items():
        if isinstance(v, ActQuant):
            continue
        weights[name] = dequantize(v).astype(dtype) if isinstance(v, QArray) else v
    return Checkpoint(format=ckpt.format, config=dict(ckpt.config), weights=weights, metadata=dict(ckpt.metadata))
