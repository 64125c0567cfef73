"""Representative weights of every code type the converters produce, for the routing tests.

Only static fields and shapes matter to routing, so the arrays are ShapeDtypeStructs-like numpy
zeros of the right dtype (never computed on).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.qarray import QArray
from jquant.core.qtypes import bnb_fp4, fp4_e2m1, fp8_e4m3, get_qtype, int8, iq4nl, nf4

N, K = 256, 4096
F16, F32, E8M0, E4M3 = np.float16, np.float32, ml_dtypes.float8_e8m0fnu, ml_dtypes.float8_e4m3fn


def _w(qtype, block, scale_dtype=F16, zero=None, scale2=False, perm=False) -> QArray:
    bn, bk = min(block[0], N), min(block[1], K)
    sshape = (-(-N // bn), -(-K // bk))
    return QArray(
        data=np.zeros((N, K * qtype.container_bits // 8), qtype.storage_dtype),
        scale=np.zeros(sshape, scale_dtype),
        zero=None if zero is None else np.zeros(sshape, zero),
        perm=np.arange(K, dtype=np.int32) if perm else None,
        scale2=np.ones((1, 1), F32) if scale2 else None,
        qtype=qtype,
        shape=(N, K),
        block=(bn, bk),
    )


def _act(qtype: str, granularity="token", group=None, dynamic=True, **kw) -> ActQuant:
    from jquant.core.qtypes import get_qtype as q

    scale = None if dynamic else np.ones((1,), F32)
    return ActQuant(q(qtype), dynamic, granularity, group, scale=scale, **kw)


# name -> (weight, activation recipe or None); the formats that produce each in the comment.
CASES: dict[str, tuple[QArray, ActQuant | None]] = {
    "uint4b8 g128": (_w(get_qtype("uint4b8"), (1, 128)), None),  # GPTQ / CT int4 sym
    "uint4 g128 zero": (_w(get_qtype("uint4"), (1, 128), zero=np.uint8), None),  # AWQ, GPTQ asym
    "uint4b8 g128 act-order": (_w(get_qtype("uint4b8"), (1, 128), perm=True), None),  # GPTQ desc_act
    "uint4b8 channel": (_w(get_qtype("uint4b8"), (1, K)), None),
    "uint8b128 channel": (_w(get_qtype("uint8b128"), (1, K)), None),  # GPTQ 8-bit
    "uint2 g64 zero": (_w(get_qtype("uint2"), (1, 64), zero=np.uint8), None),  # GPTQ 2-bit
    "uint3b4 g128": (_w(get_qtype("uint3b4"), (1, 128)), None),  # GPTQ 3-bit (4-bit containers)
    "q4_0 uint4b8 g32": (_w(get_qtype("uint4b8"), (1, 32)), None),  # GGUF Q4_0
    "q4_1 uint4 g32 float zero": (_w(get_qtype("uint4"), (1, 32), zero=F16), None),  # GGUF Q4_1 / Q4_K
    "q6_k uint6b32 g16": (_w(get_qtype("uint6b32"), (1, 16), F32), None),  # GGUF Q6_K
    "q8_0 int8 g32": (_w(int8, (1, 32)), None),  # GGUF Q8_0
    "nf4 g64": (_w(nf4, (1, 64), F32), None),  # bitsandbytes NF4
    "bnb_fp4 g64": (_w(bnb_fp4, (1, 64), F32), None),
    "iq4nl g32": (_w(iq4nl, (1, 32)), None),  # GGUF IQ4_NL / IQ4_XS
    "mxfp4 g32": (_w(fp4_e2m1, (1, 32), E8M0), None),  # OCP MXFP4, gpt-oss
    "nvfp4 w4a16": (_w(fp4_e2m1, (1, 16), E4M3, scale2=True), None),  # ModelOpt W4A16_NVFP4
    "nvfp4 w4a4": (
        _w(fp4_e2m1, (1, 16), E4M3, scale2=True),
        _act("fp4_e2m1", "group", 16, scale_dtype="float8_e4m3fn", global_scale=np.ones((1,), F32)),
    ),  # CT NVFP4
    "fp8 channel w8a16": (_w(fp8_e4m3, (1, K), F32), None),  # CT FP8 weight-only
    "fp8 channel w8a8": (_w(fp8_e4m3, (1, K), F32), _act("fp8_e4m3")),  # CT FP8_DYNAMIC, FBGEMM
    "fp8 tensor static": (_w(fp8_e4m3, (N, K), F32), _act("fp8_e4m3", "tensor", dynamic=False)),  # CT FP8, ModelOpt
    "fp8 block128 w8a8": (_w(fp8_e4m3, (128, 128), F32), _act("fp8_e4m3", "group", 128)),  # HF FP8, CT FP8_BLOCK
    "int8 channel w8a8": (_w(int8, (1, K), F32), _act("int8")),  # CT W8A8 int8
    "int8 channel w8a8 asym": (_w(int8, (1, K), F32), _act("int8", symmetric=False)),  # CT W8A8 asym
}
