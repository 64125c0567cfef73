"""Synthetic canonical weights for the Torch-bridge kernel tests (shared by the interpreter subprocess).

Every case is rebuilt from its name and a fixed seed, so a subprocess (Triton interpreter, AOT
compile) and the test process see the same arrays without shipping them. References are the numpy
spec `jquant.core.dequantize` in float64 matmuls.
"""

from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np

from jquant.core import QArray, dequantize, pack_codes
from jquant.core import qtypes as qt

__all__ = ["Case", "KERNEL_CASES", "make_weight", "make_x", "reference", "tolerance"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One qmatmul problem: weight description, activation shape / dtype, backend, activation scheme."""

    name: str
    qtype: qt.QType
    n: int
    k: int
    block: tuple[int, int]
    m: int
    x_dtype: str  # "float32" / "float16" / "bfloat16"
    zero: str | None = None  # None / "int" / "float"
    perm: bool = False
    scale_dtype: str = "float32"
    scale2: bool = False
    impl: str | None = "torch_triton_wxa16"  # None: routed by M (`torch_bridge.backend.plan`)
    act_quant: str | None = None
    split_k: int = 1
    seed: int = 0


def _scale_shape(n, k, block):
    return (-(-n // block[0]), -(-k // block[1]))


def make_weight(c: Case) -> QArray:
    """A random valid canonical weight for ``c`` (codes over the whole code range)."""
    rng = np.random.default_rng(c.seed)
    q = c.qtype
    n, k = c.n, c.k
    if q.storage is not None:
        dt = getattr(ml_dtypes, q.storage)
        data = (rng.standard_normal((n, k)) * 3).astype(np.float32).astype(dt)
    elif q.signed:
        data = rng.integers(-128, 128, (n, k)).astype(np.int8)
    else:
        data = pack_codes(rng.integers(0, 1 << q.bits, (n, k)), q.container_bits)
    ss = _scale_shape(n, k, c.block)
    if c.scale_dtype == "float8_e8m0fnu":
        scale = rng.integers(120, 130, ss).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)
    else:
        scale = (rng.random(ss) * 0.05 + 0.005).astype(getattr(ml_dtypes, c.scale_dtype, None) or c.scale_dtype)
    zero = None
    if c.zero == "int":
        zero = rng.integers(0, 1 << q.bits, ss).astype(np.uint8)
    elif c.zero == "float":
        zero = (rng.standard_normal(ss) * 0.05).astype(np.float16)
    perm = rng.permutation(k).astype(np.int32) if c.perm else None
    scale2 = np.array([[1.7]], dtype=np.float32) if c.scale2 else None
    w = QArray(data=data, scale=scale, zero=zero, perm=perm, scale2=scale2, qtype=q, shape=(n, k), block=c.block)
    return w.validate(c.name)


def act_group(c: Case) -> int:
    """Columns per activation scale of a W8A8 case (the resolved recipe's group, K for per token)."""
    from torch_bridge import act_quant as aq

    return aq.native(aq.resolve(c.act_quant, c.k, c.block[1]))[1] or c.k


def make_x(c: Case) -> np.ndarray:
    """Activations [m, k] in float32 holding values exactly representable in ``c.x_dtype``."""
    rng = np.random.default_rng(c.seed + 1)
    x = rng.standard_normal((c.m, c.k)).astype(np.float32)
    dt = getattr(ml_dtypes, c.x_dtype, None) or np.dtype(c.x_dtype)
    return x.astype(dt).astype(np.float32)


def reference(c: Case, x: np.ndarray, x_used: np.ndarray | None = None) -> np.ndarray:
    """float64 ``x @ dequantize(w).T`` (``x_used``: the fake-quantized activations of a W8A8 call)."""
    w = dequantize(make_weight(c)).astype(np.float64)
    xx = x if x_used is None else x_used
    return xx.astype(np.float64) @ w.T


def tolerance(c: Case, x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Elementwise bound, scaled with sqrt(K): rounding of W to the dot dtype + output rounding.

    eps: float32 dots are IEEE in the interpreter / ``input_precision="ieee"``; fp16 / bf16 round the
    dequantized weight to the activation dtype, and the interpreter truncates f32 -> bf16 (2 ulp).
    """
    eps = {"float32": 2.0**-21, "float16": 2.0**-10, "bfloat16": 2.0**-7}[c.x_dtype]
    w = dequantize(make_weight(c))
    rms = math.sqrt(float(np.mean(x.astype(np.float64) ** 2)) * float(np.mean(w.astype(np.float64) ** 2)))
    return eps * (2 * np.abs(ref) + 4 * math.sqrt(c.k) * rms) + 1e-6


F32, F16, BF16 = "float32", "float16", "bfloat16"
DEQ_DOT = "torch_triton_dequant_dot"

# Straddle shapes for the interpreter: M = 1 / 7 / 17 (one tile edge of 16), odd N, K tails, groups
# smaller than BLOCK_K (per-element scale path) and multiples of it (scale-row path).
KERNEL_CASES = [
    Case("w4_sym_g32_f32", qt.uint4b8, 33, 128, (1, 32), 7, F32),
    Case("w4_asym_intzero_g64_f16", qt.uint4, 40, 128, (1, 64), 1, F16, zero="int"),
    Case("w4_floatzero_g32_bf16", qt.uint4, 33, 96, (1, 32), 17, BF16, zero="float", scale_dtype="float16"),
    Case("w4_actorder_perm_g32", qt.uint4b8, 32, 128, (1, 32), 5, F32, perm=True),
    Case("w4_per_channel_f16_scales", qt.uint4b8, 24, 80, (1, 80), 3, F32, scale_dtype="float16"),
    Case("w8_sym_per_channel", qt.uint8b128, 17, 64, (1, 64), 3, F32),
    Case("w8_asym_g32_f16", qt.uint8, 24, 96, (1, 32), 7, F16, zero="int"),
    Case("int8_per_channel_ktail", qt.int8, 33, 80, (1, 80), 4, F32),
    Case("w2_g16_intzero", qt.int_type(2), 20, 64, (1, 16), 3, F32, zero="int"),
    Case("w3_g32_in_4bit_containers", qt.int_type(3, bias=4), 16, 64, (1, 32), 2, F32),
    Case("nf4_g64_scale2", qt.nf4, 40, 128, (1, 64), 7, F32, scale2=True),
    Case("mxfp4_e8m0_g32_bf16", qt.fp4_e2m1, 32, 64, (1, 32), 3, BF16, scale_dtype="float8_e8m0fnu"),
    Case("fp8_e4m3_per_tensor", qt.fp8_e4m3, 24, 64, (24, 64), 5, F32),
    Case("fp8_e4m3_block128_f16", qt.fp8_e4m3, 48, 256, (128, 128), 3, F16, scale_dtype="float32"),
    Case("fp8_e5m2_per_channel", qt.fp8_e5m2, 20, 64, (1, 64), 2, F32),
    Case("w4_sym_g32_split_k2", qt.uint4b8, 32, 256, (1, 32), 3, F32, split_k=2),
    # torch_triton_dequant_dot (M >= PREFILL_DEQUANT_M): dequant_kernel + the vendor GEMM
    Case("prefill_w4_asym_g32_bf16", qt.uint4, 33, 96, (1, 32), 129, BF16, zero="int", impl=DEQ_DOT),
    Case("prefill_nf4_g64_perm_f32", qt.nf4, 40, 128, (1, 64), 128, F32, perm=True, impl=DEQ_DOT),
    Case("prefill_fp8_block128_f16", qt.fp8_e4m3, 48, 256, (128, 128), 130, F16, impl=DEQ_DOT),
    Case("routed_w4_g32_m129", qt.uint4b8, 33, 128, (1, 32), 129, BF16, impl=None),  # the op picks dequant_dot
    Case("w8a8_fp8_per_tensor", qt.fp8_e4m3, 24, 64, (24, 64), 7, F32, impl="torch_triton_w8a8_fp8", act_quant="fp8"),
    Case(
        "w8a8_fp8_per_channel_bf16",
        qt.fp8_e4m3,
        33,
        96,
        (1, 96),
        3,
        BF16,
        impl="torch_triton_w8a8_fp8",
        act_quant="fp8",
    ),  # fmt: skip
    Case(
        "w8a8_fp8_block128", qt.fp8_e4m3, 48, 256, (128, 128), 5, F32, impl="torch_triton_w8a8_fp8", act_quant="fp8"
    ),  # fmt: skip
    Case(
        "w8a8_int8_per_channel_ktail", qt.int8, 33, 80, (1, 80), 7, F32, impl="torch_triton_w8a8_int8", act_quant="int8"
    ),  # fmt: skip
    Case(
        "w8a8_int8_from_uint8b128_perm_f16",
        qt.uint8b128,
        24,
        64,
        (1, 64),
        2,
        F16,
        perm=True,
        impl="torch_triton_w8a8_int8",
        act_quant="int8",
    ),  # fmt: skip
]
CASES_BY_NAME = {c.name: c for c in KERNEL_CASES}
