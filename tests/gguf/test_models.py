"""Tiny llama / mistral / qwen2 / qwen3 GGUF files (written by gguf-py) -> jquant, against two oracles.

1. gguf-py's dequantization of the blocks in HF row order (`tests.fixtures.gguf_files`): proves
   the lossless conversion and that llama.cpp's Q/K row permutation is undone.
2. transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``): same config values and
   the same float32 state dict under the same HF names.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import jquant
from jquant.convert import convert, load, save
from jquant.core.qarray import QArray
from tests.fixtures.gguf_files import ARCH_SETUPS, HEADS, KV_HEADS, TYPE_MIXES, tiny_gguf

gguf = pytest.importorskip("gguf")
SETUPS = sorted(ARCH_SETUPS)


@pytest.fixture(scope="module", params=SETUPS)
def converted(request):
    path, expected = tiny_gguf(request.param)
    return request.param, path, expected, convert(path)


def test_every_weight_bit_exact_in_hf_order(converted):
    setup, _, expected, ckpt = converted
    assert ckpt.format == "gguf"
    assert set(ckpt.weights) == set(expected)
    for name, want in expected.items():
        got = jquant.dequantize(ckpt.weights[name])
        got = np.asarray(got, np.float32)
        # E2M1 code 8 is -0.0 canonically and +0.0 in gguf-py: equal numbers, so compare values.
        assert got.shape == want.shape and np.array_equal(got, want), f"{setup}: {name}"


def test_quantized_weights_stay_quantized(converted):
    """Every block-quantized tensor becomes a QArray; dense types stay arrays of their own dtype."""
    from jquant.convert.gguf_reader import GGUFFile
    from jquant.formats.gguf import hf_name

    setup, path, _, ckpt = converted
    f = GGUFFile(path)
    seen = set()
    for gname, info in f.tensors.items():
        w = ckpt.weights[hf_name(gname)]
        if info.type.dense is None:
            assert isinstance(w, QArray) and w.shape == info.shape, gname
        else:
            assert isinstance(w, np.ndarray) and w.dtype == info.type.dense and w.shape == info.shape, gname
        seen.add(info.type.name)
    assert seen >= {t.replace("_enc", "") for t in TYPE_MIXES[setup]}
    assert ckpt.metadata["tensor_types"] == {t: sum(i.type.name == t for i in f.tensors.values()) for t in seen}


def test_qk_permutation_matters(converted):
    """Negative control: the GGUF row order of q_proj differs from HF's, so the test above can fail."""
    setup, path, expected, _ = converted
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight")
    file_order = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(-1, 256)
    hf = expected["model.layers.0.self_attn.k_proj.weight"]
    if ARCH_SETUPS[setup]["arch"] == "llama":
        assert not np.array_equal(file_order, hf)
        hd = hf.shape[0] // KV_HEADS
        back = file_order.reshape(KV_HEADS, hd // 2, 2, -1).swapaxes(1, 2).reshape(hf.shape)
        assert np.array_equal(back, hf)
    else:  # qwen2 / qwen3 are stored in HF order
        assert np.array_equal(file_order, hf)
    assert HEADS % KV_HEADS == 0


@pytest.fixture(scope="module")
def transformers_models():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return {}


def _hf_load(cache, path):
    if path not in cache:
        from transformers import AutoConfig, AutoModelForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        cache[path] = (cfg, model)
    return cache[path]


def test_config_matches_transformers(converted, transformers_models):
    setup, path, _, ckpt = converted
    cfg, model = _hf_load(transformers_models, path)
    want = cfg.to_dict()
    assert type(model).__name__ == ckpt.config["architectures"][0]
    for key, value in ckpt.config.items():
        if key in ("architectures", "rope_scaling"):  # transformers 5 leaves architectures unset, has rope_parameters
            continue
        if key == "rope_theta":
            assert want["rope_parameters"]["rope_theta"] == value
            assert want["rope_parameters"]["rope_type"] == "default" and ckpt.config["rope_scaling"] is None
        elif key == "head_dim" and key not in want:  # Qwen2Config derives it
            assert value == cfg.hidden_size // cfg.num_attention_heads
        else:
            assert want[key] == value, f"{setup}: {key}"


def test_state_dict_matches_transformers(converted, transformers_models):
    setup, path, _, ckpt = converted
    _, model = _hf_load(transformers_models, path)
    sd = model.state_dict()
    names = set(sd)
    if ckpt.config["tie_word_embeddings"]:
        assert "lm_head.weight" not in ckpt.weights
        names.discard("lm_head.weight")
    assert names == set(ckpt.weights)
    for name in names:
        want = sd[name].float().numpy()
        assert np.array_equal(np.asarray(jquant.dequantize(ckpt.weights[name]), np.float32), want), f"{setup}: {name}"


def test_save_load_roundtrip(converted, tmp_path):
    setup, path, _, ckpt = converted
    out = save(ckpt, tmp_path / "canon")
    back = load(out)
    assert back.format == "gguf" and back.config == ckpt.config
    json.dumps(back.metadata)
    assert back.metadata["source"] == str(path) and back.metadata["gguf"]["general.architecture"]
    for name, w in ckpt.weights.items():
        assert np.array_equal(jquant.dequantize(back.weights[name]), jquant.dequantize(w)), name


def test_progress_and_metadata():
    path, _ = tiny_gguf("qwen2")
    calls = []
    ckpt = convert(path, progress=lambda done, total, name: calls.append((done, total, name)))
    total = calls[0][1]
    assert calls[-1] == (total, total, "") and [c[0] for c in calls] == list(range(total + 1))
    assert "model.layers.0.self_attn.q_proj" in {c[2] for c in calls}
    md = ckpt.metadata
    assert md["gguf_version"] == 3 and md["architecture"] == "qwen2" and md["tokenizer_source"] == str(path)
    assert md["gguf"]["tokenizer.ggml.tokens"] == {"length": 512, "type": "ARRAY[STRING]"}
    json.dumps(md)


def _write_rope_freqs_file(path, factors):
    w = gguf.GGUFWriter(str(path), arch="llama")
    for add, v in [
        (w.add_context_length, 64),
        (w.add_embedding_length, 64),
        (w.add_block_count, 1),
        (w.add_feed_forward_length, 128),
        (w.add_head_count, 2),
        (w.add_rope_dimension_count, 32),
        (w.add_rope_freq_base, 500000.0),
        (w.add_layer_norm_rms_eps, 1e-5),
    ]:
        add(v)
    w.add_tensor("rope_freqs.weight", np.asarray(factors, np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    from jquant.formats.gguf.arch import llama3_rope_factors

    want = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    factors = llama3_rope_factors(500000.0, 32, want)
    assert factors.min() == 1.0 and factors.max() == 32.0 and len(set(factors.tolist())) > 2
    _write_rope_freqs_file(tmp_path / "l3.gguf", factors)
    ckpt = convert(tmp_path / "l3.gguf")
    assert ckpt.config["rope_scaling"] == want
    assert "rope_freqs" not in ckpt.weights and list(ckpt.weights) == ["model.norm.weight"]


def test_unrecognised_rope_freqs_warn(tmp_path):
    _write_rope_freqs_file(tmp_path / "odd.gguf", np.linspace(1, 3, 16))
    with pytest.warns(UserWarning, match="rope_freqs.weight does not match Llama-3 rope scaling"):
        ckpt = convert(tmp_path / "odd.gguf")
    assert ckpt.config["rope_scaling"] is None
    assert np.allclose(ckpt.metadata["rope_freqs"], np.linspace(1, 3, 16))


def test_folder_with_one_gguf_and_from_config(tmp_path):
    import shutil

    from jquant.core.errors import UnsupportedFormatError
    from jquant.formats import get_format

    path, _ = tiny_gguf("qwen3")
    shutil.copy(path, tmp_path / path.name)
    ckpt = convert(tmp_path)  # a folder with exactly one .gguf and no config.json
    assert ckpt.format == "gguf" and ckpt.config["model_type"] == "qwen3" and ckpt.config["head_dim"] == 128
    fmt = get_format("gguf").from_config(ckpt.config, [])
    assert fmt.spec.arch == "qwen3" and not fmt.spec.permuted_qk
    with pytest.raises(UnsupportedFormatError, match="model_type 'gpt2' has no GGUF mapping"):
        get_format("gguf").from_config({"model_type": "gpt2"}, [])


def test_converts_without_gguf_py_jax_torch_or_transformers():
    """jquant reads GGUF with numpy alone; gguf-py is needed only for non-canonical types (clear error)."""
    import subprocess
    import sys
    from pathlib import Path

    path, _ = tiny_gguf("qwen2")
    code = (
        "import sys, warnings\n"
        "for m in ('gguf', 'jax', 'torch', 'transformers'): sys.modules[m] = None\n"
        "import numpy as np, jquant\n"
        f"c = jquant.convert({str(path)!r})\n"
        "assert len(c.quantized()) == 15, c\n"
        "from jquant.formats.gguf import convert_tensor, ggml_type\n"
        "from jquant.core.errors import UnsupportedFormatError\n"
        "warnings.simplefilter('ignore')\n"
        "try:\n"
        "    convert_tensor(np.zeros((1, 66), np.uint8), ggml_type('IQ2_XXS'), (1, 256), name='t', file='f')\n"
        "except UnsupportedFormatError as e:\n"
        "    assert 'needs gguf-py' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
