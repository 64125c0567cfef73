"""`jquant.quantize` against the real producers of each scheme, bit for bit where the algorithm is the same.

* llm-compressor 0.14 (``QuantizationModifier`` presets FP8 / FP8_DYNAMIC / FP8_BLOCK / W8A8 /
  W8A16 / W4A16 / W4A16_ASYM / MXFP4, fixtures of tests/fixtures/producers_ct.py) on the fp16 tiny
  Llama: every code, scale, zero point and activation recipe equal to what jquant converts from
  the producer's checkpoint;
* compressed-tensors' own functions (``calculate_qparams`` + ``quantize``) on bf16 weights (the
  fixture model is fp16): the "arithmetic in the weight's dtype" rule in the other dtype;
* bitsandbytes ``quantize_4bit(nf4)`` on CPU, f32 / bf16 / fp16;
* torchao (``Int8WeightOnly``, ``Float8WeightOnly``): a different algorithm (float32 arithmetic,
  ``x * (1/s)``), stated and bounded here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import jquant
from jquant.core.dequant import decode_values
from jquant.core.packing import unpack_codes
from jquant.quantize import quantize, quantize_weight


def values(q) -> np.ndarray:
    """Decoded code values (before scales) of a QArray, whatever its code container."""
    return decode_values(unpack_codes(np.asarray(q.data), q.qtype.container_bits), q.qtype)


def f32(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


@pytest.fixture(scope="module")
def llmc():
    from tests.fixtures.producers_ct import llmcompressor_dir

    return llmcompressor_dir()


@pytest.fixture(scope="module")
def src(llmc):
    return jquant.convert(llmc / "src")


CT_CASES = {
    "fp8": "FP8",
    "fp8-channel": "FP8_DYNAMIC",
    "fp8-block": "FP8_BLOCK",
    "int8": "W8A8",
    "w8a16": "W8A16",
    "w4a16-g128": "W4A16",
    "w4a16-g128-asym": "W4A16_ASYM",
    "mxfp4": "MXFP4",
}


@pytest.mark.parametrize("scheme", list(CT_CASES))
def test_matches_llm_compressor(scheme, src, llmc):
    ours = quantize(src, scheme)
    ref = jquant.convert(llmc / CT_CASES[scheme])
    assert set(ours.quantized()) == set(ref.quantized()) and len(ref.quantized()) == 14
    for name, r in ref.quantized().items():
        o = ours.weights[name]
        assert o.block == r.block and o.shape == r.shape, name
        np.testing.assert_array_equal(values(o), values(r), err_msg=name)
        assert np.dtype(o.scale.dtype) == np.dtype(r.scale.dtype), name
        np.testing.assert_array_equal(f32(o.scale), f32(r.scale), err_msg=name)
        assert (o.zero is None) == (r.zero is None), name
        if o.zero is not None:  # both unsigned codes over the same uint4 values
            np.testing.assert_array_equal(f32(o.zero), f32(r.zero), err_msg=name)
        np.testing.assert_array_equal(jquant.dequantize(o), jquant.dequantize(r), err_msg=name)
    acts = {n: v for n, v in ref.weights.items() if n.endswith(".input_quant")}
    ours_acts = {n: v for n, v in ours.weights.items() if n.endswith(".input_quant")}
    assert set(ours_acts) == set(acts)
    for n, a in acts.items():
        if scheme == "fp8":  # llm-compressor's FP8 calibrates static input scales; ours are dynamic (vLLM)
            assert not a.dynamic and ours_acts[n].dynamic and ours_acts[n].granularity == "tensor"
        else:
            assert ours_acts[n].static_json() == a.static_json(), n
    for n, v in src.weights.items():  # embeddings, lm_head, norms: the source's own arrays
        if n not in ours.quantized():
            assert ours.weights[n] is v


CT_ARGS = {
    "fp8-channel": dict(num_bits=8, type="float", strategy="channel", symmetric=True),
    "fp8-block": dict(num_bits=8, type="float", strategy="block", block_structure=[128, 128], symmetric=True),
    "int8": dict(num_bits=8, type="int", strategy="channel", symmetric=True),
    "w4a16-g128": dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=True),
    "w4a16-g128-asym": dict(num_bits=4, type="int", strategy="group", group_size=128, symmetric=False),
}


@pytest.mark.parametrize("scheme", list(CT_ARGS))
def test_bf16_matches_compressed_tensors_functions(scheme):
    torch = pytest.importorskip("torch")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(**CT_ARGS[scheme])
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(256, 384, generator=g) * 0.03).to(torch.bfloat16)
    w[5] = 0  # an all-zero row / group: the eps scale
    # the min-max observer of each strategy, in the weight's dtype
    if args.strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    elif args.strategy == "group":
        r = w.reshape(256, -1, 128)
        lo, hi = r.amin(-1), r.amax(-1)
    else:
        r = w.reshape(2, 128, 3, 128)
        lo, hi = r.amin((1, 3)), r.amax((1, 3))
    scale, zp = calculate_qparams(lo, hi, args)
    codes = ct_quantize(w, scale, zp, args)
    deq_ref = dequantize(codes, scale, zp, args)  # in the scale's dtype, bf16
    q = quantize_weight("w", w.float().numpy().astype(ml_dtypes.bfloat16), scheme)
    assert np.dtype(q.scale.dtype) == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(f32(q.scale), scale.float().numpy().reshape(q.scale.shape))
    offset = 8 if q.zero is not None else 0  # asymmetric canonical codes are q + 8 (uint4)
    np.testing.assert_array_equal(values(q) - offset, codes.float().numpy())
    np.testing.assert_array_equal(
        jquant.dequantize(q).astype(ml_dtypes.bfloat16).astype(np.float32), deq_ref.float().numpy()
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_nf4_matches_bitsandbytes(dtype):
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    tdt = getattr(torch, dtype)
    w = (torch.randn(96, 320, generator=torch.Generator().manual_seed(0)) * 0.05).to(tdt)
    w[3, :64] = 0
    packed, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    p = packed.view(torch.uint8).reshape(-1).numpy()
    codes = np.stack([p >> 4, p & 15], -1).reshape(96, 320)  # bitsandbytes: first code in the high nibble
    wn = w.float().numpy().astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else w.numpy()
    q = quantize_weight("w", wn, "nf4")
    np.testing.assert_array_equal(unpack_codes(q.data, 4), codes)
    np.testing.assert_array_equal(q.scale.reshape(-1), st.absmax.numpy())
    ref = F.dequantize_4bit(packed, st, quant_type="nf4")  # in the weight's dtype
    np.testing.assert_array_equal(jquant.dequantize(q).astype(wn.dtype).astype(np.float32), ref.float().numpy())


def test_torchao_differs_as_stated():
    """torchao's int8 / fp8 per-row weights use float32 arithmetic and ``x * (1/s)``: on a float32
    weight the scales are jquant's own and at most a few codes move by one step; on bf16 the scales
    differ by the bf16 rounding of compressed-tensors' arithmetic (measured, bounded)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(4)) * 0.02
    for cfg, scheme in ((Int8WeightOnlyConfig(), "int8"), (Float8WeightOnlyConfig(), "fp8-channel")):
        lin = torch.nn.Linear(512, 256, bias=False)
        lin.weight.data = w.clone()
        quantize_(lin, cfg)
        tw = lin.weight
        q = quantize_weight("w", w.numpy(), scheme)
        np.testing.assert_array_equal(f32(q.scale).reshape(-1), tw.scale.float().numpy().reshape(-1))
        diff = values(q) != tw.qdata.float().numpy()
        assert diff.mean() < 1e-3, (scheme, diff.mean())
        if scheme == "int8":
            assert np.abs(values(q) - tw.qdata.float().numpy()).max() <= 1
