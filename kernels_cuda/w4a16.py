"""The W4A16 decode kernel (`csrc/w4a16_decode.cu`) as a JAX op and a `qmatmul` backend.

The kernel reads jquant's canonical 4-bit `QArray` as it is: codes uint8 [N, K/2] (two codes per
byte along K, low nibble first), scales [N, K/G] in f32/f16/bf16, optional uint8 zero points of the
scale's shape. It computes f32 partial sums per K split; the op sums them and casts to the
activation dtype. The act-order permutation, when present, is applied to x with one gather.
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
    "OPERAND_CAPS",
    "MAX_M",
]

MAX_M = 16  # two n8 tiles of mma.m16n8k16 (the kernel's B operand is x^T)
STEP_K = 128  # K columns per warp step (csrc: kStepK)
ROWS_PER_WARP = 32
MAX_SPLIT_BYTES = 48 * 1024  # shared memory for the staged activations of one K split (csrc: kMaxSplitBytes)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Launch parameters of the decode kernel.

    Attributes:
        k_split: K columns per split (a multiple of 128); the grid's second axis is ceil(K / k_split).
        stages: depth of the shared-memory code ring in steps of 128 columns (64 bytes per
            thread): 4 or 8; stages - 1 steps stay in flight while one is computed.
        warps: warps per block; each owns 32 weight rows.
    """

    k_split: int
    stages: int = 4
    warps: int = 8

    def splits(self, k: int) -> int:
        return -(-k // self.k_split)


def smem_bytes(k_split: int, m: int) -> int:
    """Shared memory of one block: the staged x fragments (2 KB per step and n8 tile) and x sums."""
    return (k_split // STEP_K) * (STEP_K * 16 + 8 * 4) * (2 if m > 8 else 1)


# Start-up of one block in units of one 128-column step: the first codes' DRAM latency, staging x
# behind a barrier, the epilogue. Calibrated on H200 (bench/results/nvidia_h200/cuda_decode.md).
BLOCK_OVERHEAD_STEPS = 3
DEFAULT_BLOCKS_PER_SM = 2  # the occupancy query's answer for 8 warps and a 4-deep ring on H100/H200


def decode_config(
    m: int,
    n: int,
    k: int,
    *,
    num_sms: int = NUM_SMS_DEFAULT,
    stages: int = 4,
    warps: int = 8,
    blocks_per_sm=None,
) -> DecodeConfig:
    """Picks the K split that balances the code bytes over the SMs with few block start-ups.

    A block streams ``k_split / 128`` steps of 2 KB per warp; with a 4-deep ring and 8 warps one
    block per SM keeps enough bytes in flight, so what matters is the busiest SM: it runs
    ``ceil(blocks / num_sms)`` blocks, ``blocks_per_sm`` at a time, and pays a start-up per round.
    The split minimizes ``ceil(blocks / num_sms) * steps_per_split + rounds * BLOCK_OVERHEAD_STEPS``
    (fewer splits when that ties: less partial-sum traffic), subject to the staged activations
    fitting `MAX_SPLIT_BYTES` of shared memory.

    Args:
        blocks_per_sm: callable ``k_split -> blocks`` (the kernel's occupancy), default
            `blocks_per_sm_query` on a GPU, else `DEFAULT_BLOCKS_PER_SM`.
    """
    row_blocks = -(-n // (warps * ROWS_PER_WARP))
    steps = k // STEP_K
    max_steps = MAX_SPLIT_BYTES // smem_bytes(STEP_K, m)
    if blocks_per_sm is None:
        blocks_per_sm = lambda ks: DEFAULT_BLOCKS_PER_SM  # noqa: E731
    best = None
    for splits in range(-(-steps // max_steps), min(steps, 64) + 1):
        per = -(-steps // splits)
        splits_eff = -(-steps // per)
        per_sm = -(-(row_blocks * splits_eff) // num_sms)
        rounds = -(-per_sm // max(1, blocks_per_sm(per * STEP_K)))
        cost = (per_sm * per + rounds * BLOCK_OVERHEAD_STEPS, splits_eff)
        if best is None or cost < best[0]:
            best = (cost, per)
    return DecodeConfig(k_split=best[1] * STEP_K, stages=stages, warps=warps)


def blocks_per_sm_query(x_dtype, scale_dtype, m: int, group: int, stages: int, warps: int):
    """``k_split -> blocks per SM`` from the CUDA occupancy calculator (needs a GPU); None if unavailable."""
    from kernels_cuda.build import BuildError, load_library

    try:
        fn = load_library().JquantW4A16BlocksPerSM
    except (BuildError, OSError, AttributeError):
        return None
    xd = 0 if np.dtype(x_dtype) == jnp.bfloat16 else 1
    sd = {"float32": 0, "float16": 1}.get(np.dtype(scale_dtype).name, 2)

    @functools.cache
    def query(k_split: int) -> int:
        v = fn(xd, sd, m, group, k_split, stages, warps)
        return v if v > 0 else DEFAULT_BLOCKS_PER_SM

    return query if fn(xd, sd, m, group, STEP_K, stages, warps) > 0 else None


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


# What the three W4A16 kernels read (`kernels_cuda.w4a16_gemm` / `w4a16_wgmma` narrow the M range and
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
CAPS = dataclasses.replace(OPERAND_CAPS, m_max=MAX_M)


def why_not(x, w) -> str:
    """ "" when the decode kernel computes ``x @ dequantize(w).T`` for these operands, else why not."""
    m = math.prod(x.shape[:-1])  # M = 0 is the operand check's ("empty activations")
    return why_not_operands(CAPS, x, w) or ("" if CAPS.takes_m(m) else f"M={m} outside {CAPS.m_range} (decode kernel)")


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
        w: 4-bit integer `QArray` with group (multiple of 32) or per-channel scales (`why_not` says).
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
        occupancy = _occupancy(x.dtype, w.scale.dtype, m, group) if jax.default_backend() == "gpu" else None
        cfg = decode_config(m, n, k, num_sms=num_sms or device_num_sms(), blocks_per_sm=occupancy)
    offset = int(w.qtype.bias)  # added to the zero point (GPTQ's uint4b8: 8, no zero tensor)
    zero = w.zero if w.zero is not None else jnp.zeros((1,), jnp.uint8)
    partial = call_kernel(
        "jquant_w4a16_decode",
        jax.ShapeDtypeStruct((cfg.splits(k), m, n), jnp.float32),
        (x2, w.data if tiled is None else tiled, w.scale, zero),
        poison=poison,
        group=np.int64(group),
        k_split=np.int64(cfg.k_split),
        bias=np.int64(offset),
        has_zero=np.int64(w.zero is not None),
        stages=np.int64(cfg.stages),
        warps=np.int64(cfg.warps),
        tiled=np.int64(tiled is not None),
    )
    if partials:
        return partial
    return partial.sum(axis=0).astype(x.dtype).reshape(*lead, n)


@functools.cache
def _occupancy(x_dtype, scale_dtype, m: int, group: int, stages: int = 4, warps: int = 8):
    return blocks_per_sm_query(x_dtype, scale_dtype, m, group, stages, warps)


class W4A16DecodeBackend(CudaBackend):
    """`qmatmul` backend ``cuda_w4a16_decode``: 4-bit integer weights, M <= 16, bf16/f16 activations."""

    name = "cuda_w4a16_decode"
    caps = CAPS

    def __call__(self, x, w, act=None):
        return w4a16_decode(x, w)
