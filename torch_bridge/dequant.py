"""Torch twin of the reference dequantization (`jquant.core.dequant`), on any torch device.

Same operations in the same order, in float32, as the numpy spec, so the two agree bit-exactly on
CPU (tested on random bytes): decode codes -> values, expand block scales (times ``scale2``),
apply the zero point (``(v - z) * s`` for integer codes, ``v * s - z`` for float offsets), and
scatter columns through ``perm``. Used by the dequantize + matmul fallback backend and by tests.
"""

from __future__ import annotations

import functools

import torch

from jquant.core.qarray import QArray
from jquant.core.qtypes import QType

__all__ = ["unpack_codes", "decode_values", "expand_blocks", "dequantize", "dequantize_permuted"]


def unpack_codes(packed: torch.Tensor, container_bits: int) -> torch.Tensor:
    """Canonical packed uint8 [..., K*c/8] -> uint8 codes [..., K] (c = 1, 2, 4); 8-bit passes through."""
    if container_bits == 8:
        return packed
    per = 8 // container_bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * container_bits
    out = (packed.unsqueeze(-1) >> shifts) & ((1 << container_bits) - 1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * per)


@functools.lru_cache(maxsize=64)
def _codebook_cpu(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def codebook(qtype: QType, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 value table of a codebook qtype, on ``device``."""
    return _codebook_cpu(qtype.codebook).to(device)


def decode_values(codes: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Unpacked codes (uint8 / int8 / fp8) -> float32 values before scaling."""
    if qtype.codebook is not None:
        return codebook(qtype, codes.device)[codes.long()]
    if qtype.storage is not None or qtype.signed:
        return codes.float()
    return codes.float() - float(qtype.bias)


def expand_blocks(a: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Broadcasts a per-block array [ceil(N/bn), ceil(K/bk)] to [N, K]."""
    bn, bk = block
    n, k = shape
    return a.repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]


def block_scale(w: QArray) -> torch.Tensor:
    """The float32 scale per block, ``scale * scale2``: [ceil(N/bn), ceil(K/bk)]."""
    s = w.scale.float()
    if w.scale2 is not None:
        s = s * w.scale2.float()
    return s


def dequantize_permuted(w: QArray) -> torch.Tensor:
    """float32 [N, K] with columns in ``data`` order (``perm`` not applied): ``x[..., perm] @ this.T``."""
    q = w.qtype
    v = decode_values(unpack_codes(w.data, q.container_bits), q)
    s = expand_blocks(block_scale(w), w.block, w.shape)
    if w.zero is None:
        return v * s
    z = expand_blocks(w.zero.float(), w.block, w.shape)
    if not w.zero.dtype.is_floating_point:
        return (v - z) * s
    return v * s - z


def dequantize(w: QArray | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dense [N, K] weight in HF orientation (float32 unless ``dtype``); plain tensors pass through."""
    if not isinstance(w, QArray):
        return w if dtype is None else w.to(dtype)
    out = dequantize_permuted(w)
    if w.perm is not None:
        res = torch.empty_like(out)
        res[:, w.perm.long()] = out
        out = res
    return out if dtype is None else out.to(dtype)
