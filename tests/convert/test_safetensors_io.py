"""The strict safetensors reader: real files round-trip; every kind of damage is a named error."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.core.errors import CorruptFileError, UnsupportedFormatError


def test_reads_files_written_by_safetensors_including_fp8_and_bf16(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "b.fp8": torch.randn(4, 8, generator=g).to(torch.float8_e4m3fn),
        "c.e5m2": torch.randn(2, 2, generator=g).to(torch.float8_e5m2),
        "d.i32": torch.randint(-(2**31), 2**31 - 1, (7,), generator=g, dtype=torch.int32),
        "e.f16": torch.randn(1, generator=g).half(),
        "f.empty": torch.zeros(0, 3),
    }
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.metadata == {"k": "v"} and set(f) == set(tensors)
    for name, t in tensors.items():
        got = f[name]
        assert got.shape == tuple(t.shape)
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        assert got.tobytes() == raw, name
    assert f.dtype("b.fp8") == np.dtype(ml_dtypes.float8_e4m3fn)


def test_writer_roundtrip_and_torch_reads_it(tmp_path):
    from safetensors.torch import load_file

    arrs = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "s": np.array([1.5, -2], dtype=ml_dtypes.bfloat16),
        "q": np.array([[1, 2]], dtype=ml_dtypes.float8_e4m3fn),
        "e": np.array([127, 130], dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu),
    }
    write_safetensors(tmp_path / "o.safetensors", arrs, {"m": "1"})
    f = SafetensorsFile(tmp_path / "o.safetensors")
    for k, a in arrs.items():
        assert f[k].dtype == a.dtype and f[k].tobytes() == a.tobytes()
    t = load_file(tmp_path / "o.safetensors")
    assert t["w"].tolist() == arrs["w"].tolist()
    assert t["s"].float().tolist() == [1.5, -2.0]
    assert list(tmp_path.iterdir()) == [tmp_path / "o.safetensors"]  # no temp file left behind


def _write_raw(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_truncated_file(tmp_path):
    save_file({"model.w": torch.ones(64, 64)}, tmp_path / "t.safetensors")
    blob = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(blob[:-100])
    with pytest.raises(CorruptFileError, match=r"truncated") as e:
        SafetensorsFile(tmp_path / "t.safetensors")
    assert "model.w" in str(e.value) and "t.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "header,data,cls,match",
    [
        ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 24, CorruptFileError, "needs 24"),
        ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, CorruptFileError, "truncated"),
        ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, b"\0", UnsupportedFormatError, "dtype"),
        ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, CorruptFileError, "malformed"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, CorruptFileError, "bad shape"),
    ],
)
def test_header_disagrees_with_bytes(tmp_path, header, data, cls, match):
    _write_raw(tmp_path / "h.safetensors", header, data)
    with pytest.raises(cls, match=match) as e:
        SafetensorsFile(tmp_path / "h.safetensors")
    assert "'w'" in str(e.value)


@pytest.mark.parametrize("blob", [b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope"])
def test_garbage_headers(tmp_path, blob):
    (tmp_path / "g.safetensors").write_bytes(blob)
    with pytest.raises(CorruptFileError, match="g.safetensors"):
        SafetensorsFile(tmp_path / "g.safetensors")


def test_random_bytes_file(tmp_path):
    (tmp_path / "r.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError):
        SafetensorsFile(tmp_path / "r.safetensors")
