"""`Weights`: a checkpoint's tensors by HF name, placed on device for the Flax modules.

Quantized weights (`QArray`) move to the device as they are (codes, scales and zeros keep their
dtypes: a 4-bit weight stays 4-bit); float tensors are cast to the model's dtype. Nothing is ever
dequantized here. Every name handed out is recorded, so that model builders can report tensors
they did not use (a mapping bug would otherwise silently drop a weight).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.activation import register_pytree as register_act_pytree
from jquant.core.errors import FormatError
from jquant.core.qarray import QArray, register_pytree
from jquant.nn.embed import QuantEmbed
from jquant.nn.linear import QuantLinear
from jquant.nn.norm import RMSNorm

__all__ = ["Weights", "to_device", "to_device_tree", "stack_to_device"]

register_pytree()
register_act_pytree()


def to_device(w: QArray | ActQuant | np.ndarray, dtype, device=None) -> QArray | ActQuant | jax.Array:
    """A `QArray` / `ActQuant` as a pytree of device arrays (dtypes kept), or a float array cast to ``dtype``."""
    if isinstance(w, (QArray, ActQuant)):
        return jax.device_put(w, device)
    if isinstance(w, jax.Array):  # already on a device (e.g. stacked at load): no host round trip
        w = w.astype(dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w
        return w if device is None else jax.device_put(w, device)
    a = np.asarray(w)
    if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16":
        return jax.device_put(jnp.asarray(a, dtype=dtype), device)
    return jax.device_put(a, device)


def to_device_tree(tree):
    """``tree`` with every numpy leaf moved to the default device, dtype kept (`Weights.defer_quantized`)."""
    return jax.tree.map(lambda a: jax.device_put(a) if isinstance(a, np.ndarray) else a, tree)


def stack_to_device(arrays: list, consume: bool = False) -> jax.Array:
    """``jnp.stack(arrays)`` [L, *shape] (same dtype), with host (numpy) inputs copied only once.

    Host inputs are written into one 64-byte-aligned host buffer, which the CPU backend adopts
    without a copy (PJRT's zero-copy ``device_put`` of aligned host buffers; checked on jax 0.10.2:
    the device array's ``unsafe_buffer_pointer`` is the numpy buffer's), and another backend copies
    once. ``jnp.stack`` of numpy arrays would copy each to the device and then again into the
    stack. ``consume=True`` sets each list entry to None once copied (the caller's list must hold
    the last references for that to free anything). Device inputs take ``jnp.stack``.
    """
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return jnp.stack(arrays)
    shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    off = -raw.ctypes.data % 64
    out = raw[off : off + nbytes].view(dtype).reshape(shape)
    for i in range(len(arrays)):
        out[i] = arrays[i]
        if consume:
            arrays[i] = None
    return jax.device_put(out)


class Weights:
    """Lookup of a checkpoint's tensors by HF name, building jquant.nn modules.

    Args:
        weights: HF name -> `QArray` | np.ndarray (``Checkpoint.weights``).
        dtype: compute dtype of the model; float tensors are cast to it.
        source: where the weights came from, for error messages.

    A linear layer's input-activation recipe (`ActQuant`, W8A8-style checkpoints) is read from
    ``<prefix>.input_quant`` when the checkpoint has one.

    ``defer_quantized`` (set by a model builder, default False): `get` and `fused_linear` hand out
    quantized weights as the host `QArray` (numpy fields, the checkpoint's own arrays; no copy)
    instead of device arrays; the builder must then move them (`to_device_tree`) or stack them
    straight onto the device (`jquant.models.llama`: the scanned layers' weights reach the device
    once, stacked, instead of per layer and then again stacked). Subclasses that place weights
    themselves (`jquant.parallel.ShardedWeights`) ignore it.
    """

    def __init__(
        self,
        weights: Mapping[str, QArray | np.ndarray],
        dtype,
        *,
        source: object = None,
    ):
        self._weights = weights
        self.dtype = dtype
        self.source = source
        self.used: set[str] = set()
        self.defer_quantized = False

    def __contains__(self, name: str) -> bool:
        return name in self._weights

    def raw(self, name: str) -> QArray | np.ndarray:
        """The host tensor ``name`` (marked used); FormatError naming it when absent."""
        if name not in self._weights:
            raise FormatError("tensor missing from the checkpoint", file=self.source, tensor=name)
        self.used.add(name)
        return self._weights[name]

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> QArray | jax.Array:
        """Tensor ``name`` on device; checks its (logical) shape when ``shape`` is given."""
        w = self.raw(name)
        if shape is not None and tuple(w.shape) != tuple(shape):
            raise FormatError(f"shape {tuple(w.shape)}, expected {tuple(shape)}", file=self.source, tensor=name)
        if self.defer_quantized and isinstance(w, QArray):
            return w
        return to_device(w, self.dtype)

    def linear(self, prefix: str, in_features: int, out_features: int, *, implementation=None) -> QuantLinear:
        """``<prefix>.weight`` [out, in] (+ ``<prefix>.bias`` when present) as a `QuantLinear`."""
        bias_name = f"{prefix}.bias"
        return QuantLinear(
            in_features,
            out_features,
            dtype=self.dtype,
            implementation=implementation,
            weight=self.get(f"{prefix}.weight", (out_features, in_features)),
            bias=self.get(bias_name, (out_features,)) if bias_name in self else None,
            input_quant=self.get(f"{prefix}.input_quant") if f"{prefix}.input_quant" in self else None,
        )

    def fused_linear(
        self, prefixes: list[str], in_features: int, out_features: list[int], *, implementation=None
    ) -> QuantLinear | None:
        """One `QuantLinear` over ``<prefix>.weight`` of every prefix stacked along N, or None.

        For projections that read the same input (q/k/v, gate/up): one matmul instead of several.
        Returns None (and marks nothing used) when the weights do not stack losslessly
        (`jquant.core.concat.why_not_concat`: different code types, per-tensor scales, different
        act-order permutations, ...), when only some have a bias, or when any has an
        input-activation recipe; the caller then builds the linears one by one.
        """
        from jquant.core.concat import concat_rows, why_not_concat

        names = [f"{p}.weight" for p in prefixes]
        if any(n not in self for n in names):
            return None
        acts = [self._weights.get(f"{p}.input_quant") for p in prefixes]
        if not _one_recipe(acts):
            return None
        biases = [f"{p}.bias" in self for p in prefixes]
        if any(biases) and not all(biases):
            return None
        raw = [self._weights[n] for n in names]
        for n, w, out in zip(names, raw, out_features):
            if tuple(w.shape) != (out, in_features):
                raise FormatError(f"shape {tuple(w.shape)}, expected {(out, in_features)}", file=self.source, tensor=n)
        if why_not_concat(raw):
            return None
        self.used.update(names)
        act = None if acts[0] is None else self.get(f"{prefixes[0]}.input_quant")
        self.used.update(f"{p}.input_quant" for p in prefixes if acts[0] is not None)
        weight = concat_rows(raw)
        if not (self.defer_quantized and isinstance(weight, QArray)):
            weight = to_device(weight, self.dtype)
        bias = None
        if all(biases):
            bias = jnp.concatenate([self.get(f"{p}.bias", (o,)) for p, o in zip(prefixes, out_features)])
        return QuantLinear(
            in_features,
            sum(out_features),
            dtype=self.dtype,
            implementation=implementation,
            weight=weight,
            bias=bias,
            input_quant=act,
        )

    def embed(self, name: str, num_embeddings: int, features: int, *, implementation=None) -> QuantEmbed:
        return QuantEmbed(
            num_embeddings,
            features,
            dtype=self.dtype,
            weight=self.get(name, (num_embeddings, features)),
            implementation=implementation,
        )

    def norm(self, name: str, features: int, eps: float) -> RMSNorm:
        return RMSNorm(self.get(name, (features,)), eps=eps, dtype=self.dtype)

    def unused(self) -> list[str]:
        return sorted(set(self._weights) - self.used)


def _one_recipe(acts: list) -> bool:
    """Whether projections of the same input share one activation recipe (or none), so that their
    fused matmul quantizes the input exactly as each would: equal static fields and equal arrays
    (dynamic recipes depend on the input alone; static ones on their scale values)."""
    if all(a is None for a in acts):
        return True
    if any(a is None for a in acts):
        return False
    ref = acts[0]
    return all(
        a.static_json() == ref.static_json()
        and a.arrays().keys() == ref.arrays().keys()
        and all(np.array_equal(np.asarray(a.arrays()[k]), np.asarray(ref.arrays()[k])) for k in ref.arrays())
        for a in acts[1:]
    )
