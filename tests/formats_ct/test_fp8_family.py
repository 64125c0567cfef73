"""FP8 / FP4 checkpoints without a CPU producer here: HF block FP8, per-tensor FP8, FBGEMM FP8,
ModelOpt FP8 / NVFP4, Quark FP8 / MXFP4, gpt-oss MXFP4.

How each fixture is made (no network, no GPU):

* HF fine-grained FP8: transformers 5.24's own quantizer op ``Fp8Quantize`` (what
  ``save_pretrained`` of a ``FineGrainedFP8Config`` model runs) on random weights; oracle:
  transformers' ``_dequantize_fp8_weight``.
* per-tensor FP8 / FBGEMM / ModelOpt FP8: the producers' arithmetic (AutoFP8 / ModelOpt: ``scale =
  amax / 448``, FBGEMM: per-row ``amax / 448``; ``fp8 = (w / scale).to(float8_e4m3fn)``) in torch;
  oracle: transformers' ``_dequantize_fp8_weight`` (per-tensor) and ``fp8 * scale``.
* ModelOpt NVFP4: ``NVFP4QTensor.quantize``'s path (``scale_2 = amax / (6 * 448)``, block scale
  ``block_amax / (6 * scale_2)`` cast to e4m3, codes = nearest E2M1 of ``w / (scale * scale_2)``,
  packed low nibble first) with compressed-tensors' ``pack_fp4_to_uint8``; oracle: ModelOpt's
  ``dequantize`` order ``E2M1 * (float(scale) * scale_2)`` over compressed-tensors' ``unpack_fp4_from_uint8``
  (nvidia-modelopt itself is not installed here: the order is read from its source, not run).
* Quark MXFP4 and gpt-oss: OCP MX quantization by compressed-tensors' MXFP4 compressor, tensors
  renamed to Quark's (``weight``, ``weight_scale``) / gpt-oss's (``*_blocks`` [E, N, K/32, 16],
  ``*_scales``) layout; oracle: compressed-tensors' MX dequant, and for gpt-oss transformers'
  ``convert_moe_packed_tensors`` (the function transformers loads gpt-oss with).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from jquant.convert import convert, load, save
from jquant.core.activation import ActQuant
from jquant.core.dequant import dequantize
from tests.fixtures.producers_ct import tiny_config, write_checkpoint
from tests.formats_ct.conftest import bits_equal

Q = "model.layers.0.self_attn.q_proj"
K_ = "model.layers.0.self_attn.k_proj"
V = "model.layers.0.self_attn.v_proj"
SHAPES = {Q: (256, 256), K_: (128, 256), V: (128, 256), "model.layers.0.mlp.down_proj": (256, 512)}


def _w(n, k, seed):
    import torch

    torch.manual_seed(seed)
    return torch.randn(n, k) * 0.02


def _plain():
    return {"model.norm.weight": np.ones(256, np.float16), "lm_head.weight": np.zeros((512, 256), np.float16)}


def _fp8(w, scale):
    import torch

    return (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def _np(t):
    import ml_dtypes
    import torch

    if t.dtype == torch.float8_e4m3fn:
        return t.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    return t.numpy()


def test_hf_block_fp8_vs_transformers(tmp_path):
    import torch
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Quantize, _dequantize_fp8_weight

    class _Quantizer:
        quantization_config = FineGrainedFP8Config(weight_block_size=[128, 128])

    op = Fp8Quantize(_Quantizer())
    tensors, want = _plain(), {}
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        out = op.convert({f"{name}.weight": _w(n, k, i)})
        w, s = out[f"{name}.weight"], out[f"{name}.weight_scale_inv"]
        assert w.dtype == torch.float8_e4m3fn and s.shape == (n // 128, k // 128)
        tensors |= {f"{name}.weight": _np(w), f"{name}.weight_scale_inv": s.numpy()}
        want[name] = _dequantize_fp8_weight(w, s, [128, 128], torch.float32).numpy()
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    ck = convert(write_checkpoint(tmp_path / "ck", tiny_config(qc), tensors))
    assert ck.format == "fp8"
    for name, ref in want.items():
        q = ck.weights[f"{name}.weight"]
        assert (q.qtype.name, q.block) == ("fp8_e4m3", (128, 128))
        assert bits_equal(dequantize(q), ref), name
        assert repr(ck.weights[f"{name}.input_quant"]) == "ActQuant(fp8_e4m3, dynamic per-group128)"
    assert isinstance(ck.weights["lm_head.weight"], np.ndarray)


def test_hf_block_fp8_partial_edge_blocks(tmp_path):
    """N, K not multiples of 128: the scale grid is ceil-sized and edge blocks are partial (DeepSeek layout)."""
    import torch

    n, k = 200, 320
    w = _w(n, k, 3)
    s = torch.rand(-(-n // 128), -(-k // 128)) * 1e-4 + 1e-5
    sx = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    fp8 = _fp8(w, sx)
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    ck = convert(
        write_checkpoint(
            tmp_path / "ck", tiny_config(qc), {f"{Q}.weight": _np(fp8), f"{Q}.weight_scale_inv": s.numpy()}
        )
    )
    assert bits_equal(dequantize(ck.weights[f"{Q}.weight"]), (fp8.float() * sx).numpy())


def test_per_tensor_fp8_static_and_fbgemm(tmp_path):
    import torch
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    # per-tensor, static activations (AutoFP8 / vLLM "fp8" serialized)
    tensors, want = _plain(), {}
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        w = _w(n, k, i)
        s = (w.abs().amax() / 448).reshape(())
        f8 = _fp8(w, s)
        tensors |= {
            f"{name}.weight": _np(f8),
            f"{name}.weight_scale": s.numpy(),
            f"{name}.input_scale": np.float32(0.05 + i),
        }
        want[name] = _dequantize_fp8_weight(f8, s, None, torch.float32).numpy()
    qc = {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]}
    ck = convert(write_checkpoint(tmp_path / "pt", tiny_config(qc), {k: np.asarray(v) for k, v in tensors.items()}))
    for i, (name, ref) in enumerate(want.items()):
        q = ck.weights[f"{name}.weight"]
        assert q.block == q.shape and bits_equal(dequantize(q), ref)
        act = ck.weights[f"{name}.input_quant"]
        assert not act.dynamic and act.scale[0] == np.float32(0.05 + i)
    # FBGEMM: per-row scales [N, 1], dynamic per-token activations with an amax upper bound
    tensors, want = _plain(), {}
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        w = _w(n, k, 10 + i)
        s = w.abs().amax(1, keepdim=True) / 448
        f8 = _fp8(w, s)
        tensors |= {f"{name}.weight": _np(f8), f"{name}.weight_scale": s.numpy()}
        want[name] = (f8.float() * s).numpy()
    qc = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]}
    ck = convert(write_checkpoint(tmp_path / "fb", tiny_config(qc), tensors))
    for name, ref in want.items():
        q = ck.weights[f"{name}.weight"]
        assert q.block == (1, q.shape[1]) and bits_equal(dequantize(q), ref)
        act = ck.weights[f"{name}.input_quant"]
        assert (act.dynamic, act.granularity, act.amax_ub) == (True, "token", 1200.0)


def _modelopt_nvfp4(w):
    """ModelOpt NVFP4QTensor.quantize's arithmetic (formats.md 5.4), packed with compressed-tensors' helper."""
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    n, k = w.shape
    scale_2 = (w.abs().amax() / (6 * 448)).float()
    blocks = w.reshape(n, k // 16, 16)
    scale = (blocks.abs().amax(-1) / (6 * scale_2)).to(torch.float8_e4m3fn)
    codes = cast_to_fp4((blocks / (scale.float() * scale_2)[..., None]).clamp(-6, 6)).reshape(n, k)
    return pack_fp4_to_uint8(codes), scale, scale_2.reshape(())


@pytest.mark.parametrize("side_file", [True, False])
def test_modelopt_fp8_and_nvfp4(tmp_path, side_file):
    """ModelOpt NVFP4 (weight_scale_2 is a multiplier -> scale2) and FP8, with KV scales; via hf_quant_config.json or config.json."""
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    tensors, want = _plain(), {}
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        packed, scale, scale_2 = _modelopt_nvfp4(_w(n, k, 20 + i))
        tensors |= {
            f"{name}.weight": packed.numpy(),
            f"{name}.weight_scale": _np(scale),
            f"{name}.weight_scale_2": scale_2.numpy(),
            f"{name}.input_scale": np.float32(0.25 / (6 * 448)),
        }
        vals = unpack_fp4_from_uint8(packed, n, k, dtype=torch.float32)
        # NVFP4QTensor.dequantize: per-block scale = float(scale) * double_scale, then codes * per-block scale
        want[name] = (vals * (scale.float() * scale_2).repeat_interleave(16, 1)).numpy()
    tensors[f"{K_}.k_scale"] = np.float32(0.011)
    tensors[f"{V}.v_scale"] = np.float32(0.022)
    quant = {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16, "exclude_modules": ["lm_head"]}
    if side_file:
        cfg, side = (
            tiny_config(),
            {"hf_quant_config.json": {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}},
        )
    else:
        cfg, side = tiny_config({"quant_method": "modelopt", **quant}), None
    ck = convert(write_checkpoint(tmp_path / "nv", cfg, tensors, side))
    assert ck.format == "modelopt"
    for name, ref in want.items():
        q = ck.weights[f"{name}.weight"]
        assert q.qtype.name == "fp4_e2m1" and q.scale2 is not None and q.scale.dtype == np.dtype("float8_e4m3fn")
        assert bits_equal(dequantize(q), ref), name
        act = ck.weights[f"{name}.input_quant"]
        assert act.scale_dtype == "float8_e4m3fn" and act.global_scale[0] == np.float32(1) / np.float32(
            0.25 / (6 * 448)
        )
    kv = ck.metadata["kv_cache"]["layers"]["model.layers.0.self_attn"]
    assert kv == {"k_scale": [float(np.float32(0.011))], "v_scale": [float(np.float32(0.022))]}
    assert not any(n.endswith(("k_scale", "v_scale")) for n in ck.weights)
    assert load(save(ck, tmp_path / "canon")).metadata["kv_cache"] == ck.metadata["kv_cache"]

    # FP8 (per-tensor weights, static per-tensor activations)
    tensors = _plain()
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        w = _w(n, k, 30 + i)
        s = (w.abs().amax() / 448).reshape(())
        tensors |= {
            f"{name}.weight": _np(_fp8(w, s)),
            f"{name}.weight_scale": s.numpy(),
            f"{name}.input_scale": np.float32(0.01),
        }
        want[name] = (_fp8(w, s).float() * s).numpy()
    ck = convert(
        write_checkpoint(tmp_path / "f8", tiny_config({"quant_method": "modelopt", "quant_algo": "FP8"}), tensors)
    )
    for name in SHAPES:
        assert bits_equal(dequantize(ck.weights[f"{name}.weight"]), want[name])
        assert repr(ck.weights[f"{name}.input_quant"]) == "ActQuant(fp8_e4m3, static per-tensor)"


def _mx(w):
    """OCP MXFP4 by compressed-tensors' MXFP4 compressor -> (packed uint8 [N, K/2], e8m0 uint8 [N, K/32], fp32 oracle)."""
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    scheme = preset_name_to_scheme("MXFP4A16", ["Linear"])
    g = w.reshape(w.shape[0], -1, 32)
    scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights)
    comp = BaseCompressor.get_value_from_registry("mxfp4-pack-quantized")
    c = comp.compress({"weight": w, "weight_scale": scale}, scheme)
    n, half = c["weight_packed"].shape
    x = unpack_fp4_from_uint8(c["weight_packed"], n, 2 * half, dtype=torch.float32)
    ref = ct_dequantize(
        x_q=x, scale=comp._decompress_scale(c["weight_scale"], torch.float32), args=scheme.weights, dtype=torch.float32
    )
    return c["weight_packed"].numpy(), c["weight_scale"].numpy(), ref.numpy()


def test_quark_fp8_and_mxfp4(tmp_path):
    """Quark: FP8 per-channel (static input) on attention, OCP MXFP4 on the MLP via layer_quant_config; KV output_scale."""
    tensors, want = _plain(), {}
    for i, (name, (n, k)) in enumerate(SHAPES.items()):
        w = _w(n, k, 40 + i)
        if "mlp" in name:
            packed, e8, ref = _mx(w)
            tensors |= {f"{name}.weight": packed, f"{name}.weight_scale": e8}
        else:
            s = w.abs().amax(1) / 448  # per_channel: [N]
            f8 = _fp8(w, s[:, None])
            tensors |= {
                f"{name}.weight": _np(f8),
                f"{name}.weight_scale": s.numpy(),
                f"{name}.input_scale": np.float32(0.02),
            }
            ref = (f8.float() * s[:, None]).numpy()
        want[name] = ref
    tensors[f"{K_}.output_scale"] = np.float32(0.5)
    tensors[f"{V}.output_scale"] = np.float32(0.25)
    fp8 = {"dtype": "fp8_e4m3", "qscheme": "per_channel", "ch_axis": 0, "is_dynamic": False}
    mx = {"dtype": "fp4", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0", "is_dynamic": False}
    qc = {
        "quant_method": "quark",
        "global_quant_config": {
            "weight": fp8,
            "input_tensors": {**fp8, "qscheme": "per_tensor"},
            "output_tensors": None,
        },
        "layer_quant_config": {"*mlp*": {"weight": mx, "input_tensors": {**mx, "is_dynamic": True}}},
        "exclude": ["lm_head"],
        "export": {"kv_cache_group": ["*k_proj", "*v_proj"], "pack_method": "reorder"},
    }
    ck = convert(write_checkpoint(tmp_path / "qk", tiny_config(qc), tensors))
    assert ck.format == "quark"
    for name, ref in want.items():
        assert bits_equal(dequantize(ck.weights[f"{name}.weight"]), ref), name
    assert ck.weights["model.layers.0.mlp.down_proj.weight"].scale.dtype == np.dtype("float8_e8m0fnu")
    assert repr(ck.weights["model.layers.0.mlp.down_proj.input_quant"]).endswith("per-group32, scale=float8_e8m0fnu)")
    assert ck.weights[f"{Q}.input_quant"].scale[0] == np.float32(0.02)
    assert ck.metadata["kv_cache"]["layers"]["model.layers.0.self_attn"] == {"k_scale": [0.5], "v_scale": [0.25]}


def test_gpt_oss_mxfp4_experts_split_per_expert(tmp_path):
    """gpt-oss: 3-D expert stacks become one canonical linear per expert, equal to transformers' dequant."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    e, h, inter = 3, 256, 128
    p = "model.layers.0.mlp.experts"
    tensors = {"model.layers.0.mlp.router.weight": np.zeros((e, h), np.float32), **_plain()}
    refs = {}
    for proj, (n, k) in {"gate_up_proj": (2 * inter, h), "down_proj": (h, inter)}.items():
        packs, scales, ref = zip(*(_mx(_w(n, k, 50 + j)) for j in range(e)), strict=True)
        blocks = np.stack(packs).reshape(e, n, k // 32, 16)
        sc = np.stack(scales)
        tensors |= {
            f"{p}.{proj}_blocks": blocks,
            f"{p}.{proj}_scales": sc,
            f"{p}.{proj}_bias": np.arange(e * n, dtype=np.float32).reshape(e, n),
        }
        tf = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(sc), dtype=torch.float32)
        assert tf.shape == (e, k, n)  # transformers keeps the experts' [E, in, out] orientation
        refs[proj] = (tf.transpose(1, 2).numpy(), np.stack(ref))
    # a plain 2-D linear in the same layout (blocks [N, K/32, 16]) keeps its own name
    o_packed, o_scales, o_ref = _mx(_w(256, 256, 59))
    tensors["model.layers.0.self_attn.o_proj.weight_blocks"] = o_packed.reshape(256, 8, 16)
    tensors["model.layers.0.self_attn.o_proj.weight_scales"] = o_scales
    qc = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "lm_head"],
    }
    ck = convert(write_checkpoint(tmp_path / "oss", tiny_config(qc), tensors))
    assert ck.format == "mxfp4"
    for proj, (tf, ct) in refs.items():
        for j in range(e):
            q = ck.weights[f"{p}.{j}.{proj}.weight"]
            assert q.block == (1, 32) and q.shape == tf[j].shape
            assert bits_equal(dequantize(q), tf[j]) and bits_equal(dequantize(q), ct[j]), (proj, j)
            assert np.array_equal(ck.weights[f"{p}.{j}.{proj}.bias"], tensors[f"{p}.{proj}_bias"][j])
    assert bits_equal(dequantize(ck.weights["model.layers.0.self_attn.o_proj.weight"]), o_ref)
    assert not any(n.endswith(("_blocks", "_scales")) for n in ck.weights)
    assert isinstance(ck.weights["model.layers.0.mlp.router.weight"], np.ndarray)


def test_act_quant_is_not_a_weight_array(tmp_path):
    """Only ``*.input_quant`` entries are ActQuant; every other non-QArray entry is a numpy array."""
    from jquant.core.qarray import QArray

    w = _w(256, 256, 0)
    s = (w.abs().amax() / 448).reshape(())
    t = {f"{Q}.weight": _np(_fp8(w, s)), f"{Q}.weight_scale": s.numpy().astype(np.float32)} | _plain()
    ck = convert(
        write_checkpoint(tmp_path / "ck", tiny_config({"quant_method": "fp8", "activation_scheme": "dynamic"}), t)
    )
    assert set(ck.weights) == {f"{Q}.weight", f"{Q}.input_quant", "model.norm.weight", "lm_head.weight"}
    assert isinstance(ck.weights[f"{Q}.weight"], QArray)
    assert isinstance(ck.weights[f"{Q}.input_quant"], ActQuant)
    assert repr(ck.weights[f"{Q}.input_quant"]) == "ActQuant(fp8_e4m3, dynamic per-tensor)"
    assert all(isinstance(ck.weights[n], np.ndarray) for n in ("model.norm.weight", "lm_head.weight"))


def test_hf_block_fp8_ue8m0_scales(tmp_path):
    """scale_fmt "ue8m0": power-of-two scales stored as float8_e8m0fnu stay in that dtype, dequant unchanged."""
    import torch

    w = _w(256, 256, 5)
    e = torch.randint(-12, -6, (2, 2)).float()
    s = torch.pow(2.0, e)
    sx = s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    f8 = _fp8(w, sx)
    s_e8 = (e.numpy().astype(np.int32) + 127).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128], "scale_fmt": "ue8m0"}
    ck = convert(
        write_checkpoint(tmp_path / "ck", tiny_config(qc), {f"{Q}.weight": _np(f8), f"{Q}.weight_scale_inv": s_e8})
    )
    q = ck.weights[f"{Q}.weight"]
    assert q.scale.dtype == np.dtype(ml_dtypes.float8_e8m0fnu)
    assert bits_equal(dequantize(q), (f8.float() * sx).numpy())


def test_modelopt_mixed_precision_and_excludes(tmp_path):
    """MIXED_PRECISION: per-layer algorithms (per-channel FP8 with per-token inputs, 128x128 block FP8 weight-only)."""
    import torch

    down = "model.layers.0.mlp.down_proj"
    t, want = _plain(), {}
    w = _w(256, 256, 60)
    s = w.abs().amax(1) / 448
    t |= {f"{Q}.weight": _np(_fp8(w, s[:, None])), f"{Q}.weight_scale": s.numpy()}
    want[Q] = (_fp8(w, s[:, None]).float() * s[:, None]).numpy()
    w = _w(256, 512, 61)
    sb = torch.rand(2, 4) * 1e-4 + 1e-5
    sx = sb.repeat_interleave(128, 0).repeat_interleave(128, 1)
    t |= {f"{down}.weight": _np(_fp8(w, sx)), f"{down}.weight_scale": sb.numpy()}
    want[down] = (_fp8(w, sx).float() * sx).numpy()
    t[f"{K_}.weight"] = np.ones((128, 256), np.float16)  # excluded by wildcard: stays dense
    qc = {
        "quant_method": "modelopt",
        "quant_algo": "MIXED_PRECISION",
        "quantized_layers": {Q: {"quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}, down: {"quant_algo": "FP8_PB_WO"}},
        "exclude_modules": ["*k_proj", "lm_head"],
    }
    ck = convert(write_checkpoint(tmp_path / "mp", tiny_config(qc), t))
    assert ck.weights[f"{Q}.weight"].block == (1, 256) and bits_equal(dequantize(ck.weights[f"{Q}.weight"]), want[Q])
    assert repr(ck.weights[f"{Q}.input_quant"]) == "ActQuant(fp8_e4m3, dynamic per-token)"
    assert ck.weights[f"{down}.weight"].block == (128, 128) and bits_equal(
        dequantize(ck.weights[f"{down}.weight"]), want[down]
    )
    assert f"{down}.input_quant" not in ck.weights  # weight-only
    assert isinstance(ck.weights[f"{K_}.weight"], np.ndarray)
