"""`QuantLinear`: ``nnx.Linear``'s twin whose weight is a `QArray` (or a dense array), through `qmatmul`.

The weight keeps the HF orientation [out_features, in_features] (the canonical `QArray`
orientation), unlike ``nnx.Linear``'s [in, out] kernel: a quantized weight is never transposed or
repacked here, and dense weights use the same orientation so that both run through
`jquant.ops.qmatmul`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError
from jquant.core.qarray import QArray
from jquant.ops import qmatmul

__all__ = ["QParam", "ActQuantParam", "QuantLinear", "weight_shape", "LayerOf", "split_layer_weights", "at_layer"]


class QParam(nnx.Param):
    """A parameter holding a `QArray` pytree (or a dense array): a quantized weight.

    Read it with ``get_value()`` (``param[...]`` indexes arrays and does not apply to a `QArray`).
    A separate Variable type lets optimizers and ``nnx.state(model, QParam)`` tell quantized
    weights from trainable float ones (the pattern of ``nnx.LoRAParam``).
    """


class ActQuantParam(nnx.Variable):
    """A layer's input-activation quantization recipe (`ActQuant` pytree: static scales are its leaves)."""


@dataclasses.dataclass(frozen=True)
class LayerOf:
    """Layer ``index`` of a weight stacked along a leading layer axis: what a `QuantLinear` of a
    scanned model holds inside the ``lax.scan`` body (`at_layer`), so that `qmatmul` gets the whole
    stack and the index, and a backend that reads stacked weights in place (``reads_stacked``) needs
    no per-layer copy of them.

    Attributes:
        stacked: a `QArray` whose arrays carry a leading layer axis [L, ...] (logical shape (N, K)
            per layer), or a dense [L, N, K] array.
        index: int32 scalar (traced under the scan), the layer.
    """

    stacked: Any
    index: Any


jax.tree_util.register_dataclass(LayerOf, data_fields=["stacked", "index"], meta_fields=[])


def split_layer_weights(stacked_module: nnx.Module):
    """Splits a layer-stacked module into ``(graphdef, weights, rest)``: ``weights`` is the state of
    every `QuantLinear`'s weight (kept whole: pass it to the scan body by closure and `at_layer`),
    ``rest`` everything else (sliced by the scan as usual, like expert stacks and norms)."""
    paths = {tuple(p) + ("weight",) for p, m in nnx.iter_graph(stacked_module) if isinstance(m, QuantLinear)}
    return nnx.split(stacked_module, lambda path, _: tuple(path) in paths, ...)


def at_layer(weights, index):
    """``weights`` (from `split_layer_weights`) with every weight wrapped as ``LayerOf(stacked, index)``."""
    return jax.tree.map(lambda v: LayerOf(v, index), weights, is_leaf=lambda v: isinstance(v, QArray))


def weight_shape(w: QArray | jax.Array) -> tuple[int, int]:
    """Logical (N, K) of a `QArray` or a dense [N, K] array."""
    return tuple(w.shape)  # QArray.shape is the logical shape


class QuantLinear(nnx.Module):
    """A linear layer ``y = x @ W.T + b`` whose ``W`` [out, in] may be quantized.

    Example::

        >>> layer = QuantLinear(256, 512, weight=qarray, rngs=None)   # from a checkpoint
        >>> layer = QuantLinear(256, 512, rngs=nnx.Rngs(0))           # dense, lecun-normal init
        >>> y = layer(x)                                               # [..., 256] -> [..., 512]

    Args:
        in_features: K.
        out_features: N.
        use_bias: whether to add a bias (zeros unless ``bias`` is given).
        dtype: compute / result dtype; activations are cast to it (default: ``x.dtype``).
        rngs: initializes a dense weight when ``weight`` is None.
        implementation: force a `qmatmul` backend by name (None: the dispatcher picks).
        weight: a `QArray` of shape (out, in) with JAX arrays, or a dense [out, in] array.
        bias: optional [out] array (implies ``use_bias``).
        input_quant: optional `ActQuant` of W8A8 / FP8 / FP4 checkpoints: the activations are
            quantized at run time, inside a fused W8A8 kernel where one applies, else by one XLA
            fake-quantization pass before a weight-only kernel (`jquant.ops.qmatmul`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = False,
        dtype=None,
        rngs: nnx.Rngs | None = None,
        implementation: str | None = None,
        weight: QArray | jax.Array | None = None,
        bias: jax.Array | None = None,
        input_quant: ActQuant | None = None,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.implementation = implementation
        self.input_quant = nnx.data(None) if input_quant is None else ActQuantParam(input_quant)
        if weight is None:
            if rngs is None:
                raise ConfigError("QuantLinear needs either `weight` or `rngs` to initialize one")
            init = nnx.initializers.lecun_normal(in_axis=1, out_axis=0)
            weight = init(rngs.params(), (out_features, in_features), dtype or jnp.float32)
        if weight_shape(weight) != (out_features, in_features):
            raise ConfigError(f"weight shape {weight_shape(weight)} != (out, in) = ({out_features}, {in_features})")
        self.weight = QParam(weight)
        self.bias: nnx.Param[jax.Array] | None
        if bias is not None or use_bias:
            bias = jnp.zeros((out_features,), dtype or jnp.float32) if bias is None else bias
            if tuple(bias.shape) != (out_features,):
                raise ConfigError(f"bias shape {tuple(bias.shape)} != ({out_features},)")
            self.bias = nnx.Param(bias)
        else:
            self.bias = nnx.data(None)

    @property
    def quantized(self) -> bool:
        w = self.weight.get_value()
        return isinstance(w.stacked if isinstance(w, LayerOf) else w, QArray)

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., in_features] -> [..., out_features] in ``dtype`` (or ``x.dtype``)."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        act = None if self.input_quant is None else self.input_quant.get_value()
        w, layer = self.weight.get_value(), None
        if isinstance(w, LayerOf):  # a scanned model's layer: the stacked weight and the index
            w, layer = w.stacked, w.index
        y = qmatmul(x, w, act, implementation=self.implementation, layer=layer)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y
