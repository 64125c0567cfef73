"""Issue 21, case by case: each hostile checkpoint or output situation gets a named `FormatError` /
one CLI line (exit 2), never a silently written model, a traceback or a leftover temp folder.

The classes: (1) what a model needs, validated at convert time; (2) every input problem a
`FormatError` subclass, the CLI one line; (3) resource limits; (4) temporary folders; (5) paths.
Property-based and mutation tests of the same promises are in tests/fuzz.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.cli import main
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from tests.fuzz import builders as B


def _cli_fails(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# ---- 1. silently accepted -> refused at convert time -------------------------------------------
@pytest.mark.parametrize(
    "key, vtype, value",
    [
        ("llama.attention.layer_norm_rms_epsilon", B.F32, math.nan),
        ("llama.attention.layer_norm_rms_epsilon", B.F32, -1e-5),
        ("llama.rope.freq_base", B.F32, math.inf),
        ("llama.rope.freq_base", B.F64, 0.0),
        ("llama.embedding_length", B.F32, math.inf),
    ],
)
def test_gguf_non_finite_or_non_positive_config_numbers(tmp_path, key, vtype, value):
    p = B.write_gguf(tmp_path / "m.gguf", B.llama_kv(**{key.replace(".", "__"): (vtype, value)}))
    with pytest.raises(ConfigError) as e:
        jquant.convert(p)
    assert e.value.tensor == key and e.value.file.endswith("m.gguf") and "finite" in e.value.problem


@pytest.mark.parametrize(
    "change, tensor",
    [
        ({"rms_norm_eps": float("nan")}, "config.rms_norm_eps"),
        ({"rope_theta": float("inf")}, "config.rope_theta"),
        ({"hidden_size": -8}, "config.hidden_size"),
        ({"num_hidden_layers": "1"}, "config.num_hidden_layers"),
        ({"rope_scaling": {"rope_type": "linear", "factor": float("nan")}}, "config.rope_scaling.factor"),
    ],
)
def test_hf_config_numbers(tmp_path, change, tensor):
    d = B.write_hf(tmp_path / "m", B.hf_config(**change))
    with pytest.raises(ConfigError) as e:
        jquant.convert(d)
    assert e.value.tensor == tensor and e.value.file.endswith("config.json")


def test_gguf_model_structure(tmp_path):
    """block_count beyond the layers present, a missing module, swapped dims: named at convert time."""
    p = B.write_gguf(tmp_path / "a.gguf", B.llama_kv(llama__block_count=(B.U32, 2)))
    with pytest.raises(FormatError, match=r"'model\.layers\.1\.input_layernorm\.weight'.*missing"):
        jquant.convert(p)
    p = B.write_gguf(tmp_path / "b.gguf", tensors=B.llama_tensors(drop=("blk.0.ffn_up.weight",)))
    with pytest.raises(FormatError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*missing"):
        jquant.convert(p)
    p = B.write_gguf(tmp_path / "c.gguf", tensors=B.llama_tensors(swap=("blk.0.ffn_down.weight",)))
    with pytest.raises(
        FormatError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight'.*shape \[16, 8\] but the config needs \[8, 16\]"
    ):
        jquant.convert(p)
    p = B.write_gguf(tmp_path / "d.gguf", tensors=B.llama_tensors(layers=2))  # block_count 1, two layers
    with pytest.raises(FormatError, match=r"layer 1 is present but num_hidden_layers is 1"):
        jquant.convert(p)


def test_hf_model_structure_and_model_type(tmp_path, capsys):
    t = B.hf_tensors()
    del t["model.layers.0.self_attn.o_proj.weight"]
    d = B.write_hf(tmp_path / "a", tensors=t)
    with pytest.raises(FormatError, match=r"'model\.layers\.0\.self_attn\.o_proj\.weight'.*missing") as e:
        jquant.convert(d)
    assert e.value.file.endswith("config.json")
    assert jquant.convert(d, check_model=False).weights  # a bag of weights when asked
    d = B.write_hf(tmp_path / "b", B.hf_config(model_type="llamaa"))
    with pytest.raises(UnsupportedFormatError, match="model_type 'llamaa' is not a Llama-family decoder"):
        jquant.convert(d)
    err = _cli_fails(capsys, ["convert", str(d), str(tmp_path / "out")])
    assert "--weights-only" in err and not (tmp_path / "out").exists()
    assert main(["convert", str(d), str(tmp_path / "out"), "--weights-only"]) == 0
    d = B.write_hf(tmp_path / "c", B.hf_config(num_hidden_layers=3))
    with pytest.raises(FormatError, match=r"'model\.layers\.1\..*missing"):
        jquant.convert(d)


def test_overlapping_data_offsets(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    p = tmp_path / "o.safetensors"
    p.write_bytes(B.safetensors_bytes(header, bytes(24)))
    with pytest.raises(CorruptFileError, match=r"tensor 'a'.*overlaps tensor 'b'"):
        SafetensorsFile(p)


@pytest.fixture(scope="module")
def gptq_sym():
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint

    try:
        return gptq_checkpoint(4, 128, True, False, "gptq")
    except ProducerUnavailable as e:
        pytest.skip(str(e))


def test_side_file_contradicts_config_on_bits_and_group(gptq_sym, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(gptq_sym, d)
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    side = {**qc, "bits": 8, "group_size": 32}
    (d / "quantize_config.json").write_text(json.dumps(side))
    with pytest.raises(ConfigError, match=r"says bits=4 but quantize_config\.json says bits=8") as e:
        jquant.convert(d)
    assert e.value.file.endswith("quantize_config.json") and e.value.tensor == "quantization_config.bits"
    (d / "quantize_config.json").write_text(json.dumps({**qc, "group_size": 32}))
    with pytest.raises(ConfigError, match="group_size=128 but quantize_config.json says group_size=32"):
        jquant.convert(d)
    (d / "quantize_config.json").write_text(json.dumps(qc))
    assert jquant.convert(d).format == "gptq"  # agreeing side files are fine


def test_gptq_module_without_qweight(gptq_sym, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(gptq_sym, d)
    f = SafetensorsFile(d / "model.safetensors")
    t = {k: np.array(f[k]) for k in f}
    del f, t["model.layers.1.mlp.up_proj.qweight"]
    write_safetensors(d / "model.safetensors", t)
    with pytest.raises(
        FormatError,
        match=r"'model\.layers\.1\.mlp\.up_proj\.qweight'.*g_idx, qzeros, scales without a quantized qweight",
    ):
        jquant.convert(d, check_model=False)


# ---- 2. wrong exception types ------------------------------------------------------------------
@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}, "bad data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "malformed header entry"),
        ({"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}, "needs 73786976294838206464"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "bad shape"),
        ({"dtype": 3, "shape": [1], "data_offsets": [0, 4]}, "malformed header entry"),
        ("x", "not an object"),
    ],
)
def test_safetensors_header_types(tmp_path, entry, problem):
    p = tmp_path / "h.safetensors"
    p.write_bytes(B.safetensors_bytes({"t": entry}, bytes(4)))
    with pytest.raises(CorruptFileError, match=problem) as e:
        SafetensorsFile(p)
    assert e.value.tensor == "t"


def test_quantization_config_not_an_object(tmp_path, capsys):
    d = B.write_hf(tmp_path / "m", B.hf_config(quantization_config="gptq"))
    with pytest.raises(ConfigError, match="quantization_config is a str, not an object"):
        jquant.convert(d)
    _cli_fails(capsys, ["convert", str(d), str(tmp_path / "out")])


@pytest.mark.parametrize(
    "key, vtype, value",
    [
        ("general.architecture", B.ARRAY, (B.U32, [1, 2])),
        ("llama.rope.scaling.type", B.ARRAY, (B.STRING, ["linear"])),
        ("split.count", B.STRING, "2"),
        ("llama.block_count", B.ARRAY, (B.U32, [1])),
        ("tokenizer.ggml.model", B.ARRAY, (B.U8, [1])),
    ],
)
def test_gguf_metadata_of_the_wrong_type(tmp_path, key, vtype, value):
    kv = [e for e in B.llama_kv() if e[0] != key] + [(key, vtype, value)]
    if key == "tokenizer.ggml.model":
        kv.append(("tokenizer.ggml.tokens", B.ARRAY, (B.STRING, [f"t{i}" for i in range(B.VOCAB)])))
    p = B.write_gguf(tmp_path / "m.gguf", kv)
    with pytest.raises(ConfigError) as e:
        jquant.convert(p)
    assert e.value.tensor == key and e.value.file.endswith("m.gguf")


def test_gguf_deeply_nested_arrays(tmp_path):
    v = struct.pack("<IQ", B.ARRAY, 1) * 3000 + struct.pack("<IQ", B.U8, 0)  # 3000 arrays, one inside the other
    p = B.write_gguf(tmp_path / "deep.gguf", B.llama_kv() + [("x.deep", B.ARRAY, v)])
    with pytest.raises(CorruptFileError, match="nested deeper than 8"):
        jquant.convert(p)


@pytest.fixture
def canonical(tmp_path) -> Path:
    from jquant.core import qtypes as qt
    from tests.core.test_qarray import random_qarray

    w = random_qarray(qt.uint4, n=16, k=128, block=(1, 64), zero="int")
    return jquant.save(jquant.Checkpoint("gptq", {"model_type": "llama"}, {"a.weight": w}), tmp_path / "canon")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: (d / "jquant.json").write_text("{not json"),
        lambda d: (d / "jquant.json").write_text(json.dumps({"layout_version": 1})),
        lambda d: (d / "jquant.json").write_text(json.dumps({"layout_version": 1, "format": ["gptq"]})),
        lambda d: (d / "jquant.json").write_text("[1, 2]"),
        lambda d: (d / "config.json").write_text("[]"),
        lambda d: (d / "config.json").unlink(),
    ],
)
def test_canonical_folder_markers(canonical, edit):
    edit(canonical)
    with pytest.raises(FormatError) as e:
        jquant.convert(canonical)
    assert e.value.file is not None and str(canonical) in e.value.file


@pytest.mark.parametrize(
    "qarrays",
    [
        {"a.weight": {"shape": [16, 128], "block": [1, 64], "layout_version": 1}},  # no qtype
        {"a.weight": {"qtype": "uint4", "shape": [16, 128], "block": [1, 64], "layout_version": 1}},
        {
            "a.weight": {
                "qtype": {"name": "x", "kind": "int", "bits": "4"},
                "shape": [16, 128],
                "block": [1, 64],
                "layout_version": 1,
            }
        },
        {
            "a.weight": {
                "qtype": {"name": "uint4", "kind": "int", "bits": 4},
                "shape": "16x128",
                "block": [1, 64],
                "layout_version": 1,
            }
        },
        {"a.weight": [1]},
        ["a.weight"],
    ],
)
def test_canonical_qarray_descriptions(canonical, qarrays):
    sf = SafetensorsFile(canonical / "model.safetensors")
    t = {k: np.array(sf[k]) for k in sf}
    meta = dict(sf.metadata, qarrays=json.dumps(qarrays))
    del sf
    write_safetensors(canonical / "model.safetensors", t, meta)
    with pytest.raises(FormatError) as e:
        jquant.convert(canonical)
    assert e.value.file.endswith("model.safetensors")


def test_cli_output_side_errors(tmp_path, capsys, monkeypatch):
    src = B.write_hf(tmp_path / "src")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert "dangling symbolic link" in _cli_fails(capsys, ["convert", str(src), str(dangling)])
    assert main(["convert", str(src), str(dangling), "--force"]) == 0 and (dangling / "jquant.json").is_file()
    assert not dangling.is_symlink()

    from jquant.convert import canonical as canon

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(canon, "write_safetensors", full_disk)
    err = _cli_fails(capsys, ["convert", str(src), str(tmp_path / "full")])
    assert "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "src"]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(canon, "write_safetensors", ctrl_c)
    assert "interrupted" in _cli_fails(capsys, ["convert", str(src), str(tmp_path / "int")], code=130)

    def bug(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(canon, "write_safetensors", bug)
    err = _cli_fails(capsys, ["convert", str(src), str(tmp_path / "bug")], code=1)
    assert "unexpected ZeroDivisionError: oops" in err and "please report" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "src"]


# ---- 3. resources --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["config.json", "model.safetensors"])
def test_fifo_instead_of_a_file(tmp_path, which, capsys):
    d = B.write_hf(tmp_path / "m")
    (d / which).unlink()
    os.mkfifo(d / which)
    with pytest.raises(FormatError, match="FIFO, socket or device, not a regular file"):
        jquant.convert(d)
    _cli_fails(capsys, ["convert", str(d), str(tmp_path / "out")])


def test_fifo_gguf(tmp_path):
    os.mkfifo(tmp_path / "m.gguf")
    with pytest.raises(FormatError):
        jquant.convert(tmp_path / "m.gguf")


def test_too_many_safetensors_entries(tmp_path, monkeypatch):
    from jquant.convert import safetensors_io as st

    monkeypatch.setattr(st, "MAX_TENSORS", 10)
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(11)}
    p = tmp_path / "many.safetensors"
    p.write_bytes(B.safetensors_bytes(header))
    with pytest.raises(CorruptFileError, match="more than 10 tensors"):
        SafetensorsFile(p)


def test_duplicate_header_key(tmp_path):
    raw = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    p = tmp_path / "dup.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CorruptFileError, match="duplicate key 't'"):
        SafetensorsFile(p)


# ---- 4. temporary folders ------------------------------------------------------------------------
def test_stale_temp_folders_are_removed_by_the_next_run(tmp_path):
    src = B.write_hf(tmp_path / "src")
    dead = 2**22 + 12345  # above pid_max: no such process
    for kind in ("tmp", "old"):
        (tmp_path / f".out.{kind}-{dead}").mkdir()
        (tmp_path / f".out.{kind}-{dead}" / "model.safetensors").write_bytes(b"x")
    (tmp_path / f".other.tmp-{dead}").mkdir()  # another OUT's: left alone
    (tmp_path / f".out.tmp-{os.getppid()}").mkdir()  # a live process's: left alone
    with pytest.warns(UserWarning, match="no longer runs"):
        jquant.save(jquant.convert(src), tmp_path / "out")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["src", "out", f".other.tmp-{dead}", f".out.tmp-{os.getppid()}"]), names


def test_force_over_a_symlink_leaves_nothing(tmp_path):
    src = B.write_hf(tmp_path / "src")
    target = jquant.save(jquant.convert(src), tmp_path / "target")
    (tmp_path / "link").symlink_to(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jquant.save(jquant.convert(src), tmp_path / "link", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "src", "target"]
    assert (tmp_path / "link").is_dir() and not (tmp_path / "link").is_symlink()
    assert (target / "jquant.json").is_file()  # the link's old target is not touched


# ---- 5. paths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shard", ["../outside/x.safetensors", "/etc/passwd", "a/../../x.safetensors", 7])
def test_index_shard_outside_the_folder(tmp_path, shard):
    d = B.write_hf(tmp_path / "m")
    (tmp_path / "outside").mkdir()
    shutil.copy(d / "model.safetensors", tmp_path / "outside" / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    names = list(B.hf_tensors())
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))
    with pytest.raises(CorruptFileError) as e:
        jquant.convert(d)
    assert e.value.file.endswith("model.safetensors.index.json")


def test_index_shard_in_a_subfolder_and_symlinked_shards_are_fine(tmp_path):
    d = B.write_hf(tmp_path / "m")
    (d / "sub").mkdir()
    blob = tmp_path / "blob"
    shutil.move(d / "model.safetensors", blob)
    (d / "sub" / "a.safetensors").symlink_to(blob)  # as the HF cache links snapshots to blobs
    names = list(B.hf_tensors())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(names, "sub/a.safetensors")})
    )
    assert len(jquant.convert(d).weights) == len(names)


def test_tensor_names_with_dot_dot_stay_inside(tmp_path):
    t = {"../../escape": np.ones(2, np.float32), "a/../../b.weight": np.ones(2, np.float32)}
    ck = jquant.Checkpoint("unquantized", {"model_type": "llama"}, t)
    out = jquant.save(ck, tmp_path / "deep" / "out")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "jquant.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert set(jquant.convert(out).weights) == set(t)


def test_model_types_match_the_decoder():
    """`jquant.convert.validate` (no JAX) lists the model types `jquant.models` runs."""
    from jquant.convert.validate import SUPPORTED_MODEL_TYPES
    from jquant.models.config import SUPPORTED_MODEL_TYPES as RUN

    assert SUPPORTED_MODEL_TYPES == RUN
