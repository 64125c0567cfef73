"""GPTQModel planar checkpoints (5/6/7-bit, ``gptq_p`` 3-bit; jquant.formats.gptq_planar).

GPTQModel 7.7 quantizes the tiny Llama on CPU (full GPTQ, tests/fixtures/producers_gptq_awq.py)
and saves the planar layout; GPTQModel's own ``convert_gptq_file`` dequantization (stored next to
the checkpoint) is the oracle, matched bit for bit.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jquant
from jquant.core.dequant import dequantize
from jquant.core.errors import ConfigError, FormatError
from jquant.formats.gptq import GPTQConfig, PlanarScheme
from jquant.formats.gptq_planar import unpack_planar
from tests.fixtures.producers_gptq_awq import gptq_checkpoint, producer_dequantized

# (bits, group_size, sym, desc_act, fmt): fmt "gptq" for 5 bits checks GPTQModel's relabelling to gptq_p.
PLANAR_VARIANTS = (
    (5, 128, True, False, "gptq"),
    (6, 64, False, False, "gptq_p"),
    (7, 32, True, True, "gptq_p"),
    (3, 64, False, False, "gptq_p"),
)


def test_unpack_planar_worked_example():
    # 5-bit codes 0..31 down one column: low nibbles in 4 words (8 per word), bit 4 in one word.
    words = np.array([0x76543210, 0xFEDCBA98, 0x76543210, 0xFEDCBA98, 0xFFFF0000], np.uint32).view(np.int32)
    np.testing.assert_array_equal(unpack_planar(words[:, None], 5, axis=0)[:, 0], np.arange(32))
    np.testing.assert_array_equal(unpack_planar(words[None, :], 5, axis=1)[0], np.arange(32))
    # 7-bit: planes 4 + 2 + 1 (offsets 0, 4, 6): code 127 everywhere sets every bit of all 7 words
    ones = np.full((7, 1), -1, np.int32)
    assert (unpack_planar(ones, 7, axis=0) == 127).all()


@pytest.mark.parametrize("variant", PLANAR_VARIANTS, ids=lambda v: f"b{v[0]}-g{v[1]}-{v[4]}")
def test_planar_matches_gptqmodel(variant):
    folder = gptq_checkpoint(*variant)
    bits = variant[0]
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["checkpoint_format"] == "gptq_p" and qc["bits"] == bits
    ck = jquant.convert(folder)
    oracle = producer_dequantized(folder)["f32"]
    assert len(oracle) == 14
    asym = 0
    for name, w in oracle.items():
        q = ck.weights[name]
        assert q.qtype.bits == bits and q.qtype.container_bits == (4 if bits == 3 else 8)
        assert q.data.shape == (w.shape[0], w.shape[1] * q.qtype.container_bits // 8)
        asym += q.zero is not None
        np.testing.assert_array_equal(np.asarray(dequantize(q), np.float32), w)
    assert (asym > 0) == (not variant[2])
    if variant[3]:  # desc_act: act-order perms survived
        assert any(ck.weights[n].perm is not None for n in oracle)


def test_dynamic_planar_override_parses():
    cfg = GPTQConfig.from_dict(
        {"bits": 4, "group_size": 128, "format": "gptq_p", "dynamic": {r"+:.*q_proj": {"bits": 6, "group_size": 64}}}
    )
    assert cfg.scheme("model.layers.0.self_attn.q_proj") == PlanarScheme(6, 64, False)
    assert cfg.scheme("model.layers.0.mlp.up_proj").zeros_v1 is False  # gptq_p 4-bit: plain layout, v2 zeros
    assert isinstance(GPTQConfig.from_dict({"bits": 3, "group_size": 64, "format": "gptq_p"}).scheme("x"), PlanarScheme)
    assert not isinstance(GPTQConfig.from_dict({"bits": 3, "group_size": 64}).scheme("x"), PlanarScheme)


Q = "model.layers.0.self_attn.q_proj"


def _broken(tmp_path, edit=None, qc_edit=None):
    d = tmp_path / "ck"
    shutil.copytree(gptq_checkpoint(*PLANAR_VARIANTS[1]), d)
    if edit is not None:
        t = load_file(str(d / "model.safetensors"))
        edit(t)
        save_file(t, str(d / "model.safetensors"))
    if qc_edit is not None:
        c = json.loads((d / "config.json").read_text())
        qc_edit(c["quantization_config"])
        (d / "config.json").write_text(json.dumps(c))
        (d / "quantize_config.json").unlink(missing_ok=True)
    return d


@pytest.mark.parametrize(
    ("edit", "tensor", "problem"),
    [
        (lambda t: t.update({f"{Q}.qweight": t[f"{Q}.qweight"][:-1]}), "qweight", "not whole planar blocks of 6 words"),
        (lambda t: t.update({f"{Q}.qzeros": t[f"{Q}.qzeros"][:, :-1]}), "qzeros", "planar 6-bit zeros"),
        (lambda t: t.pop(f"{Q}.scales"), "scales", "missing tensor"),
    ],
)  # fmt: skip
def test_bad_tensors_name_the_tensor(tmp_path, edit, tensor, problem):
    with pytest.raises(FormatError, match=problem) as e:
        jquant.convert(_broken(tmp_path, edit=edit))
    assert e.value.tensor == f"{Q}.{tensor}"


def test_wrong_width_in_config_is_caught(tmp_path):
    # 6-bit planar tensors declared 5-bit: 384 qweight rows are not whole 5-word blocks.
    with pytest.raises(FormatError, match="planar") as e:
        jquant.convert(_broken(tmp_path, qc_edit=lambda qc: qc.update(bits=5)))
    assert e.value.tensor.endswith((".qweight", ".qzeros", ".scales"))


def test_bad_planar_group_size(tmp_path):
    with pytest.raises(ConfigError, match="positive integer or -1") as e:
        jquant.convert(_broken(tmp_path, qc_edit=lambda qc: qc.update(group_size=0)))
    assert e.value.tensor == "quantization_config.group_size"


def _forward(ck):
    import jax.numpy as jnp

    ids = jnp.asarray((np.arange(1, 13, dtype=np.int32) * 37 % 500)[None])
    return np.asarray(jquant.models.from_checkpoint(ck)(ids), np.float32)


def test_model_runs_on_planar_codes():
    # the Flax model on the widened 6-bit codes == the same model on the dequantized weights
    ck = jquant.convert(gptq_checkpoint(*PLANAR_VARIANTS[1]))
    got = _forward(ck)
    ck.weights.update({k: np.asarray(dequantize(v), np.float32) for k, v in ck.weights.items() if hasattr(v, "qtype")})
    want = _forward(ck)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
