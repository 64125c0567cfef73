"""Real GPTQModel / AutoAWQ / auto-round checkpoints: conversion is bit-exact against each producer's dequantizer.

The producers run once per fixture (cached, `tests.fixtures.producers_gptq_awq`); their own
dequantizers run in a subprocess too. Where the producer computes in fp16, the f32 comparison is
against its formula in f32 on its own unpacked integers, and ``ours.astype(f16)`` must equal its
fp16 result exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import jquant
from jquant.convert.safetensors_io import SafetensorsFile
from jquant.core.dequant import dequantize
from tests.fixtures.producers_gptq_awq import (
    AUTOROUND_MIXED_EXAMPLE,
    AUTOROUND_VARIANTS,
    GPTQ_DYNAMIC_EXAMPLE,
    GPTQ_VARIANTS,
    ProducerUnavailable,
    autoround_checkpoint,
    awq_checkpoint,
    gptq_checkpoint,
    producer_dequantized,
)

# The tiny Llama's 7 linear layers per block x 2 blocks; lm_head stays dense.
N_QUANTIZED = 14


def _make(fn, *args):
    try:
        return fn(*args)
    except ProducerUnavailable as e:
        pytest.skip(str(e))


def _raw(folder) -> dict[str, np.ndarray]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        f = SafetensorsFile(shard)
        out.update({name: np.asarray(f[name]) for name in f})
    return out


def _check_against_oracle(folder, ckpt, n_quantized: int = N_QUANTIZED) -> None:
    ref = producer_dequantized(folder)
    q = ckpt.quantized()
    assert len(q) == n_quantized
    assert set(ref["f32"]) == set(q), "every quantized layer has a producer reference"
    for name, w in q.items():
        ours = dequantize(w)
        assert ours.dtype == np.float32 and ours.shape == w.shape
        np.testing.assert_array_equal(ours, ref["f32"][name], err_msg=name)
        if name in ref["f16"]:
            np.testing.assert_array_equal(ours.astype(np.float16), ref["f16"][name], err_msg=name)
    # unquantized tensors (embeddings, norms, lm_head) pass through bit-identical, in their own dtype
    raw = _raw(folder)
    dense = {k: v for k, v in ckpt.weights.items() if k not in q}
    assert "lm_head.weight" in dense and "model.embed_tokens.weight" in dense
    for k, v in dense.items():
        assert v.dtype == raw[k].dtype
        np.testing.assert_array_equal(v, raw[k], err_msg=k)


def _id(v):
    return "-".join(str(x) for x in v)


@pytest.mark.parametrize("variant", GPTQ_VARIANTS, ids=_id)
def test_gptqmodel_checkpoint_bit_exact(variant):
    bits, group_size, sym, desc_act, fmt = variant
    folder = _make(gptq_checkpoint, *variant)
    ckpt = jquant.convert(folder)
    assert ckpt.format == "gptq"
    assert ckpt.metadata["gptq"]["checkpoint_format"] == fmt
    _check_against_oracle(folder, ckpt)
    q = ckpt.quantized()
    w = q["model.layers.0.mlp.down_proj.weight"]
    assert w.shape == (256, 512) and w.qtype.bits == bits
    assert w.block == ((1, 512) if group_size == -1 else (1, group_size))
    mid = 1 << (bits - 1)
    if sym:  # GPTQ's symmetric zero 2^(b-1) becomes the qtype's bias, no zero array
        assert all(x.qtype.name == f"uint{bits}b{mid}" and x.zero is None for x in q.values())
    else:
        assert all(x.zero is not None and x.qtype.name == f"uint{bits}" for x in q.values())
    # act-order: GPTQModel's g_idx is a non-trivial permutation -> perm; otherwise no perm
    assert all((x.perm is not None) == desc_act for x in q.values())
    if desc_act:
        assert not np.array_equal(w.perm, np.arange(512))


def test_autoawq_checkpoint_bit_exact():
    folder = _make(awq_checkpoint, 128)
    ckpt = jquant.convert(folder)
    assert ckpt.format == "awq"
    _check_against_oracle(folder, ckpt)
    w = ckpt.weights["model.layers.1.self_attn.o_proj.weight"]
    assert w.qtype.name == "uint4" and w.block == (1, 128) and w.zero.dtype == np.uint8 and w.perm is None


@pytest.mark.parametrize("variant", AUTOROUND_VARIANTS, ids=_id)
def test_autoround_export_bit_exact(variant):
    fmt, bits, group_size, sym = variant
    folder = _make(autoround_checkpoint, *variant)
    ckpt = jquant.convert(folder)
    expected_format = {"auto_round": "auto-round", "auto_gptq": "gptq", "auto_awq": "awq"}[fmt]
    assert ckpt.format == expected_format
    if fmt == "auto_round":
        packing = ckpt.metadata["autoround"]["packing_format"]
        # auto-round 0.16.1 routes sym -> auto_gptq packing, asym 4-bit -> AWQ packing, else native
        assert packing == ("auto_round:auto_gptq" if sym else "auto_round:auto_awq" if bits == 4 else "auto_round")
    _check_against_oracle(folder, ckpt)
    w = ckpt.weights["model.layers.0.self_attn.q_proj.weight"]
    assert w.qtype.bits == bits and w.block == (1, group_size)
    assert (w.zero is None) == sym


def test_gptqmodel_dynamic_overrides():
    """GPTQModel ``dynamic``: a ``-:`` exclusion stays dense, a ``+:`` override changes bits and group size."""
    folder = _make(gptq_checkpoint, *GPTQ_DYNAMIC_EXAMPLE)
    ckpt = jquant.convert(folder)
    _check_against_oracle(folder, ckpt, n_quantized=N_QUANTIZED - 1)
    dense = ckpt.weights["model.layers.1.mlp.down_proj.weight"]
    assert isinstance(dense, np.ndarray) and dense.shape == (256, 512)
    for layer in (0, 1):
        q = ckpt.weights[f"model.layers.{layer}.self_attn.q_proj.weight"]
        assert (q.qtype.name, q.block) == ("uint8b128", (1, 64))
        k = ckpt.weights[f"model.layers.{layer}.self_attn.k_proj.weight"]
        assert (k.qtype.name, k.block) == ("uint4b8", (1, 128))


def test_autoround_extra_config_mixed_bits():
    """auto-round ``layer_config`` -> ``extra_config``: one layer at 8 bits / group 64 inside a 4-bit export."""
    layer = "model.layers.0.mlp.down_proj"
    assert AUTOROUND_MIXED_EXAMPLE[-1] == {layer: {"bits": 8, "group_size": 64}}
    folder = _make(autoround_checkpoint, *AUTOROUND_MIXED_EXAMPLE)
    ckpt = jquant.convert(folder)
    assert ckpt.format == "auto-round"
    assert ckpt.metadata["autoround"]["extra_config"][layer] == {"bits": 8, "group_size": 64}
    _check_against_oracle(folder, ckpt)
    w = ckpt.weights[f"{layer}.weight"]
    assert (w.qtype.name, w.block) == ("uint8b128", (1, 64))
    assert ckpt.weights["model.layers.1.mlp.down_proj.weight"].qtype.name == "uint4b8"


def test_canonical_round_trip(tmp_path):
    """A converted GPTQ act-order checkpoint saves and loads back unchanged (perm, zeros, f16 scales)."""
    folder = _make(gptq_checkpoint, 4, 32, False, True, "gptq")
    ckpt = jquant.convert(folder)
    back = jquant.load(jquant.save(ckpt, tmp_path / "canon"))
    assert set(back.weights) == set(ckpt.weights)
    for name, w in ckpt.quantized().items():
        b = back.weights[name]
        assert (b.qtype, b.shape, b.block) == (w.qtype, w.shape, w.block)
        for field, arr in w.arrays().items():
            np.testing.assert_array_equal(np.asarray(b.arrays()[field]), arr, err_msg=f"{name}.{field}")
