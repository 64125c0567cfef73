"""TorchAO checkpoints saved as safetensors (``quant_method: "torchao"``; formats.md 9).

transformers' ``TorchAoConfig`` saves a quantized model through torchao's
``prototype/safetensors/safetensors_support.py flatten_tensor_state_dict``
(``quantizers/quantizer_torchao.py get_state_dict_and_metadata``): each tensor-subclass weight
``<m>.weight`` becomes plain tensors ``<m>._weight_<field>`` (one per non-None tensor field), and
the safetensors ``__metadata__`` holds, under ``"<m>.weight"``, the JSON
``{"_type": "Int8Tensor", "_data": {non-tensor attributes}, "_tensor_data_names": [fields]}``
(``TensorSubclassAttributeJSONEncoder``) plus ``"tensor_names"`` (every state-dict name). Plain
tensors keep their name and get ``{"_type": "Tensor"}``. config.json's ``quantization_config``
is ``{"quant_method": "torchao", "quant_type": {"default": {"_type": "<Config>", "_data": ...}},
"modules_to_not_convert": ..., "include_input_output_embeddings": ...}``. The per-tensor metadata
is authoritative (it is what torchao's ``unflatten_tensor_state_dict`` rebuilds); the config's
``_type`` is checked against it.

Layouts read (torchao 0.18 ``quantization/quantize_/workflows``; W = HF weight [N, K]):

* ``Int8Tensor`` (``Int8WeightOnlyConfig``, ``Int8DynamicActivationInt8WeightConfig``): ``qdata``
  int8 [N, K], ``scale`` float32 and ``zero_point`` int8 of shape ``[N / bn, K / bk]`` for the
  attribute ``block_size = [bn, bk]`` (per row [1, K], per tensor [N, K], or groups [1, G]);
  ``W = (qdata - zero_point) * scale`` (``dequantize_affine``). With ``act_quant_kwargs``
  (``QuantizeTensorToInt8Kwargs``: ``granularity`` PerRow / PerTensor, ``mapping_type``
  SYMMETRIC / ASYMMETRIC) the activations are quantized dynamically to int8:
  ``choose_qparams_affine`` gives ``amax / 127.5`` for SYMMETRIC (``(quant_max - quant_min) / 2``),
  i.e. jquant's ``scale_rule="half_range"``. Difference, stated: torchao then rounds
  ``x * (1 / s)`` (``quantize_affine``), jquant's spec ``x / s``; they can differ by one code
  where ``x / s`` lies within an ulp of a rounding boundary.
* ``Float8Tensor`` (``Float8WeightOnlyConfig``, ``Float8DynamicActivationFloat8WeightConfig``):
  ``qdata`` float8_e4m3fn (or e5m2) [N, K], ``scale`` float32 ``[N / bn, K / bk]`` (per row
  [N, 1], per tensor [1, 1] or a scalar, 128x128 blocks); ``W = qdata * scale``
  (``_dequantize_affine_float8``). ``act_quant_kwargs`` (``QuantizeTensorToFloat8Kwargs``):
  dynamic e4m3 activations per row (token), per tensor, or per 1x128 group (``PerBlock``), amax
  clamped at ``hp_value_ub`` when set.
* ``Int4Tensor`` (``Int4WeightOnlyConfig``, plain packing, mslk/FBGEMM): ``qdata`` [N, K / 2]
  bytes, two's-complement int4 ``q`` in [-8, 7], element 2j in the low nibble (``pack_int4``);
  ``scale`` and ``zero_point`` [K / G, N] in the weight dtype (transposed: "column major for
  Cutlass"), ``W[n, k] = q * scale[k // G, n] + zero_point[k // G, n]`` (``int4_row_quantize_zp``:
  ``zero = min + 8 * scale``, a float offset). torchao 0.18 has no ``Int4Tensor.dequantize`` and
  its quantizer needs the CUDA package ``mslk``, so this layout is tested with tensors built to
  that definition.

Canonical forms: ``Int8Tensor`` -> ``int8`` codes (or ``uint8`` codes ``qdata + 128`` with zero
points ``zero_point + 128`` when some zero point is not 0), scale as stored; ``Float8Tensor`` ->
``fp8_e4m3`` / ``fp8_e5m2``; ``Int4Tensor`` -> ``uint4b8`` codes (``nibble ^ 8``, i.e. ``q + 8``),
scale transposed to [N, K / G], float zero ``-zero_point`` transposed (``w = v * s - z``: the same
numbers, the negation is exact). Refused with a message naming the tensor: other tensor types
(``Int4TilePackedTo4dTensor``, ``Int4PlainInt32Tensor``, ``IntxUnpackedToInt8Tensor``,
``MXTensor``, ``NVFP4Tensor``: kernel-specific or not yet mapped), ``act_pre_scale`` (AWQ /
SmoothQuant input scaling), static activation scales, fp8 activations for int4 weights.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from jquant.core.qarray import QArray
from jquant.core.qtypes import fp8_e4m3, int8, uint4b8, uint8
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.fp8 import FP8_DTYPES, INPUT_QUANT, checked, module_excluded

__all__ = ["TorchAO"]

# Config class -> (tensor subclass, whether its weights carry an activation recipe).
CONFIG_TYPES: dict[str, tuple[str, bool]] = {
    "Int8WeightOnlyConfig": ("Int8Tensor", False),
    "Int8DynamicActivationInt8WeightConfig": ("Int8Tensor", True),
    "Float8WeightOnlyConfig": ("Float8Tensor", False),
    "Float8DynamicActivationFloat8WeightConfig": ("Float8Tensor", True),
    "Int4WeightOnlyConfig": ("Int4Tensor", False),
}
_READ_TYPES = ("Int8Tensor", "Float8Tensor", "Int4Tensor")
_HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is refused as corrupt


def _header_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` object of a safetensors file (strings), read from its JSON header."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CorruptFileError("truncated safetensors header", file=path)
            (n,) = struct.unpack("<Q", raw)
            if n > min(_HEADER_LIMIT, os.path.getsize(path) - 8):
                raise CorruptFileError(f"safetensors header length {n} is out of range", file=path)
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"safetensors header is not valid JSON ({e})", file=path) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _typed(d: Any, what: str) -> tuple[str, Any]:
    """(``_type``, ``_data``) of one encoded torchao object."""
    if not isinstance(d, dict) or not isinstance(d.get("_type"), str):
        raise ValueError(f"{what} is not an encoded torchao object: {str(d)[:80]}")
    return d["_type"], d.get("_data")


class TorchAO(Format, name="torchao"):
    """TorchAO tensor-subclass weights flattened into safetensors (see the module docstring)."""

    quant_methods = ("torchao",)

    def __init__(self, config_type: str | None, exclude: tuple[str, ...]):
        self.config_type = config_type
        self.exclude = exclude
        self._meta: dict[str, dict[str, str]] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> TorchAO:
        qc = quant_config(config) or {}
        qt = qc.get("quant_type")
        config_type = None
        if isinstance(qt, str):
            raise UnsupportedFormatError(
                f"torchao quant_type {qt!r} is the old string form; re-save the model with a torchao config object "
                "(transformers >= 4.56 / torchao >= 0.13 write quant_type as {'default': {'_type': ...}})",
                tensor="quantization_config.quant_type",
            )
        if isinstance(qt, Mapping):
            if set(qt) != {"default"}:
                raise UnsupportedFormatError(
                    f"torchao quant_type keys {sorted(qt)}: only {{'default': config}} is supported",
                    tensor="quantization_config.quant_type",
                )
            try:
                config_type, _ = _typed(qt["default"], "quant_type.default")
            except ValueError as e:
                raise ConfigError(str(e), tensor="quantization_config.quant_type") from None
            if config_type not in CONFIG_TYPES and config_type != "FqnToConfig":
                raise UnsupportedFormatError(
                    f"torchao config {config_type!r} is not supported; supported: {sorted(CONFIG_TYPES)}",
                    tensor="quantization_config.quant_type",
                )
        elif qt is not None:
            raise ConfigError(f"quant_type must be an object, got {type(qt).__name__}", tensor="quantization_config")
        if not any("._weight_qdata" in n or n.startswith("_weight_qdata") for n in tensor_names):
            raise ConfigError(
                "quant_method is torchao but no tensor is a flattened torchao weight (<module>._weight_qdata); "
                "pickled (pytorch_model.bin) torchao checkpoints are not supported, save with safetensors"
            )
        exclude = tuple(qc.get("modules_to_not_convert") or ())
        return cls(None if config_type == "FqnToConfig" else config_type, exclude)

    # -- metadata -----------------------------------------------------------------------------
    def _entry(self, group: TensorGroup, attr: str) -> dict:
        """The decoded metadata JSON of ``<prefix>.<attr>``, from any shard holding the group's tensors."""
        key = group.full_name(attr)
        files = sorted({group.file(s) for s in group if group.file(s)})
        for path in files:
            if path not in self._meta:
                self._meta[path] = _header_metadata(path)
            if "tensor_names" not in self._meta[path]:
                raise ConfigError(
                    "quant_method is torchao but the safetensors metadata has no 'tensor_names' "
                    "(not written by torchao's flatten_tensor_state_dict)",
                    file=path,
                )
            if key in self._meta[path]:
                try:
                    entry = json.loads(self._meta[path][key])
                except (ValueError, TypeError):
                    raise CorruptFileError("torchao metadata entry is not valid JSON", file=path, tensor=key) from None
                if not isinstance(entry, dict) or not isinstance(entry.get("_type"), str):
                    raise CorruptFileError("torchao metadata entry has no '_type'", file=path, tensor=key)
                return entry
        raise FormatError("flattened torchao weight without its metadata entry", file=files[0], tensor=key)

    # -- conversion ---------------------------------------------------------------------------
    def convert_module(self, group: TensorGroup) -> dict[str, Any]:
        attrs = sorted({s[1:].rsplit("_qdata", 1)[0] for s in group if s.startswith("_") and s.endswith("_qdata")})
        out: dict[str, Any] = {}
        used: set[str] = set()
        if attrs and module_excluded(group.prefix, self.exclude):
            raise group.error(f"_{attrs[0]}_qdata", "module is in modules_to_not_convert but carries a torchao weight")
        for attr in attrs:
            entry = self._entry(group, attr)
            kind = entry["_type"]
            fields = entry.get("_tensor_data_names")
            if not isinstance(fields, list) or "qdata" not in fields:
                raise CorruptFileError(f"_tensor_data_names {fields!r} has no 'qdata'", tensor=group.full_name(attr))
            for f in fields:
                group.require(f"_{attr}_{f}")
            used.update(f"_{attr}_{f}" for f in fields)
            if kind not in _READ_TYPES:
                raise group.error(
                    f"_{attr}_qdata",
                    f"torchao tensor type {kind} is not supported (supported: {', '.join(_READ_TYPES)})",
                    UnsupportedFormatError,
                )
            data = entry.get("_data") or {}
            self._check_config(group, attr, kind, data)
            if attr != "weight":
                raise group.error(
                    f"_{attr}_qdata", f"quantized parameter {attr!r} is not a linear weight", UnsupportedFormatError
                )
            for bad in ("act_pre_scale", "act_quant_scale", "act_quant_zero_point"):
                if bad in fields:
                    raise group.error(
                        f"_{attr}_{bad}",
                        f"{bad} (activation pre-scaling / static activation quantization) is not supported",
                        UnsupportedFormatError,
                    )
            reader = {"Int8Tensor": self._int8, "Float8Tensor": self._float8, "Int4Tensor": self._int4}[kind]
            q, act = reader(group, attr, fields, data)
            out[group.full_name(attr)] = checked(group, f"_{attr}_scale", q)
            if act is not None:
                out[group.full_name(INPUT_QUANT)] = act.validate(group.full_name(INPUT_QUANT))
        stray = sorted(s for s in group if s.startswith("_") and s not in used)
        if stray:
            raise group.error(stray[0], "flattened torchao field without its qdata / metadata entry")
        if attrs and "weight" in group:
            raise group.error("weight", "module has both a plain weight and a flattened torchao weight")
        out.update(self.passthrough(group, skip=used))
        return out

    def _check_config(self, group: TensorGroup, attr: str, kind: str, data: dict) -> None:
        if self.config_type is None:
            return
        want, with_act = CONFIG_TYPES[self.config_type]
        has_act = data.get("act_quant_kwargs") is not None
        if kind != want or (kind != "Int4Tensor" and has_act != with_act):
            raise group.error(
                f"_{attr}_qdata",
                f"metadata says {kind} {'with' if has_act else 'without'} activation quantization, "
                f"but quantization_config says {self.config_type}",
                ConfigError,
            )

    @staticmethod
    def _block(group: TensorGroup, attr: str, data: dict, n: int, k: int) -> tuple[int, int]:
        bs = data.get("block_size")
        if not (isinstance(bs, list) and len(bs) == 2 and all(isinstance(b, int) and b > 0 for b in bs)):
            raise group.error(f"_{attr}_qdata", f"block_size {bs!r} is not two positive ints for a 2-D weight")
        bn, bk = min(bs[0], n), min(bs[1], k)
        if n % bn or k % bk:
            raise group.error(f"_{attr}_qdata", f"block_size {bs} does not divide the weight shape [{n}, {k}]")
        return bn, bk

    @staticmethod
    def _scale(group: TensorGroup, suffix: str, shape: tuple[int, int], dtypes=(np.float32,)) -> np.ndarray:
        dt = group.dtype(suffix)
        if dt not in {np.dtype(d) for d in dtypes}:
            raise group.error(suffix, f"dtype {dt.name} but expected {', '.join(np.dtype(d).name for d in dtypes)}")
        a = np.asarray(group[suffix])
        if a.size != shape[0] * shape[1]:
            raise group.error(suffix, f"shape {list(a.shape)} does not hold {shape[0]} x {shape[1]} scales")
        return np.ascontiguousarray(a).reshape(shape)

    def _int8(self, group, attr, fields, data):
        qd = group.expect(f"_{attr}_qdata", dtypes=(np.int8,))
        if qd.ndim != 2:
            raise group.error(f"_{attr}_qdata", f"expected a 2-D int8 weight, got shape {list(qd.shape)}")
        n, k = qd.shape
        bn, bk = self._block(group, attr, data, n, k)
        ss = (n // bn, k // bk)
        s = self._scale(group, f"_{attr}_scale", ss, (np.float32, np.float16, ml_dtypes.bfloat16))
        zp = None
        if "zero_point" in fields:
            zs = f"_{attr}_zero_point"
            if (
                group.dtype(zs) not in (np.dtype(np.int8), np.dtype(np.int32))
                or int(np.prod(group.shape(zs))) != ss[0] * ss[1]
            ):
                raise group.error(zs, f"expected int8 zero points for {ss[0]} x {ss[1]} scales")
            zp = np.asarray(group[zs]).reshape(ss)
            if np.abs(zp.astype(np.int32)).max() > 127:
                raise group.error(zs, "zero point outside the int8 range")
        if zp is None or not zp.any():
            q = QArray(data=np.asarray(qd), scale=s, qtype=int8, shape=(n, k), block=(bn, bk))
        else:  # w = (q - zp) * s == (u - z) * s with u = q + 128, z = zp + 128 (both unsigned)
            u = (np.asarray(qd).astype(np.int16) + 128).astype(np.uint8)
            z = (zp.astype(np.int16) + 128).astype(np.uint8)
            q = QArray(data=u, scale=s, zero=z, qtype=uint8, shape=(n, k), block=(bn, bk))
        return q, self._int8_act(group, attr, data.get("act_quant_kwargs"))

    @staticmethod
    def _int8_act(group, attr, kw) -> ActQuant | None:
        if kw is None:
            return None
        try:
            t, d = _typed(kw, "act_quant_kwargs")
            gran_t, _ = _typed(d["granularity"], "granularity")
            mapping = d.get("mapping_type") or {"_type": "MappingType", "_data": "SYMMETRIC"}
            _, mapping = _typed(mapping, "mapping_type")
        except (ValueError, KeyError, TypeError) as e:
            raise group.error(f"_{attr}_qdata", f"bad act_quant_kwargs ({e})", CorruptFileError) from None
        gran = {"PerRow": "token", "PerToken": "token", "PerTensor": "tensor"}.get(gran_t)
        if t != "QuantizeTensorToInt8Kwargs" or gran is None or mapping not in ("SYMMETRIC", "ASYMMETRIC"):
            raise group.error(
                f"_{attr}_qdata",
                f"int8 activation recipe {t} / {gran_t} / {mapping} is not supported "
                "(dynamic PerRow or PerTensor, SYMMETRIC or ASYMMETRIC)",
                UnsupportedFormatError,
            )
        # choose_qparams_affine SYMMETRIC: amax / ((127 - -128) / 2) = amax / 127.5 ("half_range")
        return ActQuant(int8, True, gran, None, mapping == "SYMMETRIC", scale_rule="half_range")

    def _float8(self, group, attr, fields, data):
        suffix = f"_{attr}_qdata"
        dt = group.dtype(suffix)
        if dt not in FP8_DTYPES:
            raise group.error(suffix, f"dtype {dt.name} but a Float8Tensor holds float8_e4m3fn / float8_e5m2 codes")
        qd = np.asarray(group[suffix])
        if qd.ndim != 2:
            raise group.error(suffix, f"expected a 2-D fp8 weight, got shape {list(qd.shape)}")
        n, k = qd.shape
        bn, bk = self._block(group, attr, data, n, k)
        s = self._scale(group, f"_{attr}_scale", (n // bn, k // bk), (np.float32, np.float16, ml_dtypes.bfloat16))
        q = QArray(data=qd, scale=s, qtype=FP8_DTYPES[dt], shape=(n, k), block=(bn, bk))
        return q, self._float8_act(group, attr, data.get("act_quant_kwargs"))

    @staticmethod
    def _float8_act(group, attr, kw) -> ActQuant | None:
        if kw is None:
            return None
        where = f"_{attr}_qdata"
        try:
            t, d = _typed(kw, "act_quant_kwargs")
            gran_t, gran_d = _typed(d["granularity"], "granularity")
            fdt = d.get("float8_dtype")
            fdt = _typed(fdt, "float8_dtype")[1] if fdt is not None else "float8_e4m3fn"
        except (ValueError, KeyError, TypeError) as e:
            raise group.error(where, f"bad act_quant_kwargs ({e})", CorruptFileError) from None
        if t != "QuantizeTensorToFloat8Kwargs" or fdt != "float8_e4m3fn":
            raise group.error(where, f"fp8 activation recipe {t} / {fdt} is not supported", UnsupportedFormatError)
        if d.get("hp_value_lb") is not None:
            raise group.error(
                where, "a lower bound on activation amax (hp_value_lb) is not supported", UnsupportedFormatError
            )
        ub = d.get("hp_value_ub")
        if gran_t == "PerRow":
            gran, gs = "token", None
        elif gran_t == "PerTensor":
            gran, gs = "tensor", None
        elif gran_t == "PerBlock" and isinstance(gran_d, dict) and list(gran_d.get("block_size", [])[:1]) == [1]:
            gran, gs = "group", int(gran_d["block_size"][-1])
        else:
            raise group.error(
                where, f"fp8 activation granularity {gran_t} {gran_d} is not supported", UnsupportedFormatError
            )
        return ActQuant(fp8_e4m3, True, gran, gs, amax_ub=None if ub is None else float(ub))

    def _int4(self, group, attr, fields, data):
        suffix = f"_{attr}_qdata"
        if "zero_point" not in fields:
            raise group.error(f"_{attr}_zero_point", "Int4Tensor without zero_point")
        adt = data.get("activation_dtype")
        if adt is not None and _typed(adt, "activation_dtype")[1] not in ("bfloat16", "float16", "float32"):
            raise group.error(
                suffix, f"int4 weights with {adt.get('_data')} activations are not supported", UnsupportedFormatError
            )
        shape = data.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise group.error(suffix, f"Int4Tensor shape attribute {shape!r} is not a 2-D shape")
        n, k = shape
        if k % 2:
            raise group.error(suffix, f"K={k} is odd")
        qd = group.expect(suffix, shape=(n, k // 2), dtypes=(np.uint8, np.int8))
        bs = data.get("block_size")
        if not (isinstance(bs, list) and len(bs) == 2 and bs[0] == 1 and isinstance(bs[1], int) and bs[1] > 0):
            raise group.error(suffix, f"block_size {bs!r}: Int4Tensor is group-wise [1, G]")
        g = min(bs[1], k)
        ng = -(-k // g)
        sdt = (np.float32, np.float16, ml_dtypes.bfloat16)
        s = group.expect(f"_{attr}_scale", shape=(ng, n), dtypes=sdt)
        zp = group.expect(f"_{attr}_zero_point", shape=(ng, n), dtypes=sdt)
        # two's-complement nibble t holds q = t - 16 * (t >= 8); the canonical code q + 8 is t ^ 8
        codes = np.ascontiguousarray(qd).view(np.uint8) ^ np.uint8(0x88)
        q = QArray(
            data=codes,
            scale=np.ascontiguousarray(np.asarray(s).T),
            zero=np.ascontiguousarray(-np.asarray(zp).T),
            qtype=uint4b8,
            shape=(n, k),
            block=(1, g),
        )
        return q, None

    def describe(self):
        return {"format": self.name, "config": self.config_type}
