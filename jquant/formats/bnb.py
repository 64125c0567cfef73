"""bitsandbytes checkpoints as transformers saves them (``quant_method: "bitsandbytes"``; formats.md 6).

**4-bit (NF4 / FP4)**, ``load_in_4bit``. ``Linear4bit._save_to_state_dict`` (bitsandbytes
``nn/modules.py``) writes, for module ``<m>``, the packed codes ``<m>.weight`` plus every entry of
``QuantState.as_dict(packed=True)`` (``functional.py``) as ``<m>.weight.<key>``:

* ``weight``: ``ceil(N*K/2)`` bytes, shape ``(bytes / itemsize, 1)`` in the ``bnb_4bit_quant_storage``
  dtype (uint8 by default; bf16 / f32 / ... storage only reinterprets the same bytes,
  ``backends/default/ops.py quantize_4bit``: ``packed.view(quant_storage)``). The weight [N, K]
  is flattened row-major; two codes per byte with the FIRST element in the HIGH nibble.
* ``absmax``: one scale per block of ``blocksize`` consecutive elements of the flattened weight
  (blocks run across row ends; the last one may be short): float32, or uint8 codes when the
  statistics are double-quantized (``bnb_4bit_use_double_quant``), with ``nested_absmax`` (f32,
  one per 256 absmax values), ``nested_quant_map`` (f32 [256], the 8-bit dynamic map) and the
  blob's ``nested_offset`` (``absmax.mean()``).
* ``quant_map``: the 16-entry code book (f32). bitsandbytes' dequantizers ignore it and use the
  table of ``quant_type`` (``backends/utils.py _get_4bit_code``); jquant checks that it equals that
  table. The FP4 table's code 8 is +0.0 there (``get_4bit_type`` writes ``-0``, a Python int) and
  -0.0 in `jquant.core.qtypes.bnb_fp4`, so FP4 code 8 is stored as code 0 (also +0.0): every
  dequantized bit, the sign of zero included, is bitsandbytes'.
* ``quant_state.bitsandbytes__nf4`` / ``__fp4``: a uint8 tensor holding UTF-8 JSON
  (``utils.py pack_dict_to_tensor``): ``quant_type``, ``blocksize``, ``dtype`` (the weight's dtype at
  quantization, the dtype bitsandbytes dequantizes to), ``shape`` [N, K]; when nested also
  ``nested_blocksize``, ``nested_dtype``, ``nested_offset``. The blob is authoritative
  (``QuantState.from_dict``).

Dequantization (``functional.py dequantize_4bit``, ``backends/default/ops.py
_dequantize_4bit_compute``; the CPU backend's C kernels compute the same float32 products)::

    absmax[i] = nested_quant_map[absmax_u8[i]] * nested_absmax[i // nested_blocksize] + nested_offset   # if nested
    W.flat[j] = quant_map[code[j]] * absmax[j // blocksize]                                               # then .to(dtype)

Canonical form: `QArray` with qtype ``nf4`` / ``bnb_fp4``, codes repacked low nibble first
(a nibble swap of every byte: N*K is even because K must be; FP4 code 8 -> 0, above), float32 scales ``absmax`` (the
double-quantized statistics expanded exactly as above, in float32, so the canonical product is
bitsandbytes' own). Blocks map onto per-row groups of ``G = gcd(K, blocksize)`` columns: every
such group lies inside one bitsandbytes block (both boundaries are multiples of G in the flat
index), so ``scale[n, j] = absmax[(n*K + j*G) // blocksize]`` is exact even when a block straddles
rows (K not a multiple of the blocksize; then scales repeat). ``G = blocksize`` whenever
``blocksize`` divides K (every transformers checkpoint of a real LLM).

**LLM.int8**, ``load_in_8bit``. ``Linear8bitLt._save_to_state_dict`` writes ``<m>.weight`` int8
[N, K] (row-wise absmax quantization, ``int8_vectorwise_quant``: ``round(w * 127 / SCB)``),
``<m>.SCB`` f32 [N] (the per-row absmax) and ``<m>.weight_format`` uint8 scalar (0 = "row", the
only layout ``Linear8bitLt._load_from_state_dict`` accepts; older checkpoints omit it). Canonical:
``int8`` codes, per-channel float32 scale ``SCB * float32(1/127)``: bit-exact with bitsandbytes'
CPU/XPU dequantization ``CB * SCB.mul(1.0 / 127.0)`` (``autograd/_functions.py
MatMul8bitFp.forward``); ``int8_vectorwise_dequant`` (``_ops.py``) rounds in the other order,
``(CB * SCB) * (1/127)``, and differs from it by at most one float32 ulp.

*The outlier threshold* (``llm_int8_threshold``, default 6.0) is not a property of the weights: at
inference ``MatMul8bitLt.forward`` casts the activations to fp16, moves every input column with
some ``|x| >= threshold`` to a float matmul against the dequantized weight columns, quantizes the
remaining columns per token to int8 (absmax / 127) and runs an int8 x int8 matmul on them. jquant
computes ``x @ (CB * SCB / 127).T`` in the activation precision, weight-only (W8A16): the limit of
LLM.int8 when every column counts as an outlier, i.e. the exact product that LLM.int8's activation
split approximates. The threshold is recorded in the checkpoint metadata only.

Refused: 4-bit modules with an odd K (canonical rows are whole bytes), ``llm_int8_has_fp16_weight``
(float weights re-quantized at every forward, a training mode), non-"row" ``weight_format``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.core.qarray import QArray
from jquant.core.qtypes import bnb_fp4, int8, nf4
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = ["BitsAndBytes", "BnbConfig", "QUANT_TYPES"]

CONFIG_FILE = "config.json"
QUANT_TYPES = {"nf4": nf4, "fp4": bnb_fp4}
_QS = "weight.quant_state.bitsandbytes__"
# ``bnb_4bit_quant_storage`` values transformers accepts (``BitsAndBytesConfig.post_init``).
_STORAGE = {
    "uint8": np.dtype(np.uint8),
    "int8": np.dtype(np.int8),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
_FLOAT_DTYPES = ("float32", "float16", "bfloat16")
_INV127 = np.float32(1.0) / np.float32(127.0)  # == float32(7.874015718698502e-3), bitsandbytes' 1/127
# bitsandbytes utils.py LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING
_WEIGHT_FORMATS = {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}


def _cfg_error(key: str, problem: str, cls: type[FormatError] = ConfigError) -> FormatError:
    return cls(problem, file=CONFIG_FILE, tensor=f"quantization_config.{key}")


def _flag(qc: Mapping[str, Any], key: str) -> bool:
    v = qc.get(key, qc.get("_" + key, False))
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _cfg_error(key, f"{key}={v!r} must be true or false")
    return v


@dataclasses.dataclass(frozen=True)
class BnbConfig:
    """A parsed bitsandbytes ``quantization_config`` (transformers ``BitsAndBytesConfig.to_dict``).

    Attributes:
        bits: 4 (``load_in_4bit``) or 8 (``load_in_8bit``).
        quant_type: ``"nf4"`` / ``"fp4"`` (4-bit).
        double_quant: ``bnb_4bit_use_double_quant``.
        storage: ``bnb_4bit_quant_storage`` (dtype name of the packed-bytes tensor).
        compute_dtype: ``bnb_4bit_compute_dtype`` (informational).
        threshold: ``llm_int8_threshold`` (an inference-time activation split, see the module docstring).
        skip_modules: ``llm_int8_skip_modules`` (stored unquantized).
    """

    bits: int
    quant_type: str = "nf4"
    double_quant: bool = False
    storage: str = "uint8"
    compute_dtype: str | None = None
    threshold: float = 6.0
    skip_modules: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, qc: Mapping[str, Any]) -> BnbConfig:
        """Parses and validates the config.

        Raises:
            ConfigError: neither or both of ``load_in_4bit`` / ``load_in_8bit``, unknown values.
            UnsupportedFormatError: ``llm_int8_has_fp16_weight``.
        """
        four, eight = _flag(qc, "load_in_4bit"), _flag(qc, "load_in_8bit")
        if four == eight:
            raise _cfg_error(
                "load_in_4bit",
                "exactly one of load_in_4bit / load_in_8bit must be true, got "
                f"load_in_4bit={four}, load_in_8bit={eight}",
            )
        qt = str(qc.get("bnb_4bit_quant_type") or "fp4").lower()  # transformers' default is fp4
        if qt not in QUANT_TYPES:
            raise _cfg_error(
                "bnb_4bit_quant_type", f"bnb_4bit_quant_type={qt!r}, expected one of {sorted(QUANT_TYPES)}"
            )
        storage = str(qc.get("bnb_4bit_quant_storage") or "uint8").removeprefix("torch.")
        if storage not in _STORAGE:
            raise _cfg_error(
                "bnb_4bit_quant_storage", f"bnb_4bit_quant_storage={storage!r}, expected one of {sorted(_STORAGE)}"
            )
        if eight and _flag(qc, "llm_int8_has_fp16_weight"):
            raise _cfg_error(
                "llm_int8_has_fp16_weight",
                "llm_int8_has_fp16_weight=true: float weights re-quantized at every forward (training mode)",
                UnsupportedFormatError,
            )
        thr = qc.get("llm_int8_threshold", 6.0)
        if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not math.isfinite(thr) or thr < 0:
            raise _cfg_error("llm_int8_threshold", f"llm_int8_threshold={thr!r} must be a finite number >= 0")
        skip = qc.get("llm_int8_skip_modules") or ()
        if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
            raise _cfg_error("llm_int8_skip_modules", f"llm_int8_skip_modules={skip!r} must be a list of names")
        cd = qc.get("bnb_4bit_compute_dtype")
        return cls(
            bits=4 if four else 8,
            quant_type=qt,
            double_quant=_flag(qc, "bnb_4bit_use_double_quant"),
            storage=storage,
            compute_dtype=None if cd is None else str(cd).removeprefix("torch."),
            threshold=float(thr),
            skip_modules=tuple(skip),
        )


class BitsAndBytes(Format, name="bnb"):
    """bitsandbytes NF4 / FP4 (plain or double-quantized statistics) and LLM.int8 checkpoints."""

    quant_methods = ("bitsandbytes",)

    def __init__(self, cfg: BnbConfig):
        self.cfg = cfg

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> BitsAndBytes:
        cfg = BnbConfig.from_dict(quant_config(config) or {})
        has4 = any(".weight.quant_state." in n or n.endswith(".weight.absmax") for n in tensor_names)
        has8 = any(n.endswith(".SCB") for n in tensor_names)
        key = "load_in_4bit" if cfg.bits == 4 else "load_in_8bit"
        if cfg.bits == 4 and has8 or cfg.bits == 8 and has4:
            other = "LLM.int8 *.SCB" if has8 else "4-bit *.weight.quant_state / absmax"
            raise _cfg_error(key, f"{key} is true but the checkpoint holds {other} tensors")
        if not (has4 or has8):
            want = "*.weight.quant_state.bitsandbytes__*" if cfg.bits == 4 else "*.SCB"
            raise _cfg_error(key, f"{key} is true but no tensor is named {want}")
        return cls(cfg)

    def split_name(self, name: str) -> tuple[str, str]:
        # <m>.weight.absmax, <m>.weight.quant_state.bitsandbytes__nf4 ... belong to module <m>
        i = name.rfind(".weight.")
        if i >= 0:
            return name[:i], name[i + 1 :]
        return super().split_name(name)

    def convert_module(self, group: TensorGroup) -> dict[str, QArray | np.ndarray]:
        four = [s for s in group if s.startswith("weight.")]
        if four:
            if self.cfg.bits != 4:
                raise group.error(four[0], "a 4-bit bitsandbytes tensor, but the config says load_in_8bit", ConfigError)
            out = self.passthrough(group, skip=("weight", *four))
            out[group.full_name("weight")] = self._convert_4bit(group)
            return out
        if "SCB" in group:
            if self.cfg.bits != 8:
                raise group.error("SCB", "an LLM.int8 tensor, but the config says load_in_4bit", ConfigError)
            out = self.passthrough(group, skip=("weight", "SCB", "weight_format"))
            out[group.full_name("weight")] = self._convert_int8(group)
            return out
        if "weight" in group and group.dtype("weight") == np.int8 and len(group.shape("weight")) == 2:
            raise FormatError("missing tensor (an int8 weight needs its per-row scales)", file=group.file("weight"),
                              tensor=group.full_name("SCB"))  # fmt: skip
        return self.passthrough(group)

    # ---- 4-bit ------------------------------------------------------------------------------
    def _quant_state(self, group: TensorGroup) -> tuple[str, dict[str, Any]]:
        """The quant_state blob's suffix and decoded JSON (``bitsandbytes/utils.py unpack_tensor_to_dict``)."""
        keys = [s for s in group if s.startswith("weight.quant_state.")]
        if not keys:
            raise FormatError(
                "missing tensor (a 4-bit module needs its quant_state blob)",
                file=group.file("weight") or group.file(next(iter(group))),
                tensor=group.full_name(_QS + self.cfg.quant_type),
            )
        if len(keys) > 1:
            raise group.error(keys[1], f"more than one quant_state tensor: {sorted(keys)}")
        key = keys[0]
        qt = key.removeprefix(_QS)
        if not key.startswith(_QS) or qt not in QUANT_TYPES:
            raise group.error(key, "unknown quant_state tensor (expected bitsandbytes__nf4 or bitsandbytes__fp4)")
        raw = np.asarray(group[key])
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise group.error(key, f"quant_state must be a 1-D uint8 tensor, got {raw.dtype} {list(raw.shape)}")
        try:
            blob = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise group.error(key, f"quant_state bytes are not UTF-8 JSON ({e})") from None
        if not isinstance(blob, dict):
            raise group.error(key, "quant_state JSON is not an object")
        if blob.get("quant_type") != qt:
            raise group.error(key, f"quant_state says quant_type={blob.get('quant_type')!r} but is named for {qt!r}")
        if qt != self.cfg.quant_type:
            raise group.error(key, f"{qt} tensor but the config says bnb_4bit_quant_type={self.cfg.quant_type!r}",
                              ConfigError)  # fmt: skip
        return key, blob

    def _convert_4bit(self, group: TensorGroup) -> QArray:
        key, blob = self._quant_state(group)
        qt = QUANT_TYPES[blob["quant_type"]]
        shape, bs = blob.get("shape"), blob.get("blocksize")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and d > 0 for d in shape)):
            raise group.error(key, f"quant_state shape {shape!r} is not a 2-D weight shape", UnsupportedFormatError)
        if not isinstance(bs, int) or bs < 2 or bs & (bs - 1):
            raise group.error(key, f"quant_state blocksize {bs!r} is not a power of two >= 2")
        if blob.get("dtype") not in _FLOAT_DTYPES:
            raise group.error(key, f"quant_state dtype {blob.get('dtype')!r} is not one of {list(_FLOAT_DTYPES)}")
        n, k = shape
        if k % 2:
            raise group.error(
                "weight", f"K={k} is odd: its rows do not start on whole bytes (canonical 4-bit rows must)",
                UnsupportedFormatError,
            )  # fmt: skip
        nblocks = -(-n * k // bs)

        # packed codes, in whatever storage dtype: the same bytes (backends/default/ops.py quantize_4bit)
        group.require("weight")
        storage = _STORAGE[self.cfg.storage]
        if group.dtype("weight") != storage:
            raise group.error(
                "weight", f"dtype {group.dtype('weight').name} but bnb_4bit_quant_storage={self.cfg.storage!r}",
                ConfigError,
            )  # fmt: skip
        wshape = group.shape("weight")
        nbytes = int(np.prod(wshape, dtype=np.int64)) * storage.itemsize
        if len(wshape) not in (1, 2) or (len(wshape) == 2 and wshape[1] != 1) or nbytes != n * k // 2:
            raise group.error(
                "weight", f"packed shape {list(wshape)} ({nbytes} bytes) does not hold {n}x{k} 4-bit codes "
                f"({n * k // 2} bytes, shape [{n * k // 2 // storage.itemsize}, 1])",
            )  # fmt: skip
        packed = np.ascontiguousarray(group["weight"]).view(np.uint8).reshape(n, k // 2)
        lo, hi = packed >> 4, packed & 0x0F  # element 2i is the HIGH nibble in bitsandbytes, the low one canonically
        if qt is bnb_fp4:  # code 8 is +0.0 in bitsandbytes' FP4 table, -0.0 in bnb_fp4: use code 0 (+0.0)
            lo = np.where(lo == 8, np.uint8(0), lo)
            hi = np.where(hi == 8, np.uint8(0), hi)
        data = (lo | (hi << 4)).astype(np.uint8)

        # code book: must be the quant_type's (bitsandbytes' kernels use that table, not this tensor)
        qm = group.expect("weight.quant_map", shape=(16,), dtypes=(np.float32,))
        if not np.array_equal(np.asarray(qm), np.asarray(qt.codebook, np.float32)):
            raise group.error("weight.quant_map", f"code book differs from bitsandbytes' {blob['quant_type']} table")

        absmax = self._absmax(group, key, blob, nblocks)
        g = math.gcd(k, bs)
        idx = (np.arange(n, dtype=np.int64)[:, None] * k + np.arange(k // g, dtype=np.int64)[None, :] * g) // bs
        scale = absmax[idx]
        q = QArray(data=data, scale=scale, qtype=qt, shape=(n, k), block=(1, g))
        try:
            return q.validate(group.full_name("weight"))
        except FormatError as e:
            raise group.error("weight.absmax", e.problem, type(e)) from None

    def _absmax(self, group: TensorGroup, key: str, blob: dict, nblocks: int) -> np.ndarray:
        """Per-block absmax as float32 [nblocks], double quantization undone exactly (see module docstring)."""
        nested = "nested_blocksize" in blob or "weight.nested_absmax" in group
        if nested != self.cfg.double_quant:
            raise group.error(
                "weight.absmax", f"{'double' if nested else 'single'}-quantized statistics but the config says "
                f"bnb_4bit_use_double_quant={self.cfg.double_quant}", ConfigError,
            )  # fmt: skip
        if not nested:
            a = group.expect("weight.absmax", shape=(nblocks,), dtypes=(np.float32, np.float16, ml_dtypes.bfloat16))
            a = np.asarray(a).astype(np.float32)
        else:
            for f in ("nested_blocksize", "nested_offset"):
                if f not in blob:
                    raise group.error(key, f"double-quantized state lacks {f!r}")
            nbs, off = blob["nested_blocksize"], blob["nested_offset"]
            if not isinstance(nbs, int) or nbs < 2 or nbs & (nbs - 1):
                raise group.error(key, f"nested_blocksize {nbs!r} is not a power of two >= 2")
            if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
                raise group.error(key, f"nested_offset {off!r} is not a finite number")
            codes = group.expect("weight.absmax", shape=(nblocks,), dtypes=(np.uint8,))
            nmax = group.expect("weight.nested_absmax", shape=(-(-nblocks // nbs),), dtypes=(np.float32,))
            nmap = group.expect("weight.nested_quant_map", shape=(256,), dtypes=(np.float32,))
            for s, arr in (("weight.nested_absmax", nmax), ("weight.nested_quant_map", nmap)):
                if not np.isfinite(arr).all():
                    bad = int(np.argmax(~np.isfinite(arr)))
                    raise group.error(s, f"non-finite value {arr[bad]} at index {bad}")
            # functional.py dequantize_4bit: dequantize_blockwise(absmax, state2) + offset, all float32
            a = np.asarray(nmap)[np.asarray(codes)] * np.repeat(np.asarray(nmax), nbs)[:nblocks]
            a = a + np.float32(off)
        if not np.isfinite(a).all():
            bad = int(np.argmax(~np.isfinite(a)))
            raise group.error("weight.absmax", f"non-finite absmax {a[bad]} at block {bad}")
        return a

    # ---- LLM.int8 ---------------------------------------------------------------------------
    def _convert_int8(self, group: TensorGroup) -> QArray:
        w = group.expect("weight", dtypes=(np.int8,))
        if w.ndim != 2:
            raise group.error("weight", f"expected a 2-D int8 weight, got shape {list(w.shape)}")
        n, k = w.shape
        scb = np.asarray(group.expect("SCB", shape=(n,), dtypes=(np.float32,)))
        if not np.isfinite(scb).all():
            bad = int(np.argmax(~np.isfinite(scb)))
            raise group.error("SCB", f"non-finite scale {scb[bad]} at row {bad}")
        if "weight_format" in group:
            wf = np.asarray(group["weight_format"])
            if wf.size != 1 or wf.dtype.kind not in "ui":
                raise group.error("weight_format", f"expected an integer scalar, got {wf.dtype} {list(wf.shape)}")
            v = int(wf.reshape(()))
            if v != 0:
                name = _WEIGHT_FORMATS.get(v, f"unknown ({v})")
                raise group.error("weight_format", f"weight_format {name}: only 'row' (0) is supported",
                                  UnsupportedFormatError)  # fmt: skip
        # autograd/_functions.py MatMul8bitFp.forward: CB * SCB.mul(1.0 / 127.0), float32
        scale = (scb * _INV127).reshape(n, 1)
        return QArray(data=np.asarray(w), scale=scale, qtype=int8, shape=(n, k), block=(1, k)).validate(
            group.full_name("weight")
        )

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self.cfg)
        d["skip_modules"] = list(self.cfg.skip_modules)
        if self.cfg.bits == 8:
            d["inference"] = "weight-only W8A16; llm_int8_threshold is bitsandbytes' runtime activation split"
        return {"format": self.name, "bnb": d}
