"""Canonical arrays -> torch tensors, without copies where the bytes allow it.

The Torch bridge keeps the one canonical layout: a `QArray` whose leaves are torch tensors is the
same object (same fields, same packing, same invariant) as the numpy one `jquant.convert` returns;
`to_torch` only changes the array type. Host numpy arrays (memory-mapped safetensors included) are
wrapped with `torch.from_numpy`, so the tensor *is* the file mapping; dtypes numpy cannot hand to
torch (ml_dtypes bfloat16 / fp8 / e8m0) are wrapped as same-width integers and reinterpreted with
`Tensor.view(dtype)`, still without a copy. Arrays that speak DLPack (JAX device arrays, CuPy, ...)
go through `torch.from_dlpack`, so no JAX import is ever needed here.

Memory-mapped checkpoints are read-only: the tensors returned for them must not be written to
(torch warns about non-writable numpy arrays once; the warning is silenced here on purpose).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from jquant.core.qarray import QArray

__all__ = ["as_tensor", "to_torch", "checkpoint_to_torch", "torch_dtype", "describe"]

# numpy / ml_dtypes dtype name -> (torch dtype, same-width numpy integer dtype to wrap it as).
_REINTERPRET = {
    "bfloat16": (torch.bfloat16, np.int16),
    "float8_e4m3fn": (torch.float8_e4m3fn, np.uint8),
    "float8_e5m2": (torch.float8_e5m2, np.uint8),
    "float8_e8m0fnu": (torch.float8_e8m0fnu, np.uint8),
}


def torch_dtype(np_dtype: Any) -> torch.dtype:
    """The torch dtype holding the same bits as a numpy / ml_dtypes dtype."""
    d = np.dtype(np_dtype)
    if d.name in _REINTERPRET:
        return _REINTERPRET[d.name][0]
    return torch.from_numpy(np.empty(0, dtype=d)).dtype


def as_tensor(a: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """One array -> torch tensor, sharing memory when it stays on the array's device.

    Args:
        a: numpy array (memmaps included; any dtype of `jquant.core`, ml_dtypes ones too), a torch
            tensor, or any object implementing ``__dlpack__`` (JAX arrays).
        device: move the result there (this copies when the device differs).
    """
    if isinstance(a, torch.Tensor):
        t = a
    elif isinstance(a, np.ndarray):
        name = a.dtype.name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if name in _REINTERPRET:
                tdt, carrier = _REINTERPRET[name]
                arr = a if a.flags.c_contiguous or a.ndim == 0 else np.ascontiguousarray(a)
                t = torch.from_numpy(arr.view(carrier)).view(tdt)
            else:
                t = torch.from_numpy(a)
    elif hasattr(a, "__dlpack__"):
        t = torch.from_dlpack(a)
    else:
        t = torch.as_tensor(a)
    return t if device is None else t.to(device)


def to_torch(w: QArray | Any, device: torch.device | str | None = None) -> QArray | torch.Tensor:
    """A canonical `QArray` (or plain array) with every leaf as a torch tensor.

    The static fields (``qtype``, ``shape``, ``block``, ``layout_version``) are unchanged; the
    result satisfies the same invariant (`torch_bridge.dequant.dequantize` is its torch twin).
    Host arrays are validated first (`QArray.validate`), so a bad checkpoint fails here with a
    `jquant.FormatError`, not inside a kernel.

    Args:
        w: `QArray` with numpy / torch / DLPack leaves, or a plain array.
        device: target device (default: where the arrays are; host arrays stay zero-copy).
    """
    if not isinstance(w, QArray):
        return as_tensor(w, device)
    if isinstance(w.data, np.ndarray):
        w.validate()
    leaves = {f: as_tensor(a, device) for f, a in w.arrays().items()}
    return w.replace(**leaves)


def checkpoint_to_torch(weights: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """`to_torch` over a ``Checkpoint.weights`` mapping (HF name -> QArray | array)."""
    return {k: to_torch(v, device) for k, v in weights.items()}


def describe(w: QArray) -> str:
    """A one-line description of a `QArray` whatever its leaves are (``QArray.__repr__`` wants numpy dtypes)."""
    extra = "".join(f", {f}" for f in ("zero", "perm", "scale2") if getattr(w, f) is not None)
    sdt = str(w.scale.dtype).removeprefix("torch.")
    return f"QArray({w.qtype.name}, shape={tuple(w.shape)}, block={tuple(w.block)}, scale={sdt}{list(w.scale.shape)}{extra})"
