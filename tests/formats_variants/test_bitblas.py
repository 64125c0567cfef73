"""BitBLAS-repacked GPTQ (``checkpoint_format: "bitblas"``) against a transcription of its sources.

BitBLAS needs CUDA and TVM to build its ``Matmul`` (it is not installable here), so the forward
transform is transcribed from the sources, line by line, in numpy:

* `source_general_compress` and `source_interleave_weight`: microsoft/BitBLAS
  ``bitblas/quantization/utils.py`` at commit 33869d4d58bf (the TIR ``QuantCompress`` op,
  ``bitblas/ops/quant_compress/quant_compress_impl.py`` @906055de, runs the same loop);
* `source_repack_from_gptq`: ModelCloud/GPTQModel ``gptqmodel/nn_modules/qlinear/bitblas.py``
  ``BitblasLinear.repack_from_gptq`` / ``_transform_bitblas_weight`` / ``_compress_bitblas_zeros``
  and its ``unpack_gptq_qweight`` / ``unpack_gptq_qzeros`` at commit 00fa60ac08fd, with the weight
  transform BitBLAS's ``Matmul`` builds for GPTQModel's config (``bitblas/ops/general_matmul/__init__.py``
  @017b0a7d: ``propagate_b`` NonTransform since ``M`` is a list, ``QuantCompress`` for 1/2/4 bits,
  ``LOP3Permutate`` when ``fast_decoding``: float16 activations and sub-byte weights).

The checkpoints are GPTQModel's real ones (tests/fixtures), repacked module by module as
GPTQModel does from its in-memory v2 zero points; `jquant.convert` of the result must equal
`jquant.convert` of the GPTQ source bit for bit.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import ConfigError, FormatError, UnsupportedFormatError
from jquant.formats.bitblas import deinterleave_weight, unpack_bitblas
from jquant.formats.gptq import GPTQConfig

# ---- the sources, transcribed -----------------------------------------------------------------


def source_general_compress(lowprecision_weight, source_bits=4, storage_dtype=np.int8):
    """BitBLAS ``general_compress`` (utils.py @33869d4d), verbatim but for the fp16 branch."""
    elems_per_byte = 8 // source_bits
    int8_weight = np.zeros(
        (*lowprecision_weight.shape[:-1], lowprecision_weight.shape[-1] // elems_per_byte), dtype=np.int8
    )
    for j in range(lowprecision_weight.shape[-1] // elems_per_byte):
        for k in range(elems_per_byte):
            int8_weight[:, j] |= lowprecision_weight[:, j * elems_per_byte + k] << (source_bits * k)
    return int8_weight.view(storage_dtype)


def _i32(v: int) -> np.int32:
    """The source's ``np.int32(0xFF0000FF)``: numpy 1.x wrapped such constants, numpy 2 raises."""
    return np.array(v, np.uint32).view(np.int32)


def source_interleave_weight(qweight, nbits=4, target_dtype="float16"):
    """BitBLAS ``interleave_weight`` (utils.py @33869d4d), the float16 2/4-bit branches."""
    assert target_dtype in ["float16", "int8"]
    qweight = qweight.view(np.int32)
    new_qweight = np.zeros_like(qweight)
    bits_stride = 8 if target_dtype == "int8" else 16
    mask = (1 << nbits) - 1
    num_groups = 32 // bits_stride
    elems_per_group = bits_stride // nbits
    for i in range(num_groups):
        for j in range(elems_per_group):
            offset = i * elems_per_group + j
            shift = (offset % num_groups) * bits_stride + (offset // num_groups) * nbits
            new_qweight |= ((qweight >> (nbits * offset)) & mask) << shift
    if nbits == 2 and target_dtype == "float16":
        n8_weight = new_qweight & _i32(0xFF0000FF)
        n8_weight |= ((new_qweight & _i32(0x0000FF00)) >> 8) << 16
        n8_weight |= ((new_qweight & _i32(0x00FF0000)) >> 16) << 8
        return n8_weight.view(np.int8)
    return new_qweight.view(np.int8)


def _source_unpack_gptq_qweight(qweight_int8, bits):
    """GPTQModel ``unpack_gptq_qweight`` (bitblas.py @00fa60ac): int8 view, arithmetic shifts, mask."""
    elems_per_int8 = 8 // bits
    out = np.zeros((qweight_int8.shape[0], qweight_int8.shape[1] * elems_per_int8), dtype=np.int8)
    for col in range(out.shape[1]):
        i = col % elems_per_int8
        out[:, col] = qweight_int8[:, col // elems_per_int8] >> (bits * i)
    return out & np.int8((2**bits - 1) if bits < 8 else -1)


def _source_unpack_gptq_qzeros(qzeros, bits, is_gptq_v2=False):
    """GPTQModel ``unpack_gptq_qzeros`` (bitblas.py @00fa60ac), its ``& 0xF`` included."""
    qzeros = qzeros.view(np.int32)
    elems_per_int32 = 32 // bits
    out = np.zeros((qzeros.shape[0], qzeros.shape[1] * elems_per_int32), dtype=np.int8)
    for col in range(out.shape[1]):
        i = col % elems_per_int32
        out[:, col] = (qzeros[:, col // elems_per_int32] >> (bits * i)) & 0xF
    return out if is_gptq_v2 else out + 1


def source_repack_from_gptq(qweight, qzeros_v2, scales, *, bits: int, sym: bool, fp16: bool):
    """``BitblasLinear.repack_from_gptq`` + ``_load_bitblas_quant_state`` for a GPTQ module in GPTQModel's memory.

    Args:
        qweight: GPTQ int32 [K*b/32, N]; qzeros_v2: int32 [K/G, N*b/32] holding z (GPTQModel's
        in-memory qzero_format 2); scales [K/G, N].

    Returns:
        {"qweight": int8 [N, K*b/8], "scales": [N, K/G], "qzeros": int8 [K/G, N*b/8] or empty}.
    """
    packed_weight = np.ascontiguousarray(qweight.T).view(np.int8)  # .T.contiguous().view(int8)
    intweight = _source_unpack_gptq_qweight(packed_weight, bits)
    # _should_remap_symmetric_gptq_codes: only for all-zero in-memory qzeros (a pre-v2 TorchLinear
    # pack); GPTQModel checkpoints loaded from disk never take it.
    assert not (sym and not qzeros_v2.any())
    # _transform_bitblas_weight: Matmul.weight_transform = [QuantCompress (bits 1, 2, 4),
    # LOP3Permutate (fast_decoding: float16 activations, W not int8/uint8)], or None for 8 bits.
    if bits < 8:
        q = source_general_compress(intweight, bits)
        if fp16:
            q = source_interleave_weight(q, bits, "float16")
    else:
        q = intweight
    out = {"qweight": np.ascontiguousarray(q), "scales": np.ascontiguousarray(scales.T)}
    with_zeros = not sym  # BitblasQuantizationConfig.with_zeros (zeros_mode "quantized")
    if with_zeros:
        intzeros = _source_unpack_gptq_qzeros(qzeros_v2, bits) - 1  # "GPTQ stores qzeros offset by +1"
        out["qzeros"] = source_general_compress(np.ascontiguousarray(intzeros), bits)
    else:
        out["qzeros"] = np.zeros((0,), np.int8)
    return out


# ---- random codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("fast", [True, False])
def test_unpack_inverts_the_source_transform_on_random_codes(bits, fast):
    rng = np.random.default_rng(bits * 2 + fast)
    n, k = 48, 256
    codes = rng.integers(0, 1 << bits, (n, k)).astype(np.int8)
    if bits < 8:
        q = source_general_compress(codes, bits)
        if fast:
            q = source_interleave_weight(q, bits, "float16")
    else:
        q = codes
        fast = False  # BitBLAS never fast-decodes 8-bit weights
    assert q.shape == (n, k * bits // 8) and q.dtype == np.int8
    np.testing.assert_array_equal(unpack_bitblas(q, bits, k, fast_decoding=fast), codes.view(np.uint8))


@pytest.mark.parametrize("bits", [2, 4])
def test_deinterleave_inverts_interleave_on_random_words(bits):
    words = np.random.default_rng(bits).integers(-(2**31), 2**31, (64, 16), dtype=np.int64).astype(np.int32)
    mixed = source_interleave_weight(words.copy(), bits, "float16").view(np.int32)
    assert not np.array_equal(mixed, words)
    np.testing.assert_array_equal(deinterleave_weight(mixed, bits).view(np.int32), words)


def test_interleave_worked_example():
    """4-bit codes 0..7 in one word: even codes to the low half-word, odd ones to the high one."""
    word = np.array([0x76543210], np.int32)
    assert source_interleave_weight(word.copy(), 4).view(np.uint32)[0] == 0x75316420
    assert deinterleave_weight(np.array([0x75316420], np.uint32), 4)[0] == 0x76543210


# ---- GPTQModel's real checkpoints, repacked ---------------------------------------------------

CASES = {
    "b4-g128-sym-v1": dict(bits=4, group_size=128, sym=True),
    "b4-g128-asym-v1": dict(bits=4, group_size=128, sym=False),
    "b4-g64-asym-v2": dict(bits=4, group_size=64, sym=False, fmt="gptq_v2"),
    "b2-g64-sym-v1": dict(bits=2, group_size=64, sym=True),
    "b8-g-1-sym-v1": dict(bits=8, group_size=-1, sym=True),
}


def _gptq(case):
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint

    try:
        return gptq_checkpoint(**CASES[case])
    except ProducerUnavailable as e:
        pytest.skip(str(e))


def _bitblas_folder(src, out, *, bits, sym, v1, fp16=True, legacy_flag=False):
    """``src`` (a GPTQ folder) repacked as GPTQModel's BitBLAS QuantLinear would save it."""
    import torch
    from safetensors.torch import load_file, save_file

    from jquant.core.packing import pack_bitstream
    from jquant.formats._int_packed import unpack_gptq_qzeros

    shutil.copytree(src, out, ignore=shutil.ignore_patterns("_oracle", "model.safetensors"))
    t = load_file(str(src / "model.safetensors"))  # torch tensors: the norms and embeddings are bfloat16
    new = {}
    for name in [n for n in t if n.endswith(".qweight")]:
        m = name.removesuffix(".qweight")
        qz = t.pop(f"{m}.qzeros").numpy()
        n = t[f"{m}.scales"].shape[1]
        # GPTQModel converts v1 checkpoints to v2 zero points in memory before repacking
        # (utils/model.py convert_gptq_v1_to_v2_format; bitblas.py: "GPT-QModel converts external
        # checkpoints to qzero_format=2 before BitBLAS repacking").
        z = unpack_gptq_qzeros(qz, bits, n, v1=v1)
        qz_v2 = pack_bitstream(z, bits, axis=1)
        t.pop(f"{m}.g_idx", None)  # BitblasLinear registers no g_idx (SUPPORTS_DESC_ACT = [False])
        qweight, scales = t.pop(name).numpy(), t.pop(f"{m}.scales").numpy()
        rep = source_repack_from_gptq(qweight, qz_v2, scales, bits=bits, sym=sym, fp16=fp16)
        new.update({f"{m}.{k}": torch.from_numpy(v) for k, v in rep.items()})
        if not fp16:
            new[f"{m}.scales"] = new[f"{m}.scales"].to(torch.bfloat16)
    new.update(t)
    save_file(new, str(out / "model.safetensors"))
    for cfg_file in ("config.json", "quantize_config.json"):
        p = out / cfg_file
        if not p.exists():
            continue
        c = json.loads(p.read_text())
        qc = c["quantization_config"] if cfg_file == "config.json" else c
        if legacy_flag:
            qc.pop("format", None), qc.pop("checkpoint_format", None)
            qc["is_bitblas_format"] = True
        else:
            qc["format"] = qc["checkpoint_format"] = "bitblas"
        p.write_text(json.dumps(c))
    return out


def _assert_same(got, want, *, scale_cast=None):
    nq = 0
    for name, a in want.weights.items():
        if name.endswith(".g_idx"):
            continue
        b = got.weights[name]
        if not hasattr(a, "qtype"):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
            continue
        nq += 1
        assert (b.qtype, b.shape, b.block) == (a.qtype, a.shape, a.block), name
        assert b.perm is None and a.perm is None
        np.testing.assert_array_equal(b.data, a.data)
        if a.zero is None:
            assert b.zero is None, name
        else:
            np.testing.assert_array_equal(b.zero, a.zero)
        if scale_cast is None:
            assert b.scale.dtype == a.scale.dtype
            np.testing.assert_array_equal(b.scale, a.scale)
            np.testing.assert_array_equal(dequantize(b), dequantize(a))
        else:
            np.testing.assert_array_equal(b.scale, a.scale.astype(scale_cast))
    assert nq == 14  # 2 layers x 7 projections


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_equals_its_gptq_source(case, tmp_path):
    c = CASES[case]
    src = _gptq(case)
    out = _bitblas_folder(src, tmp_path / "bb", bits=c["bits"], sym=c["sym"], v1=c.get("fmt", "gptq") == "gptq")
    got, want = jquant.convert(out), jquant.convert(src)
    assert got.format == "gptq" and got.metadata["gptq"]["checkpoint_format"] == "bitblas"
    _assert_same(got, want)
    if not c["sym"]:  # real asymmetric zero points, not the midpoint everywhere
        q = got.weights["model.layers.0.mlp.down_proj.weight"]
        assert q.zero is not None and len(np.unique(q.zero)) > 1


def test_bf16_scales_are_not_interleaved(tmp_path):
    """bfloat16 activations turn fast decoding off: plain ``general_compress`` bytes."""
    import ml_dtypes

    src = _gptq("b4-g128-asym-v1")
    out = _bitblas_folder(src, tmp_path / "bb", bits=4, sym=False, v1=True, fp16=False)
    _assert_same(jquant.convert(out), jquant.convert(src), scale_cast=ml_dtypes.bfloat16)


def test_legacy_is_bitblas_format_flag(tmp_path):
    src = _gptq("b4-g128-sym-v1")
    out = _bitblas_folder(src, tmp_path / "bb", bits=4, sym=True, v1=True, legacy_flag=True)
    _assert_same(jquant.convert(out), jquant.convert(src))
    assert (
        GPTQConfig.from_dict({"bits": 4, "group_size": 128, "is_bitblas_format": True}).checkpoint_format == "bitblas"
    )


# ---- bad input --------------------------------------------------------------------------------

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def asym(tmp_path_factory):
    src = _gptq("b4-g128-asym-v1")
    return _bitblas_folder(src, tmp_path_factory.mktemp("bitblas") / "bb", bits=4, sym=False, v1=True)


def _edited(asym, tmp_path, edit=None, qc_edit=None):
    import torch
    from safetensors.torch import load_file as tload
    from safetensors.torch import save_file

    d = tmp_path / "e"
    shutil.copytree(asym, d)
    if edit is not None:
        t = tload(str(d / "model.safetensors"))
        edit(t, torch)
        save_file(t, str(d / "model.safetensors"))
    if qc_edit is not None:
        for f in ("config.json", "quantize_config.json"):
            c = json.loads((d / f).read_text())
            qc_edit(c["quantization_config"] if f == "config.json" else c)
            (d / f).write_text(json.dumps(c))
    return d


@pytest.mark.parametrize(
    ("edit", "tensor", "problem"),
    [
        (lambda t, torch: t.pop(f"{Q}.scales"), "scales", "missing tensor"),
        (lambda t, torch: t.update({f"{Q}.scales": t[f"{Q}.scales"].float()}), "scales", "dtype float32"),
        (lambda t, torch: t.update({f"{Q}.qweight": t[f"{Q}.qweight"].view(torch.int32)}), "qweight", "dtype int32"),
        (lambda t, torch: t.update({f"{Q}.scales": t[f"{Q}.scales"][:, :1].contiguous()}), "scales",
         r"expected \[256, 2\]"),
        (lambda t, torch: t.update({f"{Q}.qzeros": t[f"{Q}.qzeros"][:, :8].contiguous()}), "qzeros",
         r"expected \[2, 128\]"),
        (lambda t, torch: t.update({f"{Q}.zeros": t[f"{Q}.qzeros"].clone()}), "zeros", "both qzeros and zeros"),
        (lambda t, torch: t.update({f"{Q}.g_idx": torch.arange(256, dtype=torch.int32).flip(0).contiguous()}),
         "g_idx", "no act-order"),
        (lambda t, torch: t.update({f"{Q}.scales": t[f"{Q}.scales"].clone().fill_(float("nan"))}), "scales",
         "non-finite"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(asym, tmp_path, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        jquant.convert(_edited(asym, tmp_path, edit=edit))
    assert e.value.tensor == f"{Q}.{tensor}", e.value


@pytest.mark.parametrize("bits", [3, 1])
def test_unsupported_bits_are_refused(asym, tmp_path, bits):
    def qc_edit(qc):
        qc["bits"] = bits

    with pytest.raises((UnsupportedFormatError, ConfigError), match=f"bits|{bits}-bit") as e:
        jquant.convert(_edited(asym, tmp_path, qc_edit=qc_edit))
    assert "bits" in str(e.value) or "BitBLAS" in str(e.value)
