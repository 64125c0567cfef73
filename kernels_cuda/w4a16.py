"""The 4-bit decode kernel (`csrc/decode.cuh`) as a JAX op and a `qmatmul` backend.

The kernel reads jquant's canonical 4-bit `QArray` as it is: codes uint8 [N, K/2] (two codes per
byte along K, low nibble first), scales [N, K/G] and zeros of the scale's shape. One kernel family,
three code kinds (`code_kind`):

* integer codes with uint8 zero points or the code's bias (GPTQ, AWQ, GGUF Q4_0, 3-bit GPTQ);
* integer codes with float zeros ``v * s - z`` (GGUF Q4_1, Q4_K: scales and mins as canonicalized);
* 16-entry codebooks (NF4, bitsandbytes FP4, IQ4_NL / IQ4_XS, fp4 e2m1 of MXFP4 / NVFP4), looked
  up in registers.

Scales are f32 / f16 / bf16, or fp8 e4m3 / e8m0 for codebooks (passed as their bytes); groups of 16
or multiples of 32, or per channel. The kernel computes f32 partial sums per K split; the op sums
them, applies NVFP4's per-tensor ``scale2`` and casts to the activation dtype. The act-order
permutation, when present, is applied to x with one gather.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.core.routing import Capabilities
from jquant.ops.backend import why_not_operands
from jquant.ops.device import NUM_SMS_DEFAULT
from jquant.ops.device import num_sms as device_num_sms
from kernels_cuda.backend import CudaBackend, call_kernel

__all__ = [
    "DecodeConfig",
    "W4A16DecodeBackend",
    "decode_config",
    "tile_codes",
    "untile_codes",
    "w4a16_decode",
    "why_not",
    "CAPS",
    "CODEBOOKS",
    "OPERAND_CAPS",
    "apply_scale2",
    "code_kind",
    "kind_operands",
    "why_not_kinds",
    "codebook_words",
    "MAX_M",
]

MAX_M = 16  # two n8 tiles of mma.m16n8k16 (the kernel's B operand is x^T)
STEP_K = 128  # K columns per warp step (csrc: kStepK)
ROWS_PER_WARP = 32
MAX_SPLIT_BYTES = 48 * 1024  # shared memory the cost model gives the staged activations of one K split
STAGING_LIMIT_BYTES = 96 * 1024  # what the kernel accepts (csrc: kMaxSplitBytes; + 64 KB ring < 227 KB)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters of the decode kernel.

    Attributes:
        k_split: K columns per split (a multiple of 128); the grid's second axis is ceil(K / k_split).
        stages: depth of the shared-memory code ring in steps of 128 columns (64 bytes per
            thread): 4 or 8; stages - 1 steps stay in flight while one is computed.
        warps: warps per block.
        kslices: warps per 32-row group, splitting the block's K range between them (1, 2, 4 or 8,
            dividing ``warps``); their sums meet in shared memory. A block holds
            ``warps / kslices * 32`` weight rows.
        direct: with a single K split, the kernel writes x's dtype itself (no f32 slab to sum).
    """

    k_split: int
    stages: int = 4
    warps: int = 8
    kslices: int = 1
    direct: bool = False

    def splits(self, k: int) -> int:
        return -(-k // self.k_split)

    def rows_per_block(self) -> int:
        return self.warps // self.kslices * ROWS_PER_WARP


def smem_bytes(k_split: int, m: int) -> int:
    """Shared memory of one block: the staged x fragments (2 KB per step and n8 tile) and x sums."""
    return (k_split // STEP_K) * (STEP_K * 16 + 8 * 4) * (2 if m > 8 else 1)


# Start-up of one block in units of one 128-column step: the first codes' DRAM latency, staging x
# behind a barrier, the epilogue. Calibrated on H200 (bench/results/nvidia_h200/cuda_decode.md).
BLOCK_OVERHEAD_STEPS = 3
DEFAULT_BLOCKS_PER_SM = 2  # the occupancy query's answer for 8 warps and a 4-deep ring on H100/H200
# In-block K slices the cost model may choose from, and what summing the f32 slabs of more than one
# grid split costs (a second kernel) once a single split could write the output itself. Slices > 1
# and the direct store compile and lower on CPU CI but have not been timed on a GPU yet, so the
# model keeps to one slice and f32 slabs until a device run calibrates both
# (bench/gpu/s9_decode_kslices.sh; `decode_config(..., kslice_choices=(1, 2, 4, 8), direct=True)`).
KSLICE_CHOICES = (1,)
REDUCTION_STEPS = 3


def decode_config(
    m: int,
    n: int,
    k: int,
    *,
    num_sms: int = NUM_SMS_DEFAULT,
    stages: int = 4,
    warps: int = 8,
    blocks_per_sm=None,
    kslice_choices: tuple[int, ...] = KSLICE_CHOICES,
    direct: bool = False,
    max_split_bytes: int = MAX_SPLIT_BYTES,
) -> DecodeConfig:
    """Picks the K split (and in-block K slices) that balance the code bytes over the SMs.

    A warp streams its share of a block's K range in steps of 2 KB; with a 4-deep ring and 8 warps
    one block per SM keeps enough bytes in flight, so what matters is the busiest SM: it runs
    ``ceil(blocks / num_sms)`` blocks, ``blocks_per_sm`` at a time, and pays a start-up per round.
    The split minimizes ``ceil(blocks / num_sms) * steps_per_warp + rounds * BLOCK_OVERHEAD_STEPS``
    (+ `REDUCTION_STEPS` for more than one split when ``direct``; fewer splits, then fewer slices,
    when that ties), subject to the staged activations fitting `MAX_SPLIT_BYTES` of shared memory.

    Args:
        blocks_per_sm: callable ``k_split -> blocks`` (the kernel's occupancy), default
            `blocks_per_sm_query` on a GPU, else `DEFAULT_BLOCKS_PER_SM`.
        kslice_choices: in-block K slices to consider (each dividing ``warps``).
        direct: let a single split write x's dtype directly (`DecodeConfig.direct`).
        max_split_bytes: shared memory for one block's staged activations (at most
            `STAGING_LIMIT_BYTES`; more than 48 KB lowers the occupancy `blocks_per_sm` reports).
    """
    steps = k // STEP_K
    max_steps = min(max_split_bytes, STAGING_LIMIT_BYTES) // smem_bytes(STEP_K, m)
    if blocks_per_sm is None:
        blocks_per_sm = lambda ks: DEFAULT_BLOCKS_PER_SM  # noqa: E731
    best = None
    for kslices in kslice_choices:
        row_blocks = -(-n // (warps // kslices * ROWS_PER_WARP))
        for splits in range(-(-steps // max_steps), min(steps, 64) + 1):
            per = -(-steps // splits)
            splits_eff = -(-steps // per)
            per_sm = -(-(row_blocks * splits_eff) // num_sms)
            rounds = -(-per_sm // max(1, blocks_per_sm(per * STEP_K)))
            reduction = REDUCTION_STEPS if direct and splits_eff > 1 else 0
            cost = (per_sm * -(-per // kslices) + rounds * BLOCK_OVERHEAD_STEPS + reduction, splits_eff, kslices)
            if best is None or cost < best[0]:
                best = (cost, per, kslices, splits_eff)
    _, per, kslices, splits_eff = best
    return DecodeConfig(
        k_split=per * STEP_K, stages=stages, warps=warps, kslices=kslices, direct=direct and splits_eff == 1
    )


def blocks_per_sm_query(x_dtype, scale_dtype, m: int, group: int, stages: int, warps: int, kind: int = 0):
    """``k_split -> blocks per SM`` from the CUDA occupancy calculator (needs a GPU); None if unavailable.

    Args:
        kind: the `code_kind` of the weight (0 integer, 1 float zeros, 2 codebook).
    """
    from kernels_cuda.build import BuildError, load_library

    try:
        fn = load_library().JquantW4A16BlocksPerSM
    except (BuildError, OSError, AttributeError):
        return None
    xd = 0 if np.dtype(x_dtype) == jnp.bfloat16 else 1
    st = SCALE_TYPES[np.dtype(scale_dtype).name]

    @functools.cache
    def query(k_split: int) -> int:
        v = fn(xd, kind, st, m, group, k_split, stages, warps)
        return v if v > 0 else DEFAULT_BLOCKS_PER_SM

    return query if fn(xd, kind, st, m, group, STEP_K, stages, warps) > 0 else None


def tile_codes(data, n: int, k: int):
    """The kernel's tiled view of canonical 4-bit codes, derived once at load (a byte permutation).

    Args:
        data: uint8 [N, K/2] canonical codes (two per byte along K, low nibble first); numpy or jnp.

    Returns:
        uint8 [ceil(N/32), 16 K]: for each 32-row block and 128-column step, a 2 KB tile ordered
        [piece j (rows 8j..8j+7), lane = 4 r + q, 16 bytes] where lane's piece j holds row
        8j + r, bytes 16q..16q+15 of the step. Every warp load instruction then reads 512
        contiguous bytes. Rows past N (padding to a multiple of 32) are zero and never stored.
    """
    xp = jnp if isinstance(data, jax.Array) else np
    rb = -(-n // ROWS_PER_WARP)
    d = xp.asarray(data).reshape(n, k // 2)
    if rb * ROWS_PER_WARP != n:
        d = xp.concatenate([d, xp.zeros((rb * ROWS_PER_WARP - n, k // 2), d.dtype)], axis=0)
    d = d.reshape(rb, 4, 8, k // STEP_K, 4, 16)  # [rb, j, r, t, q, byte]
    return d.transpose(0, 3, 1, 2, 4, 5).reshape(rb, 16 * k)


def untile_codes(tiled, n: int, k: int) -> np.ndarray:
    """Inverse of `tile_codes` (numpy): back to canonical uint8 [N, K/2]."""
    rb = -(-n // ROWS_PER_WARP)
    d = np.asarray(tiled).reshape(rb, k // STEP_K, 4, 8, 4, 16).transpose(0, 2, 3, 1, 4, 5)
    return d.reshape(rb * ROWS_PER_WARP, k // 2)[:n]


# What the W4A16 GEMM kernels read (`kernels_cuda.w4a16_gemm` / `w4a16_wgmma` narrow the M range and
# the device): 4-bit unsigned codes with a bias or uint8 zero points, one scale row per weight row,
# groups that are multiples of 32 dividing K (or per-channel), K a multiple of 128, f32/f16/bf16
# scales, bf16/f16 activations.
OPERAND_CAPS = Capabilities(
    platforms=frozenset({"gpu"}),
    codes=frozenset({"uint4"}),
    group_multiple=32,
    group_divides_k=True,
    k_multiple=STEP_K,
)

# The decode kernel reads more (csrc/decode.cuh): float zeros, 16-entry codebooks with fp8 / e8m0
# scales, groups of 16, NVFP4's scale2. `why_not_kinds` narrows what a record cannot say.
CODEBOOKS = frozenset({"fp4_e2m1", "nf4", "bnb_fp4", "iq4nl"})
CAPS = dataclasses.replace(
    OPERAND_CAPS,
    codes=frozenset({"uint4"}) | CODEBOOKS,
    zeros=frozenset({"none", "uint8", "float32", "float16", "bfloat16"}),
    scale_dtypes=frozenset({"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e8m0fnu"}),
    scale2=True,
    group_multiple=16,
    m_max=MAX_M,
)

# The kernel's scale_type attribute (csrc/decode.cuh ScaleType) per scale dtype name.
SCALE_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2, "float8_e4m3fn": 3, "float8_e8m0fnu": 4}


def code_kind(w: QArray) -> int:
    """The kernel's code kind (csrc/decode.cuh Kind): 0 integer (uint8 zeros or bias), 1 integer with
    float zeros, 2 codebook."""
    if w.qtype.codebook is not None:
        return 2
    return 1 if w.zero is not None and np.dtype(w.zero.dtype).kind != "u" else 0


def why_not_kinds(call) -> str:
    """What `CAPS` cannot say about the code kinds (the decode and wgmma kernels' `why_not_more`)."""
    g = call.group
    if g < call.k and g != 16 and g % 32:
        return f"group size {g}: the decode kernel reads groups of 16 or multiples of 32"
    codebook = call.codes in CODEBOOKS
    if call.scale_dtype.startswith("float8") and not codebook:
        return f"scale dtype {call.scale_dtype} with integer codes (fp8 scales are read for codebooks only)"
    if call.zero != "none" and codebook:
        return "zero points with a codebook"
    if call.zero not in ("none", "uint8") and call.zero != call.scale_dtype:
        return f"float zeros of dtype {call.zero} with {call.scale_dtype} scales (the kernel reads them alike)"
    return ""


def why_not(x, w) -> str:
    """ "" when the decode kernel computes ``x @ dequantize(w).T`` for these operands, else why not."""
    m = math.prod(x.shape[:-1])  # M = 0 is the operand check's ("empty activations")
    why = why_not_operands(CAPS, x, w, more=why_not_kinds)
    return why or ("" if CAPS.takes_m(m) else f"M={m} outside {CAPS.m_range} (decode kernel)")


def codebook_words(qtype, dtype) -> tuple[int, int, int, int]:
    """The kernel's codebook attributes ``cb0..cb3`` for ``qtype`` read in activation dtype ``dtype``.

    The 16 table values rounded to ``dtype`` (bf16 / f16), split into byte planes for PRMT
    (csrc/decode.cuh `Codebook`): words [lo bytes of entries 0-3, 4-7, 8-11, 12-15, hi bytes of
    0-3, 4-7, 8-11, 12-15], little-endian; attribute i packs words 2i (low 32 bits) and 2i + 1.
    Zeros for a qtype without a table.
    """
    if qtype.codebook is None:
        return (0, 0, 0, 0)
    bits = np.asarray(qtype.codebook, np.float32).astype(dtype).view(np.uint16)
    planes = np.concatenate([bits & 0xFF, bits >> 8]).astype(np.uint8)  # [32] bytes
    words = planes.view("<u4").astype(np.uint64)  # [8]
    return tuple(int(np.int64(words[2 * i] | (words[2 * i + 1] << np.uint64(32)))) for i in range(4))


def kind_operands(w: QArray, x_dtype):
    """The scale operand and the code-kind attributes the decode and wgmma kernels take for ``w``.

    Returns:
        (scale: ``w.scale``, fp8 e4m3 / e8m0 bitcast to their uint8 bytes; attrs: ``kind``,
        ``scale_type`` and the codebook words ``cb0..cb3`` as int64, see `codebook_words`).
    """
    scale = w.scale
    if np.dtype(scale.dtype).itemsize == 1:
        scale = jax.lax.bitcast_convert_type(scale, jnp.uint8)
    attrs = {"kind": code_kind(w), "scale_type": SCALE_TYPES[np.dtype(w.scale.dtype).name]}
    attrs.update({f"cb{i}": v for i, v in enumerate(codebook_words(w.qtype, x_dtype))})
    return scale, {name: np.int64(v) for name, v in attrs.items()}


def apply_scale2(y, w: QArray):
    """f32 sums ``y`` times NVFP4's per-tensor second scale, when ``w`` has one."""
    return y if w.scale2 is None else y * w.scale2.reshape(())


def w4a16_decode(
    x,
    w: QArray,
    cfg: DecodeConfig | None = None,
    *,
    tiled=None,
    num_sms: int | None = None,
    partials: bool = False,
    poison: bool = False,
):
    """``x @ dequantize(w).T`` on the GPU for [..., K] bf16/f16 activations with at most 16 rows.

    Args:
        x: [..., K] bf16 or f16.
        w: 4-bit `QArray` (integer codes with bias / uint8 / float zeros, or a 16-entry codebook)
            with groups of 16, multiples of 32, or per-channel scales (`why_not` says).
        cfg: launch parameters; default `decode_config`.
        tiled: optional `tile_codes(w.data)`, read instead of the canonical codes.
        partials: return the kernel's f32 partial sums [S, M, N] as they are (profiling).
        poison: the kernel writes into a NaN-filled buffer (tests: unwritten outputs stay NaN).

    Returns:
        [..., N] in x's dtype (f32 accumulation).
    """
    from kernels_cuda.build import register

    why = why_not(x, w)
    if why:
        raise ValueError(f"w4a16_decode: {why}")
    register()
    lead, k = x.shape[:-1], x.shape[-1]
    n = w.shape[0]
    m = math.prod(lead)
    x2 = x.reshape(m, k)
    if w.perm is not None:
        x2 = jnp.take(x2, w.perm, axis=-1)
    group = min(w.block[1], k)
    if cfg is None:
        gpu = jax.default_backend() == "gpu"
        occupancy = _occupancy(x.dtype, w.scale.dtype, m, group, kind=code_kind(w)) if gpu else None
        cfg = decode_config(m, n, k, num_sms=num_sms or device_num_sms(), blocks_per_sm=occupancy)
    offset = int(w.qtype.bias)  # added to the zero point (GPTQ's uint4b8: 8, no zero tensor)
    zero = w.zero if w.zero is not None else jnp.zeros((1,), jnp.uint8)
    scale, kind_attrs = kind_operands(w, x.dtype)
    # One split and no second scale: the kernel writes x's dtype, nothing is left to sum.
    direct = cfg.direct and cfg.splits(k) == 1 and w.scale2 is None and not partials
    partial = call_kernel(
        "jquant_w4a16_decode",
        jax.ShapeDtypeStruct((cfg.splits(k), m, n), x.dtype if direct else jnp.float32),
        (x2, w.data if tiled is None else tiled, scale, zero),
        poison=poison,
        group=np.int64(group),
        k_split=np.int64(cfg.k_split),
        bias=np.int64(offset),
        has_zero=np.int64(w.zero is not None),
        stages=np.int64(cfg.stages),
        warps=np.int64(cfg.warps),
        tiled=np.int64(tiled is not None),
        kslices=np.int64(cfg.kslices),
        **kind_attrs,
    )
    if partials:
        return partial
    if direct:
        return partial.reshape(*lead, n)
    return apply_scale2(partial.sum(axis=0), w).astype(x.dtype).reshape(*lead, n)


@functools.cache
def _occupancy(x_dtype, scale_dtype, m: int, group: int, stages: int = 4, warps: int = 8, kind: int = 0):
    return blocks_per_sm_query(x_dtype, scale_dtype, m, group, stages, warps, kind)


class W4A16DecodeBackend(CudaBackend):
    """`qmatmul` backend ``cuda_w4a16_decode``: 4-bit weights of every kind, M <= 16, bf16/f16 activations."""

    name = "cuda_w4a16_decode"
    caps = CAPS

    def why_not_more(self, call):
        return why_not_kinds(call)

    def __call__(self, x, w, act=None):
        return w4a16_decode(x, w)
