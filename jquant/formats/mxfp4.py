"""gpt-oss MXFP4 (``quant_method: "mxfp4"``), plus the FP4 (E2M1) helpers NVFP4 / MXFP4 formats share.

FP4 E2M1 weights are stored two codes per byte, element ``2j`` in the low nibble and ``2j+1`` in
the high nibble (compressed-tensors ``pack_fp4_to_uint8``, ModelOpt ``NVFP4QTensor``, Quark
``Pack_fp4``, gpt-oss). That is exactly the canonical 4-bit packing, so `QArray.data` *is* the
stored byte array ([N, K/2] uint8), with ``qtype=fp4_e2m1``. Block scales keep their dtype:
float8_e4m3fn (NVFP4, 16 per block) or float8_e8m0fnu (MX, 32 per block; stored on disk as uint8
biased exponents, ``2**(e - 127)``, 0xFF = NaN, which `QArray.validate` refuses).

gpt-oss (formats.md 10.1; transformers ``integrations/mxfp4.py convert_moe_packed_tensors``): only
MoE experts are quantized, stacked per layer as
``<p>.mlp.experts.{gate_up_proj,down_proj}_blocks`` uint8 [E, N, K/32, 16] and ``..._scales``
uint8 [E, N, K/32] (rows N = output features; ``gate_up_proj`` rows interleave gate and up:
row 2i is gate_i, row 2i+1 is up_i, as gpt-oss's ``gate_up[..., ::2]`` / ``[..., 1::2]``), plus
``..._bias`` [E, N]. Decision: each expert becomes its own 2-D canonical linear named
``<p>.mlp.experts.{e}.gate_up_proj.weight`` [N, K] (and ``.bias``), in HF linear orientation
(the transformers module keeps the transpose, [E, K, N]); rows are kept in stored order (the
gate/up interleave is the model's business). A 3-D ``*_blocks`` [N, K/32, 16] (a plain linear)
becomes ``<p>.<base>.weight``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jquant.core.errors import ConfigError, FormatError
from jquant.core.qarray import QArray
from jquant.core.qtypes import fp4_e2m1
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.fp8 import E8M0, checked, scale_geometry

__all__ = ["GptOssMXFP4", "fp4_qarray", "e8m0_view", "nvfp4_scales", "E8M0"]

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
MX_GROUP = 32
NV_GROUP = 16


def e8m0_view(group: TensorGroup, suffix: str) -> np.ndarray:
    """An MX scale tensor (uint8 biased exponents, or already float8_e8m0fnu) as float8_e8m0fnu."""
    group.require(suffix)
    dt = group.dtype(suffix)
    if dt not in (np.dtype(np.uint8), E8M0):
        raise group.error(suffix, f"MX scale dtype {dt.name} but uint8 / float8_e8m0fnu (E8M0 exponents) expected")
    return np.ascontiguousarray(group[suffix]).view(E8M0)


def nvfp4_scales(block_scale: np.ndarray, divisor: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """NVFP4 with a per-tensor global *divisor* g (compressed-tensors ``weight_global_scale``) -> (scale, scale2).

    compressed-tensors dequantizes with ``s_eff = float(s) / g`` (``_dequantize``: ``scale / global_scale``),
    one f32 division. The canonical form multiplies (``s * scale2``). We keep the e4m3 block scales and
    ``scale2 = f32(1 / g)`` when ``float(s) * f32(1/g) == float(s) / g`` bit for bit for every block
    scale present (always when g is a power of two, and for most other g); otherwise we fold the
    division into an f32 scale array (``scale = float(s) / g``, no scale2), 4x the scale bytes but
    bit-exact. Either way `dequantize` reproduces compressed-tensors' decompress exactly.
    """
    g = np.float32(np.asarray(divisor, np.float32).reshape(-1)[0])
    s = block_scale.astype(np.float32)
    folded = (s / g).astype(np.float32)
    inv = np.float32(np.float32(1) / g)
    if np.isfinite(inv) and np.array_equal((s * inv).view(np.uint32), folded.view(np.uint32)):
        return block_scale, np.full((1, 1), inv, np.float32)
    return folded, None


def fp4_qarray(
    group: TensorGroup,
    *,
    packed: str,
    scale: str,
    group_size: int,
    scale_kind: str,
    shape: tuple[int, int] | None = None,
    scale2: np.ndarray | None = None,
    global_divisor: np.ndarray | None = None,
) -> QArray:
    """An E2M1 weight packed two per byte with per-``group_size`` block scales.

    Args:
        group: the module's tensors.
        packed: suffix of the uint8 [N, K/2] codes.
        scale: suffix of the block scales [N, K/group_size].
        group_size: 16 (NVFP4) or 32 (MX).
        scale_kind: ``"e4m3"`` (float8_e4m3fn scales) or ``"e8m0"`` (uint8 exponents).
        shape: logical (N, K) if the checkpoint states it, else (N, 2 * packed columns).
        scale2: a per-tensor f32 *multiplier* of the block scales (ModelOpt ``weight_scale_2``).
        global_divisor: a per-tensor f32 *divisor* (compressed-tensors ``weight_global_scale``).
    """
    group.require(packed, scale)
    if group.dtype(packed) != np.dtype(np.uint8):
        raise group.error(packed, f"packed fp4 dtype {group.dtype(packed).name} but uint8 expected")
    pshape = group.shape(packed)
    if len(pshape) != 2:
        raise group.error(packed, f"expected 2-D packed fp4 codes, got shape {list(pshape)}")
    n, k = shape if shape is not None else (pshape[0], 2 * pshape[1])
    if tuple(pshape) != (n, k // 2) or k % 2:
        raise group.error(
            packed, f"packed shape {list(pshape)} does not fit fp4 weight [{n}, {k}] (two codes per byte)"
        )
    if scale_kind == "e8m0":
        s = e8m0_view(group, scale)
    elif scale_kind == "e4m3":
        if group.dtype(scale) != E4M3:
            raise group.error(scale, f"NVFP4 block scale dtype {group.dtype(scale).name} but float8_e4m3fn expected")
        s = np.asarray(group[scale])
    else:
        raise ValueError(scale_kind)
    s2d, blk = scale_geometry(group, scale, s.shape, n, k, strategy="group", group_size=group_size)
    s = s.reshape(s2d)
    if global_divisor is not None:
        s, scale2 = nvfp4_scales(s, global_divisor)
    q = QArray(data=np.asarray(group[packed]), scale=s, scale2=scale2, qtype=fp4_e2m1, shape=(n, k), block=blk)
    return checked(group, scale, q)


class GptOssMXFP4(Format, name="mxfp4"):
    """gpt-oss MXFP4 experts (see module docstring); every other tensor passes through."""

    quant_methods = ("mxfp4",)

    def __init__(self, exclude: tuple[str, ...]):
        self.exclude = exclude

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> GptOssMXFP4:
        qc = quant_config(config) or {}
        if not any(n.endswith("_blocks") for n in tensor_names):
            raise ConfigError("quant_method 'mxfp4' but no tensor ends in _blocks (gpt-oss MXFP4 layout)")
        return cls(tuple(qc.get("modules_to_not_convert") or ()))

    def convert_module(self, group: TensorGroup):
        bases = [s[: -len("_blocks")] for s in group if s.endswith("_blocks")]
        if not bases:
            return self.passthrough(group)
        out: dict[str, Any] = {}
        used: set[str] = set()
        for base in bases:
            blocks, scales, bias = f"{base}_blocks", f"{base}_scales", f"{base}_bias"
            group.require(scales)
            used |= {blocks, scales}
            out.update(self._convert(group, base, blocks, scales, bias if bias in group else None))
            if bias in group:
                used.add(bias)
        out.update(self.passthrough(group, skip=used))
        return out

    def _convert(self, group: TensorGroup, base: str, blocks: str, scales: str, bias: str | None):
        bshape, sshape = group.shape(blocks), group.shape(scales)
        if group.dtype(blocks) != np.dtype(np.uint8):
            raise group.error(blocks, f"dtype {group.dtype(blocks).name} but uint8 fp4 blocks expected")
        if len(bshape) not in (3, 4) or bshape[-1] != MX_GROUP // 2:
            raise group.error(blocks, f"shape {list(bshape)} is not [..., N, K/32, 16]")
        if tuple(sshape) != tuple(bshape[:-1]):
            raise group.error(
                scales, f"shape {list(sshape)} does not match blocks {list(bshape)} (expected {list(bshape[:-1])})"
            )
        b = np.asarray(group[blocks])
        s = np.ascontiguousarray(group[scales])
        if s.dtype not in (np.dtype(np.uint8), E8M0):
            raise group.error(scales, f"dtype {s.dtype} but uint8 E8M0 exponents expected")
        s = s.view(E8M0)
        n, kg = bshape[-3], bshape[-2]
        k = kg * MX_GROUP
        bias_arr = None if bias is None else np.asarray(group[bias])
        experts = [None] if len(bshape) == 3 else list(range(bshape[0]))
        if bias_arr is not None and bias_arr.shape != (*bshape[:-3], n):
            raise group.error(bias, f"bias shape {list(bias_arr.shape)} does not fit {len(experts)} x [{n}]")
        out: dict[str, Any] = {}
        for e in experts:
            name = f"{base}" if e is None else f"{e}.{base}"
            if base == "weight" and e is None:
                wname, bname = group.full_name("weight"), group.full_name("bias")
            else:
                wname, bname = group.full_name(f"{name}.weight"), group.full_name(f"{name}.bias")
            data = (b if e is None else b[e]).reshape(n, k // 2)
            sc = s if e is None else s[e]
            q = QArray(data=data, scale=sc, qtype=fp4_e2m1, shape=(n, k), block=(1, MX_GROUP))
            try:
                q.validate(wname)
            except FormatError as err:
                raise group.error(scales, f"expert {e}: {err.problem}" if e is not None else err.problem) from None
            out[wname] = q
            if bias_arr is not None:
                out[bname] = bias_arr if e is None else bias_arr[e]
        return out

    def describe(self):
        return {"format": self.name, "modules_to_not_convert": list(self.exclude)}
