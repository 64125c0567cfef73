"""Mutation tests from the real producer checkpoints: truncate, flip header bytes, drop or duplicate
tensors, contradict the config. Every mutant converts to a valid checkpoint or raises a
`FormatError` naming the file; the structural mutants (a dropped tensor, a duplicated one, a
truncated file, a contradicted size) are always refused.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core.errors import FormatError
from tests.fuzz.test_fuzz_formats import SOURCES
from tests.fuzz.test_fuzz_readers import converts_or_refuses


def _hf_sources() -> dict[str, Path]:
    out = dict(SOURCES)
    try:
        from tests.models.hf_tiny import hf_dir

        out["hf-llama3"] = hf_dir("llama3")
    except Exception:
        pass
    return out


HF = _hf_sources()
LABELS = sorted(HF) or [pytest.param("none", marks=pytest.mark.skip("no producer fixtures"))]


def _copy(label: str, dst: Path) -> Path:
    shutil.copytree(HF[label], dst, ignore=shutil.ignore_patterns("*.md", "tokenizer*", "*.csv"))
    return dst


def _shard(d: Path) -> Path:
    return sorted(d.glob("*.safetensors"))[0]


def _refused(d: Path, *, naming: str | None = None) -> FormatError:
    with warnings.catch_warnings(), pytest.raises(FormatError) as e:
        warnings.simplefilter("ignore")
        jquant.convert(d)
    assert e.value.file is not None, str(e.value)
    if naming is not None:
        assert naming in str(e.value), str(e.value)
    return e.value


@pytest.mark.parametrize("label", LABELS)
def test_truncated_and_flipped(label, tmp_path):
    d = _copy(label, tmp_path / "m")
    p = _shard(d)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    _refused(d, naming=p.name)
    n = struct.unpack("<Q", raw[:8])[0] + 8
    rng = random.Random(label)
    for _ in range(6):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(n)] = rng.randrange(256)
        p.write_bytes(bytes(b))
        converts_or_refuses(d, expect_name=str(d))


def _tensors(p: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    f = SafetensorsFile(p)
    return {k: np.array(f[k]) for k in f}, dict(f.metadata)


@pytest.mark.parametrize("label", LABELS)
def test_dropped_and_duplicated_tensors(label, tmp_path):
    src = _copy(label, tmp_path / "src")
    t, meta = _tensors(_shard(src))
    layer = sorted(n for n in t if n.startswith("model.layers.1.mlp.down_proj."))
    assert layer, sorted(t)[:20]
    for victim in layer:  # each tensor of a module, in turn
        d = tmp_path / f"drop-{victim}"
        shutil.copytree(src, d)
        t2 = {k: v for k, v in t.items() if k != victim}
        write_safetensors(_shard(d), t2, meta)
        if victim.endswith((".bias", ".weight_format")):  # optional tensors
            continue
        _refused(d, naming="model.layers.1.mlp.down_proj")
    d = tmp_path / "dup"
    shutil.copytree(src, d)
    write_safetensors(d / "extra.safetensors", {layer[0]: t[layer[0]]})
    _refused(d, naming=layer[0])


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize(
    "key, change",
    [
        ("num_hidden_layers", lambda v: v + 1),
        ("hidden_size", lambda v: v * 2),
        ("intermediate_size", lambda v: v + 128),
        ("vocab_size", lambda v: v - 1),
        ("num_key_value_heads", lambda v: v * 2),
        ("model_type", lambda v: "gpt2"),
        ("rms_norm_eps", lambda v: float("nan")),
        ("bits", lambda v: 8 if v != 8 else 4),
        ("group_size", lambda v: 32 if v != 32 else 64),
    ],
)
def test_contradicted_config(label, key, change, tmp_path):
    d = _copy(label, tmp_path / "m")
    for side in ("quantize_config.json", "quant_config.json"):
        (d / side).unlink(missing_ok=True)
    cfg = json.loads((d / "config.json").read_text())
    qc = cfg.get("quantization_config") or {}
    where = qc if key in ("bits", "group_size") else cfg
    if key not in where:
        pytest.skip(f"{label} has no {key}")
    where[key] = change(where[key])
    (d / "config.json").write_text(json.dumps(cfg))
    if key in ("bits", "group_size"):
        converts_or_refuses(d, expect_name=str(d))  # e.g. group_size is a hint for some formats
    else:
        _refused(d, naming=key if key in ("model_type", "rms_norm_eps") else None)


def test_gguf_mutants(tmp_path):
    gguf = pytest.importorskip("gguf")  # noqa: F841 (the producer of the fixture)
    from jquant.convert.gguf_reader import GGUFFile
    from tests.fixtures.gguf_files import tiny_gguf

    path, _ = tiny_gguf("llama")
    raw = path.read_bytes()
    p = tmp_path / "m.gguf"
    p.write_bytes(raw[: len(raw) - 1000])
    _refused(p, naming="m.gguf")
    f = GGUFFile(path)
    header = f.data_offset
    rng = random.Random(21)
    for i in range(10):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(header)] = rng.randrange(256)
        q = tmp_path / f"flip{i}.gguf"
        q.write_bytes(bytes(b))
        converts_or_refuses(q, expect_name=q.name)
    i = raw.index(b"llama.block_count") + len(b"llama.block_count") + 4  # value type, then the u32 value
    b = bytearray(raw)
    b[i : i + 4] = struct.pack("<I", 3)
    p.write_bytes(bytes(b))
    _refused(p, naming="model.layers.2")
