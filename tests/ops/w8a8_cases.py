"""W8A8 test cases shared by the XLA and Pallas W8A8 tests: weights built as the converters build them.

* fp8 per-tensor (`jquant.formats.fp8`, ``strategy="tensor"``): float8_e4m3fn [N, K], f32 scale
  [1, 1], block (N, K); with a static or dynamic per-tensor fp8 activation scale.
* fp8 per-channel (compressed-tensors ``float-quantized`` channel): scale [N, 1], block (1, K).
* fp8 128x128 blocks (DeepSeek-V3 / ``weight_scale_inv``): f32 (or ue8m0) scales
  [ceil(N/128), ceil(K/128)], activations per 1x128 group.
* int8 per-channel (compressed-tensors W8A8 int, symmetric): int8 codes, scale [N, 1].
* uint8b128: 8-bit signed values stored unsigned with bias 128.

Codes are random bytes (fp8: every finite byte pattern, NaN bytes replaced), never zeros.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jquant.core.activation import ActQuant, fp8_act, int8_act
from jquant.core.qarray import QArray, block_for
from jquant.core.qtypes import fp8_e4m3, int8, uint8b128
from jquant.ops.act_quant import fake_quantize
from tests.pallas.helpers import assert_close

__all__ = [
    "WCase",
    "WEIGHTS",
    "WEIGHTS_BY_NAME",
    "ACTS",
    "make_w8",
    "make_x",
    "to_device",
    "check_against_spec",
    "reconstruct",
]


@dataclasses.dataclass(frozen=True)
class WCase:
    """One weight + activation recipe."""

    name: str
    codes: str  # "fp8", "int8", "uint8b128"
    per: str  # "tensor", "channel", "block128", "group128"
    act: str  # key of ACTS
    scale_dtype: str = "float32"
    scale2: bool = False
    perm: bool = False


def _static(v):
    return np.array([v], np.float32)


ACTS: dict[str, ActQuant] = {
    "fp8-token": fp8_act(dynamic=True),
    "fp8-token-ub": fp8_act(dynamic=True, amax_ub=2.0),
    "fp8-tensor": fp8_act(dynamic=True, granularity="tensor"),
    "fp8-static": fp8_act(dynamic=False, granularity="tensor", scale=_static(0.011)),
    "fp8-group128": fp8_act(dynamic=True, granularity="group", group_size=128),
    "fp8-group64": fp8_act(dynamic=True, granularity="group", group_size=64),
    "int8-token": int8_act(dynamic=True),
    "int8-token-half": ActQuant(int8, True, "token", scale_rule="half_range").validate(),
    "int8-static": int8_act(dynamic=False, granularity="tensor", scale=_static(0.025)),
}

WEIGHTS: tuple[WCase, ...] = (
    WCase("fp8-tensor-static", "fp8", "tensor", "fp8-static"),
    WCase("fp8-tensor-dyn", "fp8", "tensor", "fp8-tensor"),
    WCase("fp8-channel-bf16", "fp8", "channel", "fp8-token", scale_dtype="bfloat16"),
    WCase("fp8-block128", "fp8", "block128", "fp8-group128"),
    WCase("fp8-block128-e8m0-token", "fp8", "block128", "fp8-token-ub", scale_dtype="float8_e8m0fnu"),
    WCase("fp8-channel-scale2", "fp8", "channel", "fp8-token", scale2=True),
    WCase("int8-channel", "int8", "channel", "int8-token", scale_dtype="float16"),
    WCase("int8-channel-perm", "int8", "channel", "int8-token-half", perm=True),
    WCase("int8-group128-static", "int8", "group128", "int8-static"),
    WCase("uint8b128-channel", "uint8b128", "channel", "int8-token"),
)
WEIGHTS_BY_NAME = {c.name: c for c in WEIGHTS}


def make_w8(rng, n: int, k: int, case: WCase) -> QArray:
    """A random canonical 8-bit QArray (numpy) for ``case``, validated."""
    if case.codes == "fp8":
        b = rng.integers(0, 256, (n, k), dtype=np.uint8)
        b[(b & 0x7F) == 0x7F] = 0x38  # the two NaN bytes -> 1.0
        data, qt, vmax = b.view(ml_dtypes.float8_e4m3fn), fp8_e4m3, 448.0
    elif case.codes == "int8":
        data, qt, vmax = rng.integers(-128, 128, (n, k), dtype=np.int8), int8, 128.0
    else:
        data, qt, vmax = rng.integers(0, 256, (n, k), dtype=np.uint8), uint8b128, 128.0
    if case.per == "block128":
        block = (128, 128)
    elif case.per == "group128":
        block = block_for(n, k, group_size=128)
    else:
        block = block_for(n, k, per=case.per)
    sn, sk = -(-n // block[0]), -(-k // block[1])
    if case.scale_dtype == "float8_e8m0fnu":  # ue8m0 checkpoints: powers of two
        scale = (2.0 ** rng.integers(-12, -6, (sn, sk))).astype(ml_dtypes.float8_e8m0fnu)
    else:
        scale = ((rng.random((sn, sk)) + 0.25) / vmax).astype(
            np.dtype(getattr(ml_dtypes, case.scale_dtype, None) or case.scale_dtype)
        )
    scale2 = np.array([[0.625]], np.float32) if case.scale2 else None
    perm = rng.permutation(k).astype(np.int32) if case.perm else None
    w = QArray(data=data, scale=scale, perm=perm, scale2=scale2, qtype=qt, shape=(n, k), block=block)
    return w.validate(case.name)


def make_x(rng, shape, dtype=jnp.bfloat16) -> jax.Array:
    """Activations with rows of different magnitudes, one all-zero row and one outlier column."""
    x = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.2, 3.0, (*shape[:-1], 1)).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    if flat.shape[0] > 2:
        flat[1] = 0.0  # an all-zero token: scale 1, codes 0
        flat[2, 3] = 40.0  # an outlier (clipped by amax_ub / static scales)
    return jnp.asarray(x, dtype)


def to_device(w: QArray) -> QArray:
    return jax.tree_util.tree_map(jnp.asarray, w)


def reconstruct(codes, scales) -> jax.Array:
    """``codes * scales`` in f32, each scale broadcast over its unit of K columns: [..., K]."""
    k, u = codes.shape[-1], scales.shape[-1]
    c = codes.astype(jnp.float32).reshape(*codes.shape[:-1], u, k // u)
    return (c * scales[..., None]).reshape(codes.shape)


def check_against_spec(y, x, w: QArray, act: ActQuant, *, what: str = ""):
    """``y`` == ``reference_qmatmul(fake_quantize(x, act), w)`` within the sqrt(K)-scaled tolerance."""
    fq = np.asarray(jax.jit(fake_quantize)(x, act).astype(jnp.float32)).reshape(-1, x.shape[-1])
    y2 = np.asarray(jnp.asarray(y).astype(jnp.float32)).reshape(fq.shape[0], -1)
    assert_close(y2, fq, w, what=what)
