"""Marlin-repacked GPTQ checkpoints: IST-DASLab Marlin / AutoGPTQ ``use_marlin`` (``B`` + ``s`` tensors).

Who writes them and how they are marked (formats.md 3):

* IST-DASLab ``conversion/convert.py`` (neuralmagic's ``*-marlin`` Hub models):
  ``quantization_config = {"quant_method": "marlin", "group_size": 128}`` -> format ``"marlin"``
  (`Marlin`, below).
* AutoGPTQ >= 0.8 (``checkpoint_format: "marlin"``) and <= 0.7.1 (``is_marlin_format: true``) with
  ``quant_method: "gptq"`` -> format ``"gptq"`` (`jquant.formats.gptq` calls `convert_marlin_group`).
  Old vLLM picked its ``marlin`` method on exactly these keys
  (``vllm/model_executor/layers/quantization/marlin.py MarlinConfig.override_quantization_method``,
  vLLM commit ``01a789a6``; removed before vLLM 0.11).

Tensors per linear (``MarlinLinearMethod.create_weights`` there; AutoGPTQ
``nn_modules/qlinear/qlinear_marlin.py QuantLinear``, commit ``0759aeae``)::

    B     int32 [K/16, 2N]     4-bit codes, symmetric (w = s * (q - 8)), tile-permuted, 8 per word
    s     f16   [K/G, N]       scales (1 row for per-channel), columns permuted
    bias  f16   [N]            optional (AutoGPTQ only); ``workspace`` is never persisted

``QuantLinear.pack`` / IST-DASLab ``marlin/__init__.py Layer.pack`` build ``B`` from the codes
``q`` [K, N] (GPTQ orientation) in four lossless steps, undone here in reverse order:

1. 16x16 tiles: ``q.reshape(K/16, 16, N/16, 16).permute(0, 2, 1, 3).reshape(K/16, 16N)``;
2. every 1024 consecutive entries of a row are gathered through ``_perm`` (`MARLIN_PERM`, the
   mma.m16n8k16 fragment order with the [0, 2, 4, 6, 1, 3, 5, 7] interleave);
3. word ``c`` of a row holds entries ``8c .. 8c+7``, entry ``8c + i`` at bits ``4i``;
4. scales: flattened and gathered per 64 through ``_scale_perm`` when grouped (G < K), per 32
   through ``_scale_perm_single`` when one group spans K. The choice is ``G != K``, not the
   config's ``-1``: AutoGPTQ sets ``group_size = K`` for -1, so a G = K config packs "single".

Marlin holds no zero points and no ``g_idx``: the canonical result is ``uint4b8`` codes [N, K],
the f16 scales [N, K/G] and no perm, i.e. the same QArray the source GPTQ checkpoint gives.
Shape rules (AutoGPTQ: K % 128 == 0, N % 256 == 0) are relaxed to what the permutations need:
K % 16, N % 64, and the scale count a multiple of 64 (grouped) or 32 (single).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.core.packing import int32_words_to_bytes, unpack_codes
from jquant.core.qarray import QArray
from jquant.formats._int_packed import CONFIG_FILE, _bias, _int32, _unexpected, int_qarray
from jquant.formats.base import Format, TensorGroup, quant_config

__all__ = [
    "MARLIN_PERM",
    "MARLIN_SCALE_PERM",
    "MARLIN_SCALE_PERM_SINGLE",
    "unpack_marlin_weight",
    "unpack_marlin_scales",
    "convert_marlin_group",
    "Marlin",
]

_TILE = 16
_TENSORS = ("B", "s", "bias")
_SCALE_DTYPES = (np.float16, np.float32, "bfloat16")


def _marlin_perms() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The three tables of IST-DASLab marlin/__init__.py _get_perms (same in AutoGPTQ qlinear_marlin.py
    # and GPTQModel nn_modules/qlinear/marlin.py): thread t of a warp owns, per 16x16 tile, the rows
    # 2(t%4), 2(t%4)+1, 2(t%4+4), 2(t%4+4)+1 of column t//4 in two 8-column halves; 4 tiles of 256.
    perm = []
    for t in range(32):
        own = [16 * row + t // 4 + 8 * half for half in (0, 1) for row in (2 * (t % 4), 2 * (t % 4) + 1, 2 * (t % 4 + 4), 2 * (t % 4 + 4) + 1)]  # fmt: skip
        for tile in range(4):
            perm.extend(p + 256 * tile for p in own)
    perm = np.asarray(perm).reshape(-1, 8)[:, [0, 2, 4, 6, 1, 3, 5, 7]].ravel()
    scale = np.asarray([i + 8 * j for i in range(8) for j in range(8)])
    single = np.asarray([2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)])
    return perm, scale, single


MARLIN_PERM, MARLIN_SCALE_PERM, MARLIN_SCALE_PERM_SINGLE = _marlin_perms()
_INV_PERM = np.argsort(MARLIN_PERM)
_INV_SCALE = np.argsort(MARLIN_SCALE_PERM)
_INV_SINGLE = np.argsort(MARLIN_SCALE_PERM_SINGLE)


def unpack_marlin_weight(b: np.ndarray) -> np.ndarray:
    """Marlin ``B`` int32 [K/16, 2N] -> uint8 codes [K, N] (GPTQ orientation, 0..15, bias 8).

    Raises:
        ValueError: 16N (a row of ``B`` in codes) not a multiple of the 1024-entry permutation.
    """
    rows, words = b.shape
    k, n = rows * _TILE, words * 8 // _TILE
    if (words * 8) % MARLIN_PERM.size:
        raise ValueError(f"a row of {words} words holds {words * 8} codes, not a multiple of {MARLIN_PERM.size}")
    res = unpack_codes(int32_words_to_bytes(b, axis=1), 4)  # step 3: entry 8c+i = nibble i of word c
    res = res.reshape(-1, MARLIN_PERM.size)[:, _INV_PERM].reshape(rows, words * 8)  # step 2
    res = res.reshape(rows, n // _TILE, _TILE, _TILE).transpose(0, 2, 1, 3).reshape(k, n)  # step 1
    return np.ascontiguousarray(res)


def unpack_marlin_scales(s: np.ndarray, *, single: bool) -> np.ndarray:
    """Marlin ``s`` [K/G, N] -> scales [K/G, N] in plain column order (step 4 undone)."""
    inv = _INV_SINGLE if single else _INV_SCALE
    return np.ascontiguousarray(s.reshape(-1, inv.size)[:, inv].reshape(s.shape))


def convert_marlin_group(group: TensorGroup, *, group_size: int) -> dict[str, QArray | np.ndarray]:
    """One Marlin module (``B``, ``s``, [``bias``]) -> canonical ``uint4b8`` QArray.

    Args:
        group: the module's tensors (layout in the module docstring).
        group_size: G from the config, -1 for one group spanning K.

    Returns:
        ``{prefix.weight: QArray}`` (codes packed [N, K/2], scales [N, K/G] in the stored dtype,
        block (1, G)) and the bias.

    Raises:
        FormatError: naming the tensor, for missing partners, wrong dtypes or shapes (including a
            GPTQ ``qweight`` next to ``B``), or non-finite scales.
    """
    _unexpected(group, _TENSORS, "Marlin")
    group.require("B", "s")
    b = _int32(group, "B")
    rows, words = b.shape
    k, n = rows * _TILE, words * 8 // _TILE
    if words % 2 or n % 64:
        raise group.error(
            "B", f"shape {[rows, words]}: Marlin B is int32 [K/16, 2N] with N a multiple of 64 (its 1024-code tiles)"
        )
    gs = k if group_size == -1 else group_size
    if k % gs:
        raise group.error("B", f"group_size {group_size} does not divide in_features K={k} (B rows {rows} x 16)")
    ngroups = k // gs
    single = gs == k  # AutoGPTQ / IST pack: `if groupsize != k` picks the grouped scale permutation
    scales = group.expect("s", dtypes=_SCALE_DTYPES)
    if scales.shape != (ngroups, n):
        raise group.error(
            "s", f"shape {list(scales.shape)} but expected {[ngroups, n]} (Marlin: B [K/16, 2N], s [K/G, N])"
        )
    bad = np.argwhere(~np.isfinite(scales.astype(np.float32)))
    if bad.size:
        raise group.error(
            "s", f"non-finite scale {scales[tuple(bad[0])]} at {bad[0].tolist()} ({len(bad)} such values)"
        )
    chunk = MARLIN_SCALE_PERM_SINGLE.size if single else MARLIN_SCALE_PERM.size
    if scales.size % chunk:
        raise group.error("s", f"{scales.size} scales are not a multiple of Marlin's {chunk}-entry scale permutation")
    codes = unpack_marlin_weight(b)
    zeros = np.full((ngroups, n), 8, np.uint8)  # Marlin is symmetric: w = s * (q - 8)
    q = int_qarray(codes, unpack_marlin_scales(scales, single=single), zeros, bits=4, group_size=gs, perm=None)
    out: dict[str, QArray | np.ndarray] = {group.full_name("weight"): q}
    if "bias" in group:
        out[group.full_name("bias")] = _bias(group, n)
    return out


class Marlin(Format, name="marlin"):
    """IST-DASLab Marlin checkpoints (``quant_method: "marlin"``, ``group_size``; 4-bit symmetric).

    ``conversion/convert.py`` writes only ``group_size`` (and ``quant_method``); vLLM's
    ``MarlinConfig.from_config`` also reads ``lm_head``. ``bits`` / ``sym`` / ``desc_act``, when
    present, must be 4 / true / false: Marlin stores nothing else.
    """

    quant_methods = ("marlin",)
    partner_suffixes = frozenset({"s"})
    main_suffix = "B"

    def __init__(self, group_size: int, lm_head: bool = False):
        self.group_size = group_size
        self.lm_head = lm_head

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tensor_names: Collection[str]) -> Marlin:
        qc = quant_config(config) or {}
        check_marlin_config(qc, file=CONFIG_FILE)
        if not any(n.endswith(".B") for n in tensor_names):
            raise ConfigError(
                "quant_method is marlin but no tensor is named *.B (Marlin's packed weight)",
                file=CONFIG_FILE,
                tensor="quantization_config",
            )
        return cls(qc["group_size"], bool(qc.get("lm_head", False)))

    def convert_module(self, group: TensorGroup):
        if "B" not in group:
            return self.passthrough(group)
        if group.prefix.split(".")[-1] == "lm_head" and not self.lm_head:
            raise group.error("B", "module is quantized on disk but the config says lm_head is false", ConfigError)
        return convert_marlin_group(group, group_size=self.group_size)

    def describe(self) -> dict[str, Any]:
        return {"format": self.name, "marlin": {"group_size": self.group_size, "lm_head": self.lm_head}}


def check_marlin_config(qc: Mapping[str, Any], *, file) -> None:
    """Refuses config values Marlin's layout cannot hold (it is 4-bit, symmetric, without act-order).

    Raises:
        ConfigError: ``group_size`` missing or not a positive integer / -1.
        UnsupportedFormatError: ``bits`` other than 4, ``sym: false`` or ``desc_act: true``.
    """
    g = qc.get("group_size")
    if isinstance(g, bool) or not isinstance(g, int) or (g != -1 and g <= 0):
        raise ConfigError(
            f"group_size={g!r} must be a positive integer or -1", file=file, tensor="quantization_config.group_size"
        )
    for key, want in (("bits", 4), ("sym", True), ("desc_act", False)):
        if key in qc and qc[key] is not None and qc[key] != want:
            raise UnsupportedFormatError(
                f"{key}={qc[key]!r}: Marlin-repacked checkpoints are 4-bit symmetric without act-order "
                f"(need {key}={want!r})",
                file=file,
                tensor=f"quantization_config.{key}",
            )
