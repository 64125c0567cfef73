"""Weights of every 4-bit code type the decode kernel reads, made by the real converters.

GGUF types are converted from random valid blocks (`tests.pallas.test_wxa16_interpret.gguf`: the
converter's own K-quant scales and float mins, IQ4 tables, MXFP4 / NVFP4); the others are random
codes of the right qtype, block, scale dtype and zero kind (`tests.ops.qmatmul_suite.make_qarray`).
K is a multiple of the kernel's 128-column step: 2304 (9 super-blocks of 256) for the K-quants,
2176 (17 steps, no split divides it) for the rest. N is odd (a partial 128-row block).
"""

from __future__ import annotations

from tests.pallas.test_wxa16_interpret import gguf, synth

N = 1003
K_SUPER = 2304
K = 2176

# id -> (factory, kernel code kind: 0 integer, 1 float zeros, 2 codebook)
WEIGHTS = {
    "Q4_0": (lambda: gguf("Q4_0", N, K), 0),  # uint4b8, f16 scales, g32
    "Q4_1": (lambda: gguf("Q4_1", N, K), 1),  # uint4, f16 scales and float zeros, g32
    "Q4_K": (lambda: gguf("Q4_K", N, K_SUPER), 1),  # uint4, f32 d*sc and dmin*m, g32
    "Q3_K": (lambda: gguf("Q3_K", N, K_SUPER), 0),  # uint3b4 in 4-bit containers, g16
    "IQ4_NL": (lambda: gguf("IQ4_NL", N, K), 2),  # codebook, f16 scales, g32
    "IQ4_XS": (lambda: gguf("IQ4_XS", N, K_SUPER), 2),  # codebook, f32 effective scales, g32
    "MXFP4": (lambda: gguf("MXFP4", N, K), 2),  # e2m1, e8m0 scales, g32
    "NVFP4-gguf": (lambda: gguf("NVFP4", N, K), 2),  # e2m1, e4m3 scales, g16
    "nvfp4-scale2": (
        lambda: synth(N, K, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),
        2,
    ),
    "nf4-g64": (lambda: synth(N, K, qtype="nf4", block=(1, 64), scale_dtype="float32"), 2),
    "nf4-g128-acc": (lambda: synth(N, K + 128, qtype="nf4", block=(1, 128), scale_dtype="float16"), 2),
    "bnb_fp4-bf16": (lambda: synth(N, K, qtype="bnb_fp4", block=(1, 64), scale_dtype="bfloat16"), 2),
    "uint4-g128-floatzero-acc": (
        lambda: synth(N, K + 128, qtype="uint4", block=(1, 128), zero="float", scale_dtype="float32"),
        1,
    ),
    "uint4b8-g16": (lambda: synth(N, K, qtype="uint4b8", block=(1, 16)), 0),
}
