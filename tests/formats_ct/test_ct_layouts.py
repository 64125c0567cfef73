"""compressed-tensors pack-quantized layouts llm-compressor's presets do not reach: odd bit widths, the
pre-0.18 element-aligned packing, asymmetric odd-width zero points, and group act-order (``weight_g_idx``).

Producers: compressed-tensors 0.20's own ``PackedQuantizationCompressor.compress`` /
``pack_to_int32`` (dense packing) on hand-computed ``calculate_qparams`` scales; the <= 0.17 packing is
re-implemented from ``git show 66e631f6^:src/compressed_tensors/compressors/pack_quantized/helpers.py``
(``32 // b`` codes per int32 at shifts ``b * j``). Oracle: compressed-tensors' ``decompress`` (dense) or
its ``dequantize`` of the original int8 codes (element-aligned, act-order: the gather formula of
formats.md 4.3, i.e. CT <= 0.17 ``_process_group`` with ``argsort(g_idx)``), in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

from jquant.convert import convert
from jquant.core.dequant import dequantize
from tests.fixtures.producers_ct import tiny_config, write_checkpoint
from tests.formats_ct.conftest import bits_equal

N, K, G = 256, 512, 64
PREFIX = "model.layers.0.mlp.down_proj"


def _args(bits, symmetric, actorder=None):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(
        num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=G, actorder=actorder
    )


def _qparams(w, args):
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    g = w.reshape(w.shape[0], -1, G)
    return calculate_qparams(g.amin(-1), g.amax(-1), args)


def _config(bits, symmetric, version, actorder=None):
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": G}
    if actorder:
        weights["actorder"] = actorder
    qc = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "version": version,
        "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "format": "pack-quantized"}},
    }
    return tiny_config(qc)


def _weight(seed=0):
    import torch

    torch.manual_seed(seed)
    return (torch.randn(N, K) * 0.02).float()


def _old_pack(codes: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """compressed-tensors <= 0.17 pack_to_int32: signed codes + 2**(b-1), 32 // b whole codes per int32 word."""
    u = np.moveaxis(codes.astype(np.int64) + (1 << (bits - 1)), axis, -1)
    pf = 32 // bits
    pad = -u.shape[-1] % pf
    u = np.concatenate([u, np.zeros((*u.shape[:-1], pad), np.int64)], -1).reshape(*u.shape[:-1], -1, pf)
    words = (u << (np.arange(pf) * bits)).sum(-1).astype(np.uint32).view(np.int32)
    return np.moveaxis(words, -1, axis)


def _passthrough():
    return {"model.norm.weight": np.ones(256, np.float16)}


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_dense_packing_vs_decompress(tmp_path, bits, symmetric):
    """compressed-tensors 0.20 (dense bitstream) at every width, symmetric and asymmetric (zero points packed on N)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme

    w = _weight(bits)
    args = _args(bits, symmetric)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    scale, zp = _qparams(w, args)
    comp = BaseCompressor.get_value_from_registry("pack-quantized")
    c = comp.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    assert c["weight_packed"].shape == (N, -(-K * bits // 32))
    want = comp.decompress(c, scheme)["weight"].float().numpy()
    tensors = {f"{PREFIX}.{k}": v.numpy() for k, v in c.items()} | _passthrough()
    ck = convert(write_checkpoint(tmp_path / "ck", _config(bits, symmetric, "0.20.0"), tensors))
    q = ck.weights[f"{PREFIX}.weight"]
    assert q.qtype.name == (f"uint{bits}b{1 << (bits - 1)}" if symmetric else f"uint{bits}")
    assert q.qtype.container_bits == {2: 2, 3: 4, 5: 8, 6: 8, 7: 8, 8: 8}[bits]
    assert bits_equal(dequantize(q), want)
    assert np.array_equal(ck.weights["model.norm.weight"], np.ones(256, np.float16))


@pytest.mark.parametrize("bits", [3, 5, 6])
@pytest.mark.parametrize("symmetric", [True, False])
def test_element_aligned_packing_pre_018(tmp_path, bits, symmetric):
    """<= 0.17 packing (whole codes per word) is recognised by its packed width and decoded exactly."""
    import torch
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
    from compressed_tensors.quantization.lifecycle.forward import quantize

    w = _weight(10 + bits)
    args = _args(bits, symmetric)
    scale, zp = _qparams(w, args)
    zp = None if symmetric else zp
    q = quantize(x=w, scale=scale, zero_point=zp, args=args, dtype=torch.int8)
    want = ct_dequantize(x_q=q, scale=scale, zero_point=zp, args=args, dtype=torch.float32).numpy()
    tensors = {
        f"{PREFIX}.weight_packed": _old_pack(q.numpy(), bits, axis=1),
        f"{PREFIX}.weight_scale": scale.numpy(),
        f"{PREFIX}.weight_shape": np.array([N, K], np.int64),
    } | _passthrough()
    assert tensors[f"{PREFIX}.weight_packed"].shape[1] == -(-K // (32 // bits)) != -(-K * bits // 32)
    if not symmetric:
        tensors[f"{PREFIX}.weight_zero_point"] = _old_pack(zp.numpy().astype(np.int8), bits, axis=0)
    ck = convert(write_checkpoint(tmp_path / "ck", _config(bits, symmetric, "0.17.1"), tensors))
    assert bits_equal(dequantize(ck.weights[f"{PREFIX}.weight"]), want)


def test_group_actorder_g_idx(tmp_path):
    """actorder=group: weight_g_idx becomes perm; columns regrouped so every group is contiguous."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
    from compressed_tensors.quantization.lifecycle.forward import quantize

    w = _weight(7)
    rng = np.random.default_rng(0)
    order = rng.permutation(K)  # the activation order: order[j] is quantized j-th; group of channel order[j] = j // G
    g_idx = np.empty(K, np.int32)
    g_idx[order] = np.arange(K) // G
    args = _args(4, True)
    wp = w[:, torch.from_numpy(order)]
    scale, _ = _qparams(wp, args)
    qp = quantize(x=wp, scale=scale, zero_point=None, args=args, dtype=torch.int8)
    q = torch.empty_like(qp)
    q[:, torch.from_numpy(order)] = qp
    deq_p = ct_dequantize(x_q=qp, scale=scale, args=args, dtype=torch.float32).numpy()
    want = np.empty_like(deq_p)
    want[:, order] = deq_p
    tensors = {
        f"{PREFIX}.weight_packed": pack_to_int32(q, 4).numpy(),
        f"{PREFIX}.weight_scale": scale.numpy(),
        f"{PREFIX}.weight_shape": np.array([N, K], np.int64),
        f"{PREFIX}.weight_g_idx": g_idx,
    } | _passthrough()
    ck = convert(write_checkpoint(tmp_path / "ck", _config(4, True, "0.20.0", actorder="group"), tensors))
    qa = ck.weights[f"{PREFIX}.weight"]
    assert qa.perm is not None and np.array_equal(np.sort(qa.perm), np.arange(K))
    assert np.array_equal(g_idx[qa.perm], np.arange(K) // G)  # contiguous groups in data order
    assert bits_equal(dequantize(qa), want)
    # the gather formula of formats.md 4.3, independently: W[n, k] = (u - 8) * s[n, g_idx[k]]
    u = q.numpy().astype(np.float32)
    assert bits_equal(dequantize(qa), u * scale.numpy()[:, g_idx])
