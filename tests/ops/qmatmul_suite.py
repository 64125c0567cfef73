"""A shared, parametrizable correctness suite for ``qmatmul`` backends.

Every backend (the XLA reference here, Pallas / CUDA kernels elsewhere) runs the same cases::

    from tests.ops.qmatmul_suite import CASES, check_backend

    @pytest.mark.parametrize("case", CASES, ids=str)
    def test_my_kernel(case):
        check_backend("pallas_triton_w4a16", case)   # forced: a decline fails the case

or ``check_backend(name, case, skip_unsupported=True)`` to skip the cases the backend declines
(with its reason). The oracle is numpy ``x @ dequantize(w).T`` in float64; the tolerance scales
with sqrt(K) (tokamax's rule): ``tol = c[dtype] * sqrt(K) * rms(x) * rms(W)`` where ``c`` covers
the result's rounding (f32: 1e-5, f16: 2e-3, bf16: 1.6e-2). Shapes straddle tile edges
(M in 1, 7, 16, 127, 128, 129; odd N; K not a multiple of the group).
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np

from jquant.core import QArray, dequantize, get_qtype, pack_codes

__all__ = ["QCase", "CASES", "SMALL_CASES", "make_qarray", "make_x", "check_backend", "TOL"]

TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


@dataclasses.dataclass(frozen=True)
class QCase:
    """One qmatmul problem: ``x`` [M, K] of ``dtype`` times a random `QArray` (N, K)."""

    qtype: str
    block: tuple[int, int] | str  # (bn, bk); "channel" -> (1, K), "tensor" -> (N, K)
    m: int
    n: int
    k: int
    dtype: str = "float32"
    zero: str | None = None  # None, "int" (codes), "float" (offsets)
    perm: bool = False
    scale_dtype: str = "float16"
    scale2: bool = False
    seed: int = 0

    def resolved_block(self) -> tuple[int, int]:
        if self.block == "channel":
            return (1, self.k)
        if self.block == "tensor":
            return (self.n, self.k)
        return tuple(self.block)

    def __str__(self) -> str:
        b = self.block if isinstance(self.block, str) else "x".join(map(str, self.block))
        extra = "".join(
            f"-{t}" for t in (self.zero and f"z{self.zero}", self.perm and "perm", self.scale2 and "s2") if t
        )
        return f"{self.qtype}-b{b}-{self.scale_dtype}{extra}-{self.dtype}-M{self.m}N{self.n}K{self.k}"


def make_qarray(case: QCase) -> QArray:
    """A valid random `QArray` (numpy) for ``case``; codes are random bytes within the type's range."""
    rng = np.random.default_rng(case.seed)
    q = get_qtype(case.qtype)
    n, k = case.n, case.k
    bn, bk = case.resolved_block()
    sn, sk = -(-n // bn), -(-k // bk)
    if q.storage is not None:  # fp8 codes: random finite values of the storage type
        vals = rng.standard_normal((n, k)).astype(np.float32) * 2.0
        data = vals.astype(q.storage_dtype)
        vmax = 2.0
    elif q.signed:
        data = rng.integers(-128, 128, (n, k), dtype=np.int8)
        vmax = 128.0
    else:
        codes = rng.integers(0, 1 << q.bits, (n, k))
        data = pack_codes(codes, q.container_bits)
        vmax = max(abs(v) for v in q.codebook) if q.codebook is not None else float(1 << (q.bits - 1))
    if case.scale_dtype == "float8_e8m0fnu":  # MX scales: powers of two
        scale = (2.0 ** rng.integers(-3, 2, (sn, sk))).astype(np.float32) / vmax
    else:
        scale = (rng.random((sn, sk)) + 0.25).astype(np.float32) / vmax
    scale = scale.astype(getattr(ml_dtypes, case.scale_dtype, None) or np.dtype(case.scale_dtype))
    zero = None
    if case.zero == "int":
        zero = rng.integers(0, 1 << q.bits, (sn, sk), dtype=np.uint8)
    elif case.zero == "float":  # GGUF-style offsets: fp16 values, so v*s - z rounds the same everywhere
        zero = (rng.standard_normal((sn, sk)) * 0.5).astype(np.float16).astype(np.float32)
    perm = rng.permutation(k).astype(np.int32) if case.perm else None
    scale2 = np.asarray([[0.75]], np.float32) if case.scale2 else None
    w = QArray(data=data, scale=scale, zero=zero, perm=perm, scale2=scale2, qtype=q, shape=(n, k), block=(bn, bk))
    return w.validate(str(case))


def make_x(case: QCase) -> np.ndarray:
    rng = np.random.default_rng(case.seed + 1)
    x = rng.standard_normal((case.m, case.k)).astype(np.float32)
    return x.astype(getattr(ml_dtypes, case.dtype, None) or np.dtype(case.dtype))


def check_backend(implementation: str | None, case: QCase, *, skip_unsupported: bool = False, tol_scale: float = 1.0):
    """Runs ``qmatmul(x, w, implementation=...)`` on ``case`` and asserts it matches the float64 oracle.

    Args:
        implementation: backend name, or None for the dispatcher's choice.
        case: the problem.
        skip_unsupported: ``pytest.skip`` (with the backend's reason) when it declines the case,
            instead of failing.
        tol_scale: multiplies the tolerance (for backends that document a coarser accumulation).

    Returns:
        the max abs error divided by the tolerance (<= 1 on success).
    """
    import jax
    import jax.numpy as jnp

    from jquant.ops import qmatmul
    from jquant.ops.backend import BACKENDS

    w_np = make_qarray(case)
    x_np = make_x(case)
    wd = dequantize(w_np).astype(np.float64)  # [N, K], HF column order
    ref = x_np.astype(np.float64) @ wd.T
    w = jax.device_put(w_np)
    x = jnp.asarray(x_np)
    if implementation is not None and skip_unsupported:
        ok, why = BACKENDS[implementation].supports(x, w)
        if not ok:
            import pytest

            pytest.skip(f"{implementation} declines {case}: {why}")
    y = jax.jit(lambda x, w: qmatmul(x, w, implementation=implementation))(x, w)
    assert y.shape == (case.m, case.n), f"{case}: shape {y.shape}"
    assert y.dtype == x.dtype, f"{case}: dtype {y.dtype} != {x.dtype}"
    y = np.asarray(y.astype(jnp.float32), dtype=np.float64)
    scale = math.sqrt(float(np.mean(x_np.astype(np.float64) ** 2)) * float(np.mean(wd**2)))
    tol = tol_scale * TOL[case.dtype] * math.sqrt(case.k) * scale
    err = float(np.abs(y - ref).max())
    assert np.isfinite(y).all(), f"{case}: non-finite output"
    assert err <= tol, f"{case}: max|err| {err:.3e} > tol {tol:.3e} ({implementation or 'dispatcher'})"
    return err / tol


# ---- the cases -----------------------------------------------------------------------------------
# Weight kinds of the formats jquant converts (qtype, block, extras), with the source it mirrors.
WEIGHT_KINDS = [
    dict(qtype="uint4b8", block=(1, 128)),  # GPTQ sym, compressed-tensors W4A16 sym
    dict(qtype="uint4", block=(1, 128), zero="int", perm=True),  # GPTQ asym act-order
    dict(qtype="uint4", block=(1, 64), zero="int"),  # AWQ GEMM
    dict(qtype="uint4", block=(1, 32), zero="float"),  # GGUF Q4_1 (and K-quant mins)
    dict(qtype="uint8b128", block="channel", scale_dtype="float32"),  # W8A16 per-channel
    dict(qtype="int8", block=(1, 32)),  # GGUF Q8_0
    dict(qtype="fp8_e4m3", block="tensor", scale_dtype="float32"),  # FP8 per-tensor
    dict(qtype="fp8_e4m3", block=(128, 128), scale_dtype="float32"),  # FP8 block (DeepSeek style)
    dict(qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),  # NVFP4
    dict(qtype="fp4_e2m1", block=(1, 32), scale_dtype="float8_e8m0fnu"),  # MXFP4
    dict(qtype="nf4", block=(1, 64), scale_dtype="float32"),  # bitsandbytes NF4
    dict(qtype="uint3b4", block=(1, 128)),  # 3-bit GPTQ, widened to 4-bit containers
    dict(qtype="uint2", block=(1, 64), zero="int"),  # 2-bit asym
    dict(qtype="iq4nl", block=(1, 32)),  # GGUF IQ4_NL
]

M_EDGES = (1, 7, 16, 127, 128, 129)


def _cases() -> list[QCase]:
    out = []
    for i, kind in enumerate(WEIGHT_KINDS):
        for m in M_EDGES:  # every weight kind at every M edge, f32, odd N, K straddling the group
            out.append(QCase(m=m, n=67, k=320, seed=i, **kind))
        for dtype in ("bfloat16", "float16"):
            out.append(QCase(m=16, n=67, k=320, dtype=dtype, seed=i, **kind))
    for k in (128, 130, 256, 384):  # K at and just past group edges
        out.append(QCase(qtype="uint4b8", block=(1, 128), m=3, n=33, k=k))
        out.append(QCase(qtype="uint4", block=(1, 128), zero="int", perm=True, m=5, n=31, k=k))
    out.append(QCase(qtype="uint4b8", block=(1, 128), m=1, n=512, k=1024, dtype="bfloat16"))  # a decode-size GEMV
    return out


CASES: list[QCase] = _cases()
# One case per weight kind: a quick smoke set for slow backends (interpreters).
SMALL_CASES: list[QCase] = [QCase(m=7, n=67, k=320, seed=i, **kind) for i, kind in enumerate(WEIGHT_KINDS)]
