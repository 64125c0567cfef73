"""`QArray`: the one canonical quantized tensor every format converts into and every kernel reads.

Invariant (the spec every kernel is tested against, implemented by `jquant.core.dequantize`)::

    v[n, j]  = value(qtype, code[n, j])                     # code from `data`, column j
    s[n, j]  = scale[n // bn, j // bk] (* scale2)           # f32; (bn, bk) = block
    w'[n, j] = (v - zero[n // bn, j // bk]) * s             # integer zero points (GPTQ/AWQ asym)
             = v * s - zero[n // bn, j // bk]               # float zero = offset (GGUF mins, Q4_1)
             = v * s                                        # no zero
    W[:, perm[j]] = w'[:, j]   (W = w' when perm is None)   # W: HF orientation [N, K]

The float-zero form is only bit-reproducible across backends when ``v * s`` is exact in f32
(compilers fuse ``v*s - z`` into an FMA); the formats that use it (GGUF K-quant mins, Q4_1/Q5_1)
have fp16 x small-int products that are.

``x @ W.T == x[..., perm] @ w'.T``: act-order checkpoints keep their groups contiguous in
``data`` and the matmul permutes the activations instead of the weights.

Arrays may be numpy (host, from `jquant.convert`) or JAX (device). On the JAX side `QArray` is a
pytree whose leaves are the arrays and whose static aux data are ``qtype``, ``shape``, ``block``
and ``layout_version`` (registered lazily by `register_pytree`, so that this module imports no JAX).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from jquant.core.errors import FormatError
from jquant.core.qtypes import QType

__all__ = ["QArray", "ARRAY_FIELDS", "LAYOUT_VERSION", "block_for", "register_pytree"]

# Bump when the meaning of any field changes; `jquant.convert` refuses canonical files of another version.
LAYOUT_VERSION = 1
ARRAY_FIELDS = ("data", "scale", "zero", "perm", "scale2")  # the array fields, in pytree order

_FLOAT_SCALE_DTYPES = {"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e8m0fnu", "float8_e5m2"}


@dataclasses.dataclass(frozen=True, eq=False)
class QArray:
    """A quantized 2-D weight in canonical layout.

    Attributes:
        data: codes in orientation [N, K]. Sub-byte codes packed along K into uint8
            [N, K * c / 8] (c = ``qtype.container_bits``, lowest bits first, `jquant.core.packing`);
            8-bit codes as uint8 / int8 / float8 [N, K].
        scale: float array [ceil(N / bn), ceil(K / bk)]: f32, f16, bf16, or the source's own
            fp8 / e8m0 scale dtype (MX/NV formats keep theirs).
        zero: None, or an array of the scale's shape: unsigned integer codes (``w = s*(v - z)``)
            or floats (``w = v*s - z``).
        perm: None, or int32 [K]: column j of ``data`` holds input channel ``perm[j]``.
        scale2: None, or a float32 array of shape (1, 1): a second, per-tensor scale factor
            multiplied into the block scale (``s = scale * scale2``; NVFP4's global scale).
        qtype: what a code means (static).
        shape: logical (N, K) (static).
        block: (bn, bk), the number of rows and columns one scale entry covers (static):
            per-tensor (N, K), per-channel (1, K), group (1, G), 2-D block e.g. (128, 128).
        layout_version: `LAYOUT_VERSION` of the canonical layout (static).
    """

    data: Any
    scale: Any
    zero: Any = None
    perm: Any = None
    scale2: Any = None
    qtype: QType = None  # type: ignore[assignment]
    shape: tuple[int, int] = (0, 0)
    block: tuple[int, int] = (1, 1)
    layout_version: int = LAYOUT_VERSION

    # ---- derived geometry -------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def k(self) -> int:
        return self.shape[1]

    @property
    def scale_shape(self) -> tuple[int, int]:
        return (-(-self.shape[0] // self.block[0]), -(-self.shape[1] // self.block[1]))

    @property
    def group_size(self) -> int | None:
        """Columns per scale along K when each scale covers one row (group / per-channel), else None."""
        return self.block[1] if self.block[0] == 1 else None

    @property
    def nbytes(self) -> int:
        """Bytes of every array held (codes, scales, zeros, perm)."""
        return sum(int(a.size) * np.dtype(a.dtype).itemsize for a in self.arrays().values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def arrays(self) -> dict[str, Any]:
        """The non-None array fields by name."""
        return {f: getattr(self, f) for f in ARRAY_FIELDS if getattr(self, f) is not None}

    def replace(self, **changes) -> QArray:
        return dataclasses.replace(self, **changes)

    # ---- validation -------------------------------------------------------------------
    def validate(self, name: str | None = None) -> QArray:
        """Checks every shape and dtype against the static description; returns self.

        Raises:
            FormatError: naming ``name`` and the field at fault. NaN / inf scales are refused
                here too, so a bad checkpoint can never dequantize to a wrong answer.
        """

        def fail(msg):
            raise FormatError(msg, tensor=name)

        if not isinstance(self.qtype, QType):
            fail(f"qtype must be a QType, got {self.qtype!r}")
        if self.layout_version != LAYOUT_VERSION:
            fail(f"layout_version {self.layout_version} but this jquant reads {LAYOUT_VERSION}")
        if not all(
            isinstance(t, tuple) and len(t) == 2 and all(isinstance(v, int | np.integer) for v in t)
            for t in (self.shape, self.block)
        ):
            fail(f"shape {self.shape!r} and block {self.block!r} must be pairs of integers")
        n, k = self.shape
        if n <= 0 or k <= 0:
            fail(f"bad logical shape {self.shape}")
        bn, bk = self.block
        if bn <= 0 or bk <= 0:
            fail(f"bad block {self.block}")
        q = self.qtype
        per = q.codes_per_byte
        if k % per:
            fail(f"K={k} is not a multiple of {per} ({q.container_bits}-bit codes per byte)")
        want = (n, k // per)
        if tuple(self.data.shape) != want:
            fail(f"data shape {tuple(self.data.shape)} != {want} for shape {self.shape} and qtype {q.name}")
        if np.dtype(self.data.dtype) != q.storage_dtype:
            fail(f"data dtype {self.data.dtype} != {q.storage_dtype} for qtype {q.name}")
        if tuple(self.scale.shape) != self.scale_shape:
            fail(
                f"scale shape {tuple(self.scale.shape)} != {self.scale_shape} for shape {self.shape}, block {self.block}"
            )
        if np.dtype(self.scale.dtype).name not in _FLOAT_SCALE_DTYPES:
            fail(f"scale dtype {self.scale.dtype} is not a float type")
        if self.zero is not None:
            if tuple(self.zero.shape) != self.scale_shape:
                fail(f"zero shape {tuple(self.zero.shape)} != scale shape {self.scale_shape}")
            zk = np.dtype(self.zero.dtype).kind
            if zk not in "uf" and np.dtype(self.zero.dtype).name != "bfloat16":
                fail(f"zero dtype {self.zero.dtype} must be unsigned int or float")
        if self.perm is not None:
            if tuple(self.perm.shape) != (k,) or np.dtype(self.perm.dtype) != np.int32:
                fail(f"perm must be int32 [{k}], got {self.perm.dtype} {tuple(self.perm.shape)}")
        if self.scale2 is not None and (
            tuple(self.scale2.shape) != (1, 1) or np.dtype(self.scale2.dtype) != np.float32
        ):
            fail(f"scale2 must be float32 (1, 1), got {self.scale2.dtype} {tuple(self.scale2.shape)}")
        if isinstance(self.scale, np.ndarray):  # host-side content checks (skipped for traced arrays)
            s = self.scale.astype(np.float32)
            if not np.isfinite(s).all():
                bad = np.argwhere(~np.isfinite(s))[0]
                fail(f"non-finite scale {s[tuple(bad)]} at block {tuple(int(i) for i in bad)}")
            if self.scale2 is not None and not np.isfinite(self.scale2).all():
                fail(f"non-finite scale2 {self.scale2.ravel()[0]}")
            if self.perm is not None and not np.array_equal(np.sort(self.perm), np.arange(k, dtype=np.int32)):
                fail("perm is not a permutation of range(K)")
            if self.zero is not None and np.dtype(self.zero.dtype).kind == "u" and self.zero.size:
                if int(self.zero.max()) >> q.bits:
                    fail(f"zero point {int(self.zero.max())} does not fit {q.bits} bits")
            elif self.zero is not None and isinstance(self.zero, np.ndarray):  # float zeros (offsets)
                z = self.zero.astype(np.float32)
                if not np.isfinite(z).all():
                    bad = np.argwhere(~np.isfinite(z))[0]
                    fail(f"non-finite zero {z[tuple(bad)]} at block {tuple(int(i) for i in bad)}")
        return self

    # ---- metadata (for the canonical file format) --------------------------------------
    def static_json(self) -> dict:
        return {
            "qtype": self.qtype.to_json(),
            "shape": list(self.shape),
            "block": list(self.block),
            "layout_version": self.layout_version,
        }

    def __repr__(self) -> str:
        extra = "".join(f", {f}" for f in ("zero", "perm", "scale2") if getattr(self, f) is not None)
        return (
            f"QArray({self.qtype.name}, shape={self.shape}, block={self.block}, "
            f"scale={np.dtype(self.scale.dtype).name}{list(self.scale.shape)}{extra})"
        )


def block_for(n: int, k: int, *, group_size: int | None = None, per: str = "group") -> tuple[int, int]:
    """The ``block`` of a common scale granularity.

    Args:
        n, k: logical shape.
        group_size: columns per scale for ``per="group"``; -1 or None means per-channel.
        per: "tensor", "channel", "group".
    """
    if per == "tensor":
        return (n, k)
    if per == "channel" or group_size in (None, -1) or group_size >= k:
        return (1, k)
    return (1, int(group_size))


def register_pytree() -> None:
    """Registers `QArray` as a JAX pytree (idempotent). Called by every JAX-side module."""
    import jax

    if getattr(register_pytree, "_done", False):
        return
    jax.tree_util.register_dataclass(
        QArray,
        data_fields=list(ARRAY_FIELDS),
        meta_fields=["qtype", "shape", "block", "layout_version"],
    )
    register_pytree._done = True


# If JAX is already loaded, make QArray a pytree right away (no import of JAX is triggered here).
if sys.modules.get("jax") is not None:
    register_pytree()
