"""compressed-tensors checkpoints (llm-compressor and others; ``quant_method: "compressed-tensors"``).

Config (formats.md 4.1; compressed-tensors ``quantization/quant_config.py``): ``config_groups``
map a name to ``{targets, weights, input_activations, output_activations, format}``; a module is
quantized by the group whose targets match it (exact name > ``re:`` regex via ``re.match`` >
class name such as ``"Linear"``; ``ignore`` uses the same matcher and wins,
``compressed_tensors/utils/match.py``). A group's ``format`` overrides the global one.

Only tensor names are on disk, not module classes, so a class target (``"Linear"``) is taken to
match every module that carries quantization tensors (``weight_scale`` / ``weight_packed`` /
``input_scale``...); modules it cannot see (embeddings, norms) pass through unchanged. Exact and
regex targets are matched on the names as written. Limitation: an activation-only scheme with
*dynamic* activations and a class target leaves no tensor to recognise its modules by; use
exact or regex targets for those (none of llm-compressor's presets is such a scheme).

Per compression format (``compressors/*/base.py``; canonical result in brackets):

* ``pack-quantized``: ``weight_packed`` int32 [N, ceil(K*b/32)] (dense little-endian bitstream,
  compressed-tensors >= 0.18) or [N, ceil(K/(32//b))] (whole codes per word, <= 0.17; the two differ
  only for b in 3, 5, 6, 7 and are told apart by the packed width, then by ``version``); codes are
  offset binary ``q + 2**(b-1)``. Symmetric -> [``uint{b}b{2**(b-1)}``, no zero]; asymmetric ->
  ``weight_zero_point`` packed the same way along dim 0 -> [``uint{b}``, unsigned zero
  ``zp + 2**(b-1)``]. ``weight_shape`` int64 [2] holds (N, K). Group act-order stores
  ``weight_g_idx`` [K] -> [``perm = argsort(g_idx)``, columns regrouped]; ``actorder: weight``
  stores nothing extra.
* ``int-quantized`` / ``naive-quantized`` (int): ``weight`` int8 [N, K] -> [``int8``; asymmetric:
  ``uint8`` codes ``q + 128`` with zero ``zp + 128``; narrower ints are repacked offset-binary].
* ``float-quantized`` / ``naive-quantized`` (float): ``weight`` float8_e4m3fn -> [``fp8_e4m3``].
* ``nvfp4-pack-quantized``: see `jquant.formats.mxfp4.nvfp4_scales` for the global-scale divisor.
* ``mxfp4-pack-quantized`` / ``mxfp8-quantized``: uint8 E8M0 scales per 32 -> float8_e8m0fnu.
* ``mxfp6-pack-quantized``: FP6 E2M3 codes, 4 per 3 bytes, widened to bytes (`jquant.formats.mxfp6`).
* scale strategies: tensor (1,), channel (N, 1), group (N, K/G), block (ceil(N/bn), ceil(K/bk)).

Input activations become an `ActQuant` at ``<module>.input_quant`` (``input_scale``,
``input_zero_point``, ``input_global_scale`` consumed); dynamic ones with
``scale_rule="half_range"`` (compressed-tensors' ``calculate_qparams``: int8 ``amax / 127.5``).
KV-cache scales (``<attn>.k_scale``, ``v_scale``, from ``kv_cache_scheme``) go to
``Checkpoint.metadata["kv_cache"]``, never to weights.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.core.packing import pack_codes, unpack_bitstream
from jquant.core.qarray import QArray
from jquant.core.qtypes import fp4_e2m1, fp8_e4m3, int8, int_type
from jquant.formats.base import Format, TensorGroup, quant_config
from jquant.formats.fp8 import (
    FLOAT_SCALE_DTYPES,
    INPUT_QUANT,
    KVCache,
    checked,
    fp8_qarray,
    load_scale,
    scalar,
    scale_geometry,
)
from jquant.formats.mxfp4 import E8M0, MX_GROUP, NV_GROUP, fp4_qarray
from jquant.formats.mxfp6 import fp6_qarray

__all__ = ["CompressedTensors", "CTArgs", "CTScheme", "unpack_int32"]

FORMATS = (
    "pack-quantized",
    "int-quantized",
    "naive-quantized",
    "float-quantized",
    "nvfp4-pack-quantized",
    "mxfp4-pack-quantized",
    "mxfp6-pack-quantized",
    "mxfp8-quantized",
    "dense",
)
_STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group", "attn_head")
# Tensors of a quantized module that are consumed here (everything else, e.g. bias, passes through).
_WEIGHT_PARAMS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "weight_global_scale")
_INPUT_PARAMS = ("input_scale", "input_zero_point", "input_global_scale")
_KV_PARAMS = re.compile(r"^[kvq]_(scale|zero_point)$")


@dataclasses.dataclass(frozen=True)
class CTArgs:
    """The subset of compressed-tensors ``QuantizationArgs`` that decides the layout."""

    num_bits: int = 8
    type: str = "int"
    symmetric: bool = True
    strategy: str | None = None
    group_size: int | None = None
    block_structure: tuple[int, int] | None = None
    dynamic: bool | str = False
    actorder: str | None = None
    scale_dtype: str | None = None

    @classmethod
    def parse(cls, d: Any, where: str) -> CTArgs | None:
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where} must be an object, got {d!r}")
        try:
            a = cls(
                num_bits=int(d.get("num_bits", 8)),
                type=str(d.get("type", "int")).lower(),
                symmetric=bool(d.get("symmetric", True)),
                strategy=None if d.get("strategy") is None else str(d["strategy"]).lower(),
                group_size=None if d.get("group_size") is None else int(d["group_size"]),
                block_structure=None
                if d.get("block_structure") is None
                else tuple(int(x) for x in d["block_structure"]),
                dynamic=d.get("dynamic", False),
                actorder={"dynamic": "group", "static": "weight"}.get(d.get("actorder"), d.get("actorder")),
                scale_dtype=None if d.get("scale_dtype") is None else str(d["scale_dtype"]).replace("torch.", ""),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: malformed quantization args ({e})") from None
        if a.strategy is None:  # compressed-tensors' validator: group_size implies group, else tensor
            a = dataclasses.replace(a, strategy="group" if a.group_size not in (None, -1) else "tensor")
        if a.strategy not in _STRATEGIES:
            raise UnsupportedFormatError(f"{where}: unknown strategy {a.strategy!r}")
        if a.type not in ("int", "float"):
            raise UnsupportedFormatError(f"{where}: unknown type {a.type!r}")
        if not 1 <= a.num_bits <= 8:
            raise UnsupportedFormatError(f"{where}: num_bits={a.num_bits} outside 1..8")
        if a.dynamic not in (True, False, "local"):
            raise ConfigError(f"{where}: dynamic={a.dynamic!r} is not true, false or 'local'")
        if a.actorder not in (None, "group", "weight"):
            raise ConfigError(f"{where}: unknown actorder {a.actorder!r}")
        if a.strategy == "block" and (a.block_structure is None or len(a.block_structure) != 2):
            raise ConfigError(f"{where}: block strategy needs block_structure [bn, bk], got {d.get('block_structure')}")
        if a.strategy in ("group", "tensor_group") and (a.group_size is None or a.group_size <= 0):
            raise ConfigError(f"{where}: {a.strategy} strategy needs a positive group_size, got {a.group_size}")
        return a

    @property
    def is_mx(self) -> bool:
        return self.type == "float" and self.group_size == MX_GROUP and self.scale_dtype == "uint8"


@dataclasses.dataclass(frozen=True)
class CTScheme:
    """One config group: what its targets are and how their tensors are stored."""

    name: str
    targets: tuple[str, ...]
    weights: CTArgs | None
    input_activations: CTArgs | None
    output_activations: CTArgs | None
    format: str


def unpack_int32(words: np.ndarray, bits: int, count: int, axis: int, dense: bool) -> np.ndarray:
    """compressed-tensors int32 packing -> uint8 codes along ``axis`` (``count`` of them).

    Args:
        words: int32 array.
        bits: 1..8.
        count: codes to read along ``axis``.
        axis: the packed axis (1 for weights, 0 for zero points).
        dense: True for the >= 0.18 bitstream (codes may straddle words), False for the
            <= 0.17 layout (``32 // bits`` whole codes per word at shifts ``bits * j``).
    """
    if dense:
        return unpack_bitstream(words, bits, count, axis=axis)
    pf = 32 // bits
    w = np.moveaxis(np.asarray(words), axis, -1).astype("<i4").view("<u4")
    shifts = (np.arange(pf, dtype=np.uint32) * bits).astype(np.uint32)
    codes = (w[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    codes = codes.reshape(*w.shape[:-1], w.shape[-1] * pf)[..., :count].astype(np.uint8)
    return np.moveaxis(codes, -1, axis)


def _packed_len(count: int, bits: int, dense: bool) -> int:
    return -(-count * bits // 32) if dense else -(-count // (32 // bits))


def _version_is_dense(version: str | None) -> bool | None:
    """compressed-tensors >= 0.18.0 packs densely (commit 66e631f6); None when unknown."""
    if not version:
        return None
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2))) >= (0, 18)


class CompressedTensors(Format, name="compressed-tensors"):
    """compressed-tensors (see module docstring)."""

    quant_methods = ("compressed-tensors",)

    def __init__(self, schemes: list[CTScheme], ignore: tuple[str, ...], kv: KVCache, version: str | None):
        self.schemes = schemes
        self.ignore = ignore
        self.kv = kv
        self.version = version

    # ---- config ---------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> CompressedTensors:
        qc = quant_config(config) or {}
        status = str(qc.get("quantization_status", "compressed")).lower()
        if status != "compressed":
            raise UnsupportedFormatError(
                f"quantization_status {status!r}: only 'compressed' checkpoints are supported "
                "(frozen / fake-quantized weights are stored dense)"
            )
        if qc.get("transform_config"):
            raise UnsupportedFormatError("transform_config (online Hadamard / rotation transforms) is not supported")
        sp = qc.get("sparsity_config") or {}
        if sp and str(sp.get("format", "dense")).lower() != "dense":
            raise UnsupportedFormatError(f"sparsity_config format {sp.get('format')!r} is not supported")
        global_fmt = qc.get("format")
        groups = qc.get("config_groups")
        if not isinstance(groups, Mapping) or not groups:
            raise ConfigError("compressed-tensors quantization_config has no config_groups")
        schemes = []
        for gname, g in groups.items():
            where = f"config_groups.{gname}"
            if not isinstance(g, Mapping):
                raise ConfigError(f"{where} must be an object")
            fmt = g.get("format") or global_fmt
            if fmt is None or fmt == "mixed-precision":
                raise ConfigError(f"{where} has no format and the global format is {global_fmt!r}")
            fmt = str(fmt)
            if fmt not in FORMATS:
                raise UnsupportedFormatError(
                    f"{where}: unknown or unsupported format {fmt!r}; supported: {list(FORMATS)}"
                )
            targets = g.get("targets")
            if isinstance(targets, str):
                targets = [targets]
            if not targets:
                raise ConfigError(f"{where} has no targets")
            if g.get("output_activations"):
                raise UnsupportedFormatError(f"{where}: output activation quantization is not supported")
            schemes.append(
                CTScheme(
                    name=str(gname),
                    targets=tuple(str(t) for t in targets),
                    weights=CTArgs.parse(g.get("weights"), f"{where}.weights"),
                    input_activations=CTArgs.parse(g.get("input_activations"), f"{where}.input_activations"),
                    output_activations=None,
                    format=fmt,
                )
            )
        ignore = tuple(str(i) for i in (qc.get("ignore") or ()))
        kv_scheme = qc.get("kv_cache_scheme")
        kv = KVCache(dtype=_kv_dtype(kv_scheme), scheme=dict(kv_scheme) if kv_scheme else None)
        self = cls(schemes, ignore, kv, qc.get("version"))
        self._check_targets(tensor_names)
        return self

    def _check_targets(self, tensor_names: Collection[str]) -> None:
        modules: dict[str, set[str]] = {}
        for n in tensor_names:
            p, _, s = n.rpartition(".")
            modules.setdefault(p, set()).add(s)
        marks = {"weight_scale", "weight_packed", *_INPUT_PARAMS}
        quantized = {p for p, ss in modules.items() if ss & marks}
        for s in self.schemes:
            if not any(self._target_rank(t, p, p in quantized) for t in s.targets for p in modules):
                raise ConfigError(f"config_groups.{s.name} targets {list(s.targets)} match no module in the checkpoint")

    @staticmethod
    def _target_rank(target: str, prefix: str, quantized: bool) -> int:
        """3 exact, 2 regex, 1 class-name match (only for modules carrying quantization tensors), 0 none."""
        if target == prefix:
            return 3
        if target.startswith("re:"):
            return 2 if re.match(target[3:], prefix) else 0
        if "." not in target and target[:1].isupper() and quantized:
            return 1
        return 0

    def scheme_for(self, prefix: str, quantized: bool) -> CTScheme | None:
        """The config group that quantizes module ``prefix``, or None (ignored / untargeted)."""
        if any(self._target_rank(t, prefix, quantized) for t in self.ignore):
            return None
        best, rank = None, 0
        for s in self.schemes:
            r = max(self._target_rank(t, prefix, quantized) for t in s.targets)
            if r > rank:
                best, rank = s, r
        return best

    # ---- conversion -----------------------------------------------------------------------------
    def convert_module(self, group: TensorGroup):
        kv = [s for s in group if _KV_PARAMS.match(s)]
        for s in kv:
            self.kv.add(group, s, group.prefix, s)
        quant_tensors = {s for s in group if s in ("weight_packed",) + _WEIGHT_PARAMS + _INPUT_PARAMS}
        scheme = self.scheme_for(group.prefix, bool(quant_tensors))
        if scheme is None:
            if quant_tensors:
                s = sorted(quant_tensors)[0]
                raise group.error(
                    s,
                    "module carries quantization tensors but no config group targets it (or it is ignored)",
                    ConfigError,
                )
            return self.passthrough(group, skip=set(kv))
        out: dict[str, Any] = {}
        consumed = set(kv) | set(_WEIGHT_PARAMS) | set(_INPUT_PARAMS) | {"weight", "weight_packed"}
        if scheme.weights is not None and "weight" not in group and "weight_packed" not in group:
            raise FormatError(
                f"config group {scheme.name} quantizes this module but it has no weight tensor",
                file=group.file(next(iter(group))),
                tensor=group.full_name("weight"),
            )
        if scheme.weights is not None:
            out[group.full_name("weight")] = self._weight(group, scheme)
        elif "weight" in group:
            out[group.full_name("weight")] = group["weight"]
        if scheme.input_activations is not None:
            out[group.full_name(INPUT_QUANT)] = self._activation(group, scheme)
        out.update(self.passthrough(group, skip=consumed))
        return out

    def _weight(self, group: TensorGroup, scheme: CTScheme) -> QArray:
        a, fmt = scheme.weights, scheme.format
        where = f"config group {scheme.name}"
        if fmt == "dense":
            raise group.error(
                "weight",
                f"{where}: format 'dense' with quantized weights is not a compressed checkpoint",
                UnsupportedFormatError,
            )
        if a.strategy in ("token", "attn_head"):
            raise group.error(
                "weight_scale", f"{where}: weight strategy {a.strategy!r} is not a weight layout", ConfigError
            )
        if fmt == "pack-quantized":
            if a.type != "int":
                raise group.error(
                    "weight_packed", f"{where}: pack-quantized needs int weights, got {a.type}", ConfigError
                )
            return self._packed(group, a)
        if fmt == "nvfp4-pack-quantized":
            if not (a.type == "float" and a.num_bits == 4):
                raise group.error("weight_packed", f"{where}: nvfp4 needs 4-bit float weights", ConfigError)
            return fp4_qarray(
                group, packed="weight_packed", scale="weight_scale", group_size=a.group_size or NV_GROUP,
                scale_kind="e4m3", global_divisor=scalar(group, "weight_global_scale"),
            )  # fmt: skip
        if fmt == "mxfp4-pack-quantized":
            if not (a.type == "float" and a.num_bits == 4):
                raise group.error("weight_packed", f"{where}: mxfp4 needs 4-bit float weights", ConfigError)
            return fp4_qarray(
                group,
                packed="weight_packed",
                scale="weight_scale",
                group_size=a.group_size or MX_GROUP,
                scale_kind="e8m0",
            )
        if fmt == "mxfp6-pack-quantized":
            if not (a.type == "float" and a.num_bits == 6):
                raise group.error("weight_packed", f"{where}: mxfp6 needs 6-bit float weights", ConfigError)
            return fp6_qarray(group, packed="weight_packed", scale="weight_scale", group_size=a.group_size or MX_GROUP)
        if fmt == "mxfp8-quantized":
            return fp8_qarray(
                group, strategy="group", group_size=a.group_size or MX_GROUP,
                scale_dtypes=(np.uint8, E8M0), scale_view=E8M0,
            )  # fmt: skip
        # int-quantized / float-quantized / naive-quantized: one code per element in `weight`
        if a.type == "float":
            if a.num_bits != 8:
                raise group.error("weight", f"{where}: {a.num_bits}-bit float weights in {fmt}", UnsupportedFormatError)
            if a.is_mx:
                return fp8_qarray(
                    group, strategy="group", group_size=MX_GROUP, scale_dtypes=(np.uint8, E8M0), scale_view=E8M0
                )
            return fp8_qarray(group, strategy=a.strategy, group_size=a.group_size, block=a.block_structure)
        return self._unpacked_int(group, a)

    def _scale(self, group: TensorGroup, a: CTArgs, n: int, k: int) -> tuple[np.ndarray, tuple[int, int]]:
        s = load_scale(group, "weight_scale", FLOAT_SCALE_DTYPES)
        s2d, blk = scale_geometry(
            group, "weight_scale", s.shape, n, k, strategy=a.strategy, group_size=a.group_size, block=a.block_structure
        )
        return np.ascontiguousarray(s).reshape(s2d), blk

    def _packed(self, group: TensorGroup, a: CTArgs) -> QArray:
        b = a.num_bits
        group.require("weight_packed", "weight_scale", "weight_shape")
        shp = np.asarray(group["weight_shape"]).astype(np.int64).ravel()
        if shp.size != 2 or (shp <= 0).any():
            raise group.error("weight_shape", f"expected [N, K] with positive entries, got {shp.tolist()}")
        n, k = int(shp[0]), int(shp[1])
        if group.dtype("weight_packed") != np.dtype(np.int32):
            raise group.error("weight_packed", f"dtype {group.dtype('weight_packed').name} but int32 expected")
        pshape = group.shape("weight_packed")
        dense = self._layout(group, "weight_packed", pshape[-1] if len(pshape) == 2 else -1, k, b)
        if tuple(pshape) != (n, _packed_len(k, b, dense)):
            raise group.error("weight_packed", f"shape {list(pshape)} does not fit weight [{n}, {k}] at {b} bits")
        codes = unpack_int32(np.asarray(group["weight_packed"]), b, k, axis=1, dense=dense)
        scale, blk = self._scale(group, a, n, k)
        bias = 1 << (b - 1)
        zero = None
        if a.symmetric:
            qtype = int_type(b, bias=bias)
        else:
            qtype = int_type(b)
            zero = self._packed_zero(group, a, n, k, scale.shape, dense)
        perm = None
        if a.actorder == "group" and "weight_g_idx" in group:
            perm = self._perm(group, k, blk)
            if perm is not None:
                codes = codes[:, perm]
        data = pack_codes(codes, qtype.container_bits)
        q = QArray(data=data, scale=scale, zero=zero, perm=perm, qtype=qtype, shape=(n, k), block=blk)
        return checked(group, "weight_scale", q)

    def _layout(self, group: TensorGroup, suffix: str, width: int, count: int, b: int) -> bool:
        """True for dense packing, False for the pre-0.18 element-aligned one (formats.md 4.3)."""
        d, al = _packed_len(count, b, True), _packed_len(count, b, False)
        if d == al:
            if d == 1 or b in (1, 2, 4, 8):
                return True  # identical bits
            ver = _version_is_dense(self.version)
            if ver is None:
                raise group.error(
                    suffix,
                    f"{b}-bit packing of {count} codes is ambiguous (dense and element-aligned both give {d} words) "
                    "and quantization_config.version is missing",
                    ConfigError,
                )
            return ver
        if width == d:
            return True
        if width == al:
            return False
        raise group.error(
            suffix,
            f"packed width {width} fits neither dense ({d}) nor element-aligned ({al}) {b}-bit packing of {count}",
        )

    def _packed_zero(self, group, a: CTArgs, n, k, scale_shape, dense) -> np.ndarray:
        b = a.num_bits
        group.require("weight_zero_point")
        zp = np.asarray(group["weight_zero_point"])
        if a.strategy in ("group", "channel"):  # packed along dim 0 (pack_quantized/base.py PACK_ZP_STRATS)
            if zp.dtype != np.int32:
                raise group.error("weight_zero_point", f"dtype {zp.dtype} but packed int32 zero points expected")
            zd = self._layout(group, "weight_zero_point", zp.shape[0] if zp.ndim == 2 else -1, n, b)
            want = (_packed_len(n, b, zd), scale_shape[1])
            if zp.shape != want:
                raise group.error(
                    "weight_zero_point", f"shape {list(zp.shape)} but {list(want)} expected (packed along N)"
                )
            return unpack_int32(zp, b, n, axis=0, dense=zd)
        return self._signed_zero(group, zp, b, scale_shape)

    @staticmethod
    def _signed_zero(group, zp: np.ndarray, b: int, scale_shape) -> np.ndarray:
        """Signed zero points in [-2**(b-1), 2**(b-1)) -> unsigned ``zp + 2**(b-1)`` of the scale's shape."""
        if zp.dtype.kind not in "iu":
            raise group.error("weight_zero_point", f"dtype {zp.dtype} but integer zero points expected")
        if zp.size != int(np.prod(scale_shape)):
            raise group.error(
                "weight_zero_point", f"shape {list(zp.shape)} does not match scale shape {list(scale_shape)}"
            )
        z = zp.astype(np.int64).reshape(scale_shape) + (1 << (b - 1))
        if z.size and (z.min() < 0 or z.max() >= 1 << b):
            raise group.error("weight_zero_point", f"zero point outside the signed {b}-bit range")
        return z.astype(np.uint8)

    def _perm(self, group: TensorGroup, k: int, blk: tuple[int, int]) -> np.ndarray | None:
        g_idx = np.asarray(group.expect("weight_g_idx", shape=(k,))).astype(np.int64)
        gs = blk[1]
        perm = np.argsort(g_idx, kind="stable").astype(np.int32)
        if not np.array_equal(g_idx[perm], np.arange(k) // gs):
            raise group.error(
                "weight_g_idx",
                f"act-order groups are not all of size {gs} (g_idx does not regroup into contiguous groups)",
            )
        return None if np.array_equal(perm, np.arange(k)) else perm

    def _unpacked_int(self, group: TensorGroup, a: CTArgs) -> QArray:
        b = a.num_bits
        w = group.expect("weight", dtypes=(np.int8,))
        if w.ndim != 2:
            raise group.error("weight", f"expected a 2-D weight, got shape {list(w.shape)}")
        n, k = w.shape
        scale, blk = self._scale(group, a, n, k)
        bias = 1 << (b - 1)
        if w.size and (int(w.min()) < -bias or int(w.max()) >= bias):
            raise group.error("weight", f"codes outside the signed {b}-bit range")
        zero = None
        if a.symmetric and b == 8:
            qtype, data = int8, np.asarray(w)
        else:
            qtype = int_type(b, bias=bias) if a.symmetric else int_type(b)
            data = pack_codes((w.astype(np.int16) + bias).astype(np.uint8), qtype.container_bits)
            if not a.symmetric:
                zero = self._signed_zero(group, np.asarray(group.expect("weight_zero_point")), b, scale.shape)
        q = QArray(data=data, scale=scale, zero=zero, qtype=qtype, shape=(n, k), block=blk)
        return checked(group, "weight_scale", q)

    def _activation(self, group: TensorGroup, scheme: CTScheme) -> ActQuant:
        a = scheme.input_activations
        where = f"config group {scheme.name} input_activations"
        name = group.full_name(INPUT_QUANT)

        def unsupported(msg):
            return UnsupportedFormatError(f"{where}: {msg}", file=group.file(next(iter(group))), tensor=name)

        if a.type == "int":
            if a.num_bits != 8:
                raise unsupported(f"{a.num_bits}-bit int activations (only int8)")
            qtype = int8
        elif a.num_bits == 8:
            qtype = fp8_e4m3
        elif a.num_bits == 4:
            qtype = fp4_e2m1
        else:
            raise unsupported(f"{a.num_bits}-bit float activations")
        gran = {"tensor": "tensor", "token": "token", "group": "group", "tensor_group": "group"}.get(a.strategy)
        if gran is None:
            raise unsupported(f"activation strategy {a.strategy!r}")
        gs = a.group_size if gran == "group" else None
        if a.dynamic is False:
            if gran != "tensor":
                raise unsupported(f"static {a.strategy} activation scales")
            scale = scalar(group, "input_scale")
            zero = None
            if not a.symmetric:
                zp = np.asarray(group.expect("input_zero_point"))
                if zp.size != 1 or zp.dtype.kind not in "iu":
                    raise group.error(
                        "input_zero_point", f"expected one integer zero point, got {zp.dtype} {list(zp.shape)}"
                    )
                zero = zp.astype(np.int32).reshape(1)
            act = ActQuant(qtype, False, "tensor", None, a.symmetric, scale, zero)
        elif a.strategy == "tensor_group":  # NVFP4: dynamic e4m3 group scales under a static global divisor
            act = ActQuant(
                qtype,
                True,
                "group",
                gs,
                True,
                scale_dtype="float8_e4m3fn",
                global_scale=scalar(group, "input_global_scale"),
                scale_rule="half_range",
            )
        else:
            sd = "float8_e8m0fnu" if a.is_mx else None
            # Run-time scales follow the producer's own QDQ forward (compressed-tensors
            # quantization/utils/helpers.py calculate_qparams: amax / (bit_range / 2), 127.5 for int8),
            # not vLLM's amax / 127: the checkpoint was calibrated and evaluated with it.
            act = ActQuant(qtype, True, gran, gs, a.symmetric, scale_dtype=sd, scale_rule="half_range")
        try:
            return act.validate(name)
        except FormatError as e:
            raise unsupported(e.problem) from None

    def describe(self):
        d = {"format": self.name, "version": self.version}
        kv = self.kv.describe()
        if kv is not None:
            d["kv_cache"] = kv
        return d


def _kv_dtype(scheme: Any) -> str:
    if not scheme:
        return "fp8_e4m3"
    bits, typ = int(scheme.get("num_bits", 8)), str(scheme.get("type", "float"))
    if typ == "float" and bits == 8:
        return "fp8_e4m3"
    if typ == "int" and bits == 8:
        return "int8"
    raise UnsupportedFormatError(f"kv_cache_scheme {bits}-bit {typ} is not supported")
