"""jquant.convert on HF folders (single file, shards + index), canonical save/load, and the CLI."""

import json
import shutil

import numpy as np
import pytest

import jquant
from jquant.cli import main as cli
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core import ConfigError, CorruptFileError, FormatError, QArray, UnsupportedFormatError
from jquant.core import qtypes as qt
from tests.core.test_qarray import CASES, random_qarray
from tests.fixtures.cache import cached_dir
from tests.fixtures.tiny_llama import make_tiny_llama


@pytest.fixture(scope="module")
def dense_dir():
    return cached_dir("tiny-llama-fp16-seed0", lambda d: make_tiny_llama(d))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unquantized_passthrough_is_exact(dense_dir):
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = jquant.convert(dense_dir)
    assert ckpt.format == "unquantized" and not ckpt.quantized()
    sd = AutoModelForCausalLM.from_pretrained(dense_dir, torch_dtype=torch.float16).state_dict()
    assert set(ckpt.weights) == set(sd)
    for name, t in sd.items():
        w = ckpt.weights[name]
        assert w.dtype == np.float16 and w.tobytes() == t.numpy().tobytes(), name


def _shard(src_dir, out_dir, split_module="model.layers.0.self_attn.q_proj"):
    """Re-save a checkpoint as 2 shards + index, putting one module's partners in different shards."""
    out_dir.mkdir()
    for f in src_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, out_dir / f.name)
    src = SafetensorsFile(next(src_dir.glob("*.safetensors")))
    names = sorted(src)
    half = {n for i, n in enumerate(names) if i % 2}
    first = [n for n in names if n.startswith(split_module)][:1]  # a partner goes to the other shard
    half ^= set(first)
    shards = {
        "model-00001-of-00002.safetensors": [n for n in names if n not in half],
        "model-00002-of-00002.safetensors": sorted(half),
    }
    weight_map = {}
    for fname, ns in shards.items():
        write_safetensors(out_dir / fname, {n: src[n] for n in ns})
        weight_map.update({n: fname for n in ns})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out_dir


def test_shards_with_index(dense_dir, tmp_path):
    ref = jquant.convert(dense_dir)
    sharded = _shard(dense_dir, tmp_path / "sharded")
    ckpt = jquant.convert(sharded)
    assert set(ckpt.weights) == set(ref.weights)
    for k in ref.weights:
        assert np.array_equal(ckpt.weights[k], ref.weights[k]), k


def test_index_pointing_to_missing_shard(dense_dir, tmp_path):
    d = _shard(dense_dir, tmp_path / "s")
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="missing shard model-00002-of-00002"):
        jquant.convert(d)


def test_no_quantization_config_but_quantized_tensors(dense_dir, tmp_path):
    d = _copy(dense_dir, tmp_path / "d")
    write_safetensors(d / "extra.safetensors", {"model.layers.0.mlp.up_proj.qweight": np.zeros((8, 4), np.int32)})
    with pytest.raises(ConfigError, match="no quantization_config but the tensors look quantized"):
        jquant.convert(d)


def test_unknown_quant_method_and_contradicting_side_file(dense_dir, tmp_path):
    d = _copy(dense_dir, tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "sparse-magic"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFormatError, match="'sparse-magic' is not supported") as e:
        jquant.convert(d)
    assert e.value.file.endswith("config.json")
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 5, "group_size": 128}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError) as e:  # raised by the format's own config parser: file added by detection
        jquant.convert(d)
    assert e.value.file.endswith("config.json")
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128}))
    with pytest.raises(ConfigError, match="quantize_config.json says 'gptq'"):
        jquant.convert(d)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        jquant.convert(tmp_path / "nope")
    with pytest.raises(FormatError, match="no config.json"):
        jquant.convert(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(FormatError, match="GGUF magic"):
        jquant.convert(tmp_path / "x.gguf")


def test_canonical_roundtrip_every_qtype(tmp_path):
    weights = {f"model.layers.{i}.mlp.proj.weight": random_qarray(q, seed=i, **kw) for i, (q, kw) in enumerate(CASES)}
    weights["model.norm.weight"] = np.linspace(0, 1, 12).astype(np.float16)
    ckpt = jquant.Checkpoint("test", {"model_type": "llama"}, weights, {"note": "x"})
    out = jquant.save(ckpt, tmp_path / "out")
    back = jquant.convert(out)
    assert back.format == "test" and back.config == {"model_type": "llama"} and back.metadata["note"] == "x"
    assert set(back.weights) == set(weights)
    for name, w in weights.items():
        b = back.weights[name]
        if isinstance(w, QArray):
            assert isinstance(b, QArray) and b.qtype == w.qtype and b.shape == w.shape and b.block == w.block
            for f, a in w.arrays().items():
                assert b.arrays()[f].dtype == a.dtype and b.arrays()[f].tobytes() == a.tobytes(), (name, f)
            assert np.array_equal(jquant.dequantize(b), jquant.dequantize(w))
        else:
            assert b.tobytes() == w.tobytes()
    with pytest.raises(FileExistsError):
        jquant.save(ckpt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_inspect_and_convert(dense_dir, tmp_path, capsys):
    assert cli(["inspect", str(dense_dir), "--all"]) == 0
    text = capsys.readouterr().out
    assert "unquantized" in text and "model.layers.1.mlp.down_proj.weight" in text and "1.00x" in text
    assert cli(["convert", str(dense_dir), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "jquant.json").exists() and (tmp_path / "out" / "tokenizer.json").exists()
    back = jquant.convert(tmp_path / "out")
    assert back.format == "unquantized" and len(back.weights) == len(jquant.convert(dense_dir).weights)


def test_cli_convert_failure_leaves_nothing(dense_dir, tmp_path, capsys):
    d = _shard(dense_dir, tmp_path / "s")
    blob = (d / "model-00002-of-00002.safetensors").read_bytes()
    (d / "model-00002-of-00002.safetensors").write_bytes(blob[: len(blob) // 2])
    assert cli(["convert", str(d), str(tmp_path / "out")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_inspect_reports_quantized_layers(tmp_path, capsys):
    w = random_qarray(qt.uint4, n=64, k=256, block=(1, 128), zero="int", perm=True)
    jquant.save(jquant.Checkpoint("gptq", {}, {"model.layers.0.mlp.up_proj.weight": w}), tmp_path / "q")
    assert cli(["inspect", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "uint4" in out and "128" in out and "asym" in out and "yes" in out and "quantized tensors: 1/1" in out
