"""Real bitsandbytes checkpoints (transformers ``BitsAndBytesConfig`` + ``save_pretrained`` on CPU) convert bit-exactly.

Oracles (`tests.fixtures.producers_bnb`, computed by bitsandbytes 0.50 in the producer's process):
its reference 4-bit dequantization in float32 (``f32``), its CPU kernel (``cpu``), its own output
dtype (``native``: ``ours.astype(dtype)`` must equal it), and for LLM.int8 its CPU dequant-matmul
path (``f32``) and ``int8_vectorwise_dequant`` (``vectorwise``, one ulp away by its rounding order).
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import jquant
from jquant.core.errors import ConfigError, UnsupportedFormatError
from jquant.core.qtypes import bnb_fp4, int8, nf4
from jquant.formats import detect_format
from jquant.formats.bnb import BitsAndBytes, BnbConfig
from tests.fixtures.producers_bnb import BNB_VARIANTS, SHAPES, bnb_oracle
from tests.formats_bnb.conftest import bits_equal, read_tensors

N_QUANTIZED = 14  # 7 linear layers x 2 decoder blocks; lm_head and embeddings stay dense


@pytest.mark.parametrize("variant", list(BNB_VARIANTS))
def test_transformers_checkpoint_bit_exact(bnb_root, variant):
    folder = bnb_root / variant
    ckpt = jquant.convert(folder)
    cfg = BNB_VARIANTS[variant]
    assert ckpt.format == "bnb"
    meta = ckpt.metadata["bnb"]
    assert meta["bits"] == (8 if cfg.get("load_in_8bit") else 4)
    q = ckpt.quantized()
    assert len(q) == N_QUANTIZED
    oracle = bnb_oracle(folder)
    assert set(oracle["f32"]) == set(q)
    fp4 = cfg.get("bnb_4bit_quant_type") == "fp4"
    for name, w in q.items():
        if meta["bits"] == 8:
            assert w.qtype == int8 and w.block == (1, w.k) and w.scale.dtype == np.float32
        else:
            assert w.qtype == (bnb_fp4 if fp4 else nf4) and w.block == (1, 64) and w.scale.dtype == np.float32
        ours = jquant.dequantize(w)
        assert bits_equal(ours, oracle["f32"][name]), name
        if name in oracle["cpu"]:
            assert bits_equal(ours, oracle["cpu"][name]), name
        if name in oracle["native"]:
            ref = oracle["native"][name]
            np.testing.assert_array_equal(ours.astype(ref.dtype), ref, err_msg=name)
        if name in oracle["vectorwise"]:  # (CB * SCB) / 127 vs CB * (SCB / 127): at most one ulp apart
            ref = oracle["vectorwise"][name]
            assert np.all(np.abs(ours - ref) <= np.spacing(np.abs(ref))), name
    # everything else passes through bit-identical, in its own dtype
    raw = read_tensors(folder)
    dense = {k: v for k, v in ckpt.weights.items() if k not in q}
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"} <= set(dense)
    for k, v in dense.items():
        assert v.dtype == raw[k].dtype and np.array_equal(v, raw[k]), k


def test_native_dtype_of_bf16_checkpoint(bnb_root):
    """A QLoRA-style checkpoint quantized from bf16: bitsandbytes dequantizes to bf16, jquant keeps f32."""
    folder = bnb_root / "nf4-dq-f32storage-bf16"
    oracle = bnb_oracle(folder)
    assert all(v.dtype == ml_dtypes.bfloat16 for v in oracle["native"].values())
    raw = read_tensors(folder)
    assert raw["model.layers.0.mlp.up_proj.weight"].dtype == np.float32  # packed bytes in f32 storage
    blob = raw["model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"].tobytes()
    assert json.loads(blob)["dtype"] == "bfloat16"


def test_codes_are_the_nibble_swapped_bytes(bnb_root):
    """Canonical low-nibble-first bytes are bitsandbytes' high-nibble-first bytes with their nibbles swapped."""
    raw = read_tensors(bnb_root / "nf4")
    ckpt = jquant.convert(bnb_root / "nf4")
    name = "model.layers.1.self_attn.o_proj.weight"
    b = raw[name].reshape(-1)
    w = ckpt.weights[name]
    assert np.array_equal(w.data.reshape(-1) >> 4, b & 0xF) and np.array_equal(w.data.reshape(-1) & 0xF, b >> 4)
    np.testing.assert_array_equal(w.scale.reshape(-1), raw[name + ".absmax"])  # blocks of 64 along each row


def test_fp4_zero_code(bnb_root):
    """bitsandbytes' FP4 code 8 decodes to +0.0 (its table holds ``-0``, an int); canonical codes use 0 for it."""
    raw = read_tensors(bnb_root / "fp4")
    ckpt = jquant.convert(bnb_root / "fp4")
    name = "model.layers.0.mlp.up_proj.weight"
    b = raw[name].reshape(-1)
    src = np.stack([b >> 4, b & 0xF], -1).reshape(-1)
    d = ckpt.weights[name].data.reshape(-1)
    ours = np.stack([d & 0xF, d >> 4], -1).reshape(-1)
    assert (src == 8).any() and not (ours == 8).any()
    np.testing.assert_array_equal(ours, np.where(src == 8, 0, src))
    assert not np.signbit(jquant.dequantize(ckpt.weights[name])[(src == 8).reshape(ckpt.weights[name].shape)]).any()


def test_blocks_straddling_rows(bnb_root):
    """K not a multiple of the blocksize: per-row groups of gcd(K, blocksize), exact against bitsandbytes' reference."""
    folder = bnb_root / "shapes"
    ckpt = jquant.convert(folder)
    oracle = bnb_oracle(folder)
    q = ckpt.quantized()
    assert set(q) == {f"{m}.weight" for m in SHAPES}
    for m, (n, k, bs, _) in SHAPES.items():
        w = q[f"{m}.weight"]
        g = int(np.gcd(k, bs))
        assert w.shape == (n, k) and w.block == (1, g), m
        assert bits_equal(jquant.dequantize(w), oracle["f32"][f"{m}.weight"]), m


def test_odd_k_refused(bnb_root):
    with pytest.raises(UnsupportedFormatError) as e:
        jquant.convert(bnb_root / "oddk")
    assert e.value.tensor == "model.odd_proj.weight" and "K=33 is odd" in e.value.problem


def test_saved_canonical_round_trip(bnb_root, tmp_path):
    ckpt = jquant.convert(bnb_root / "nf4-dq")
    jquant.save(ckpt, tmp_path / "canon")
    back = jquant.convert(tmp_path / "canon")
    for name, w in ckpt.quantized().items():
        assert bits_equal(jquant.dequantize(back.weights[name]), jquant.dequantize(w)), name


# ---- config parsing and detection ----------------------------------------------------------------


def _qc(**kw):
    return {"quant_method": "bitsandbytes", **kw}


def test_config_defaults_and_detection():
    cfg = BnbConfig.from_dict(_qc(load_in_4bit=True))
    assert (cfg.bits, cfg.quant_type, cfg.double_quant, cfg.storage) == (4, "fp4", False, "uint8")
    names = ["m.weight", "m.weight.absmax", "m.weight.quant_map", "m.weight.quant_state.bitsandbytes__nf4"]
    fmt = detect_format({"quantization_config": _qc(load_in_4bit=True, bnb_4bit_quant_type="nf4")}, names)
    assert isinstance(fmt, BitsAndBytes)
    assert fmt.split_name("a.b.q_proj.weight.quant_state.bitsandbytes__nf4") == (
        "a.b.q_proj",
        "weight.quant_state.bitsandbytes__nf4",
    )
    assert fmt.split_name("a.b.q_proj.weight.absmax") == ("a.b.q_proj", "weight.absmax")
    assert fmt.split_name("a.b.q_proj.weight") == ("a.b.q_proj", "weight")
    assert fmt.split_name("a.b.q_proj.SCB") == ("a.b.q_proj", "SCB")


@pytest.mark.parametrize(
    "qc, key, problem, cls",
    [
        (_qc(load_in_4bit=True, load_in_8bit=True), "load_in_4bit", "exactly one of", ConfigError),
        (_qc(), "load_in_4bit", "exactly one of", ConfigError),
        (_qc(load_in_4bit=True, bnb_4bit_quant_type="int4"), "bnb_4bit_quant_type", "'int4'", ConfigError),
        (_qc(load_in_4bit=True, bnb_4bit_quant_storage="int32"), "bnb_4bit_quant_storage", "'int32'", ConfigError),
        (_qc(load_in_8bit=True, llm_int8_has_fp16_weight=True), "llm_int8_has_fp16_weight", "training", UnsupportedFormatError),
        (_qc(load_in_8bit=True, llm_int8_threshold="six"), "llm_int8_threshold", "finite number", ConfigError),
        (_qc(load_in_4bit="yes"), "load_in_4bit", "true or false", ConfigError),
    ],
)  # fmt: skip
def test_bad_configs(qc, key, problem, cls):
    with pytest.raises(cls) as e:
        BnbConfig.from_dict(qc)
    assert e.value.tensor == f"quantization_config.{key}" and problem in e.value.problem, str(e.value)


def test_config_contradicts_tensors():
    four = ["m.weight", "m.weight.absmax", "m.weight.quant_state.bitsandbytes__nf4"]
    with pytest.raises(ConfigError, match="load_in_8bit is true but the checkpoint holds 4-bit"):
        detect_format({"quantization_config": _qc(load_in_8bit=True)}, four)
    with pytest.raises(ConfigError, match="load_in_4bit is true but the checkpoint holds LLM.int8"):
        detect_format({"quantization_config": _qc(load_in_4bit=True)}, ["m.weight", "m.SCB"])
    with pytest.raises(ConfigError, match="no tensor is named"):
        detect_format({"quantization_config": _qc(load_in_4bit=True)}, ["m.weight"])
    with pytest.raises(ConfigError, match="look quantized"):  # no config, bitsandbytes tensors
        detect_format({}, four)
