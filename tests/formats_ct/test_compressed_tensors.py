"""compressed-tensors checkpoints made by llm-compressor 0.14 ``oneshot`` (the real producer) on the tiny Llama.

Oracle: compressed-tensors 0.20's own decompression of every quantized linear, in float32
(`ct_decompress_fp32`), compared bit for bit with `jquant.dequantize` of the converted `QArray`;
plus the literal ``Compressor.decompress`` output in its own dtype.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from jquant.convert import convert, load, save
from jquant.core.activation import ActQuant
from jquant.core.dequant import dequantize
from jquant.core.qarray import QArray
from tests.fixtures.producers_ct import LLMC_SCHEMES
from tests.formats_ct.conftest import bits_equal, ct_decompress_fp32, read_config

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
N_LAYERS = 2

# scheme -> (qtype, block for a weight [N, K], zero?, expected input_quant repr or None); MIXED: per module kind
_MIXED_ATTN = ("uint4b8", lambda n, k: (1, 64), False, None)
_MIXED_MLP = ("fp8_e4m3", lambda n, k: (1, k), False, "ActQuant(fp8_e4m3, dynamic per-token)")
EXPECT = {
    "W4A16": ("uint4b8", lambda n, k: (1, 128), False, None),
    "W4A16_ASYM": ("uint4", lambda n, k: (1, 128), True, None),
    "W8A16": ("uint8b128", lambda n, k: (1, 128), False, None),
    "GPTQ": ("uint4b8", lambda n, k: (1, 128), False, None),
    "W8A8": ("int8", lambda n, k: (1, k), False, "ActQuant(int8, dynamic per-token)"),
    "W4A8": ("uint4b8", lambda n, k: (1, 128), False, "ActQuant(int8, dynamic per-token)"),
    "W8A8_STATIC_ASYM": ("int8", lambda n, k: (1, k), False, "ActQuant(int8, static per-tensor, asym)"),
    "FP8": ("fp8_e4m3", lambda n, k: (n, k), False, "ActQuant(fp8_e4m3, static per-tensor)"),
    "FP8_DYNAMIC": ("fp8_e4m3", lambda n, k: (1, k), False, "ActQuant(fp8_e4m3, dynamic per-token)"),
    "FP8_BLOCK": ("fp8_e4m3", lambda n, k: (128, 128), False, "ActQuant(fp8_e4m3, dynamic per-group128)"),
    "FP8_WEIGHT_ONLY": ("fp8_e4m3", lambda n, k: (1, k), False, None),
    "NVFP4": ("fp4_e2m1", lambda n, k: (1, 16), False, "ActQuant(fp4_e2m1, dynamic per-group16, scale=float8_e4m3fn)"),
    "MXFP4": ("fp4_e2m1", lambda n, k: (1, 32), False, "ActQuant(fp4_e2m1, dynamic per-group32, scale=float8_e8m0fnu)"),
    "MXFP8": ("fp8_e4m3", lambda n, k: (1, 32), False, "ActQuant(fp8_e4m3, dynamic per-group32, scale=float8_e8m0fnu)"),
    "MIXED": lambda prefix: _MIXED_MLP if ".mlp." in prefix else _MIXED_ATTN,
}
assert set(EXPECT) == set(LLMC_SCHEMES)


def _module_tensors(folder, prefix):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k[len(prefix) + 1 :]: f.get_tensor(k) for k in f.keys() if k.rpartition(".")[0] == prefix}


def _schemes(folder):
    """prefix -> (compressed-tensors QuantizationScheme, compression format), matching targets as CT does for these configs."""
    from compressed_tensors.quantization import QuantizationConfig

    qc = read_config(folder)["quantization_config"]
    cfg = QuantizationConfig.model_validate({k: v for k, v in qc.items() if k != "quant_method"})

    def lookup(prefix):
        for name, scheme in cfg.config_groups.items():
            if any(t == "Linear" or (t.startswith("re:") and re.match(t[3:], prefix)) for t in scheme.targets):
                return scheme, qc["config_groups"][name].get("format") or qc["format"]
        raise AssertionError(f"no group for {prefix}")

    return lookup


@pytest.mark.parametrize("scheme", LLMC_SCHEMES)
def test_llmcompressor_bit_exact_vs_compressed_tensors(llmc, scheme):
    """Every quantized linear dequantizes bit-exactly like compressed-tensors' decompress (fp32 and native dtype)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor

    folder = llmc / scheme
    ck = convert(folder)
    assert ck.format == "compressed-tensors"
    lookup = _schemes(folder)
    for layer in range(N_LAYERS):
        for lin in LINEARS:
            prefix = f"model.layers.{layer}.{lin}"
            qs, fmt = lookup(prefix)
            exp = EXPECT[scheme]
            qtype, block, has_zero, act_repr = exp(prefix) if callable(exp) else exp
            w = ck.weights[f"{prefix}.weight"]
            assert isinstance(w, QArray), prefix
            n, k = w.shape
            assert (w.qtype.name, w.block, w.zero is not None) == (qtype, block(n, k), has_zero), (prefix, w)
            local = _module_tensors(folder, prefix)
            want = ct_decompress_fp32(local, qs, fmt).numpy()
            got = dequantize(w)
            assert got.dtype == np.float32
            assert bits_equal(got, want), f"{scheme} {prefix}: max diff {np.abs(got - want).max()}"
            # the literal decompress() in its own output dtype (fp16 / bf16) agrees after rounding ours the same way
            if fmt != "mxfp8-quantized":
                lit = BaseCompressor.get_value_from_registry(fmt).decompress(local, qs)["weight"]
                assert torch.equal(torch.from_numpy(got).to(lit.dtype), lit), prefix
            act = ck.weights.get(f"{prefix}.input_quant")
            assert (repr(act) if act is not None else None) == act_repr, prefix
    # lm_head is ignored by the recipe: kept dense; no producer-side tensor leaks into weights
    assert isinstance(ck.weights["lm_head.weight"], np.ndarray)
    leaked = [
        n
        for n in ck.weights
        if n.rpartition(".")[2] in ("weight_scale", "weight_packed", "weight_shape", "input_scale")
    ]
    assert not leaked, leaked


def test_static_fp8_activation_scale_and_kv_cache_metadata(llmc):
    """FP8 (static): input_scale becomes ActQuant.scale; k_scale / v_scale go to metadata, not weights."""
    from tests.formats_ct.conftest import read_tensors

    folder = llmc / "FP8"
    ck = convert(folder)
    raw = read_tensors(folder)
    act = ck.weights["model.layers.1.mlp.down_proj.input_quant"]
    assert isinstance(act, ActQuant) and not act.dynamic
    assert act.scale.dtype == np.float32 and act.scale[0] == np.float32(
        raw["model.layers.1.mlp.down_proj.input_scale"][0]
    )
    assert not any(n.endswith(("k_scale", "v_scale")) for n in ck.weights)
    kv = ck.metadata["kv_cache"]
    assert kv["dtype"] == "fp8_e4m3" and kv["scheme"]["strategy"] == "tensor"
    assert sorted(kv["layers"]) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for layer, scales in kv["layers"].items():
        assert scales["k_scale"] == [float(raw[f"{layer}.k_scale"][0])]
        assert scales["v_scale"] == [float(raw[f"{layer}.v_scale"][0])]
        assert scales["k_scale"][0] > 0


def test_nvfp4_global_scale_handling(llmc):
    """NVFP4: the global divisor is kept as scale2 only when bit-exact, else folded into an f32 scale."""
    from jquant.formats.mxfp4 import nvfp4_scales
    from tests.formats_ct.conftest import read_tensors

    raw = read_tensors(llmc / "NVFP4")
    ck = convert(llmc / "NVFP4")
    p = "model.layers.0.self_attn.q_proj"
    w = ck.weights[f"{p}.weight"]
    s8, g = raw[f"{p}.weight_scale"], raw[f"{p}.weight_global_scale"]
    if w.scale2 is None:  # folded: scale == float(s) / g exactly
        assert w.scale.dtype == np.float32 and bits_equal(w.scale, s8.astype(np.float32) / g[0])
    else:
        assert w.scale.dtype == s8.dtype and w.scale2[0, 0] == np.float32(1) / g[0]
    # a power-of-two divisor is always exact as a multiplier: scale2 path, e4m3 scales kept
    s, s2 = nvfp4_scales(s8, np.array([256.0], np.float32))
    assert s.dtype == s8.dtype and s2 is not None and s2[0, 0] == np.float32(1 / 256)
    # a divisor whose reciprocal rounds differently for some block scale: folded
    # (5 / 3 != 5 * f32(1/3) in float32)
    s, s2 = nvfp4_scales(np.array([[3.0, 5.0]], np.float32).astype(s8.dtype), np.array([3.0], np.float32))
    assert (
        s2 is None and s.dtype == np.float32 and s[0, 0] == np.float32(1.0) and s[0, 1] == np.float32(5) / np.float32(3)
    )


@pytest.mark.parametrize("scheme", LLMC_SCHEMES)
def test_canonical_roundtrip(llmc, scheme, tmp_path):
    """save() + load() keeps every QArray, ActQuant and the kv_cache metadata."""
    ck = convert(llmc / scheme)
    out = save(ck, tmp_path / "canon")
    ck2 = load(out)
    assert set(ck2.weights) == set(ck.weights)
    for name, w in ck.weights.items():
        w2 = ck2.weights[name]
        assert type(w2) is type(w), name
        if isinstance(w, QArray):
            assert (w2.qtype, w2.shape, w2.block) == (w.qtype, w.shape, w.block)
            assert bits_equal(dequantize(w2), dequantize(w)), name
        elif isinstance(w, ActQuant):
            assert w2.static_json() == w.static_json()
            assert w2.arrays().keys() == w.arrays().keys()
            assert all(np.array_equal(w2.arrays()[f], a) for f, a in w.arrays().items())
    assert ck2.metadata.get("kv_cache") == ck.metadata.get("kv_cache")


def test_jnp_dequant_matches_numpy_for_every_scheme(llmc):
    """The device-side dequant reads the FP8-family QArrays (e4m3 / e8m0 / folded f32 scales) bit-exactly."""
    import jax
    import jax.numpy as jnp

    from jquant.core.qarray import register_pytree

    register_pytree()
    for scheme in LLMC_SCHEMES:
        w = convert(llmc / scheme).weights["model.layers.1.mlp.up_proj.weight"]
        jw = jax.tree_util.tree_map(jnp.asarray, w)
        assert bits_equal(np.asarray(dequantize(jw)), dequantize(w)), scheme
