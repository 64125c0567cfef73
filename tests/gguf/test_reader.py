"""The strict GGUF reader against gguf-py's GGUFReader, and every kind of bad file.

Bad files are made by a minimal hand-rolled writer (`gguf_bytes`) so that each field can be set
to a wrong value on purpose; the writer itself is checked against gguf-py's reader first.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from jquant.convert import convert
from jquant.convert.gguf_reader import GGUFFile
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from tests.fixtures.gguf_files import tiny_gguf

gguf = pytest.importorskip("gguf")


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, value) -> bytes:
    if isinstance(value, str):
        return _str(key) + struct.pack("<I", 8) + _str(value)
    if isinstance(value, float):
        return _str(key) + struct.pack("<If", 6, value)
    if isinstance(value, list):
        return _str(key) + struct.pack("<IIQ", 9, 4, len(value)) + b"".join(struct.pack("<I", v) for v in value)
    return _str(key) + struct.pack("<II", 4, value)


LLAMA_KV = {
    "general.architecture": "llama",
    "llama.block_count": 1,
    "llama.context_length": 64,
    "llama.embedding_length": 64,
    "llama.feed_forward_length": 128,
    "llama.attention.head_count": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
}


def gguf_bytes(
    tensors=(("blk.0.attn_q.weight", (64, 64), 8), ("blk.0.attn_norm.weight", (64,), 0)),
    kv=None,
    *,
    magic=b"GGUF",
    version=3,
    offsets=None,
    pad_data=True,
) -> bytes:
    """A GGUF file: tensors (name, ne, ggml type id) laid out back to back with 32-byte alignment."""
    from jquant.formats.gguf import GGML_TYPES

    kv = dict(LLAMA_KV if kv is None else kv)
    head = magic + struct.pack("<IQQ", version, len(tensors), len(kv)) + b"".join(_kv(k, v) for k, v in kv.items())
    infos, datas, off = b"", b"", 0
    rng = np.random.default_rng(0)
    for i, (name, ne, tid) in enumerate(tensors):
        t = GGML_TYPES.get(tid, GGML_TYPES[0])
        nbytes = ne[0] // t.block * t.nbytes * int(np.prod(ne[1:], dtype=np.int64))
        o = off if offsets is None else offsets[i]
        infos += _str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", tid, o)
        data = np.zeros(nbytes, np.uint8)
        if t.name == "Q8_0":  # finite fp16 scales of 1.0, random int8 codes
            data = data.reshape(-1, 34)
            data[:, 0:2] = np.array([1.0], np.float16).view(np.uint8)
            data[:, 2:] = rng.integers(0, 256, (data.shape[0], 32), dtype=np.uint8)
        chunk = data.tobytes()
        chunk += b"\0" * (-len(chunk) % 32)
        datas += chunk
        off += len(chunk)
    out = head + infos
    out += b"\0" * (-len(out) % 32)
    return out + (datas if pad_data else datas.rstrip(b"\0"))


def write(tmp_path, data: bytes, name="m.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_hand_writer_agrees_with_gguf_py(tmp_path):
    p = write(tmp_path, gguf_bytes())
    r = gguf.GGUFReader(p)
    f = GGUFFile(p)
    assert [t.name for t in r.tensors] == list(f.tensors)
    assert f.metadata["llama.attention.head_count"] == 2


@pytest.mark.parametrize("setup", ["llama", "qwen3"])
def test_reader_matches_gguf_py_on_tiny_models(setup):
    path, _ = tiny_gguf(setup)
    _compare_with_gguf_py(path)


def _compare_with_gguf_py(path):
    r = gguf.GGUFReader(path)
    f = GGUFFile(path)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == list(f.metadata)
    for k in keys:
        want, got = r.fields[k].contents(), f.metadata[k]
        assert (got.tolist() if isinstance(got, np.ndarray) else got) == want, k
    assert f.data_offset == r.data_offset and f.alignment == r.alignment
    for t in r.tensors:
        info = f.tensors[t.name]
        assert info.ne == tuple(int(d) for d in t.shape) and info.type.id == int(t.tensor_type), t.name
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes, t.name
        mine = f[t.name]
        assert mine.dtype == t.data.dtype or info.type.name == "BF16", t.name
        assert np.array_equal(np.asarray(mine).view(np.uint8).ravel(), np.asarray(t.data).view(np.uint8).ravel())


def test_reader_matches_gguf_py_on_default_model():
    from jquant.convert.default_model import default_model_path

    _compare_with_gguf_py(default_model_path())


def test_reader_is_memory_mapped():
    path, _ = tiny_gguf("llama")
    f = GGUFFile(path)
    a = f["blk.0.attn_q.weight"]
    assert isinstance(a, np.memmap) and not a.flags.writeable


# ---- bad input: each a FormatError subclass naming file, tensor / key, and problem -------------------
def test_truncated_data(tmp_path):
    data = gguf_bytes()
    p = write(tmp_path, data[: len(data) - 100])
    with pytest.raises(CorruptFileError, match=r"m\.gguf.*'blk\.0\.attn_norm\.weight'.*ends past the end.*truncated"):
        GGUFFile(p)


def test_truncated_header(tmp_path):
    p = write(tmp_path, gguf_bytes()[:300])
    with pytest.raises(CorruptFileError, match=r"m\.gguf.*needs \d+ bytes at offset \d+.*truncated"):
        GGUFFile(p)


def test_tiny_file(tmp_path):
    with pytest.raises(CorruptFileError, match="too short for a GGUF header"):
        GGUFFile(write(tmp_path, b"GGUF\x03\x00"))


def test_bad_magic(tmp_path):
    p = write(tmp_path, gguf_bytes(magic=b"GGML"))
    with pytest.raises(CorruptFileError, match="bad magic b'GGML'"):
        GGUFFile(p)
    with pytest.raises(FormatError, match="does not start with the GGUF magic"):
        convert(p)


@pytest.mark.parametrize(
    "version,cls,msg",
    [
        (1, UnsupportedFormatError, "version 1"),
        (7, CorruptFileError, "unknown GGUF version 7"),
        (0x03000000, UnsupportedFormatError, "big-endian GGUF v3"),
    ],
)
def test_bad_version(tmp_path, version, cls, msg):
    with pytest.raises(cls, match=msg):
        GGUFFile(write(tmp_path, gguf_bytes(version=version)))


def test_v2_is_read(tmp_path):
    assert GGUFFile(write(tmp_path, gguf_bytes(version=2))).version == 2


def test_offset_beyond_end(tmp_path):
    p = write(tmp_path, gguf_bytes(offsets=[0, 1 << 40]))
    with pytest.raises(CorruptFileError, match=r"'blk\.0\.attn_norm\.weight'.*ends past the end of the \d+-byte file"):
        GGUFFile(p)


def test_misaligned_offset(tmp_path):
    p = write(tmp_path, gguf_bytes(offsets=[0, 2184]))
    with pytest.raises(CorruptFileError, match=r"attn_norm.*offset 2184 is not a multiple of the alignment 32"):
        GGUFFile(p)


def test_shape_type_size_mismatch(tmp_path):
    """A Q8_0 tensor whose shape claims more bytes than its slot overlaps the next tensor."""
    data = bytearray(gguf_bytes())
    # 64 x 64 Q8_0 = 2176 bytes; claim 64 x 65 rows in the same slot (ne[1] is the second u64 of the dims)
    i = bytes(data).index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight") + 4
    data[i + 8 : i + 16] = struct.pack("<Q", 65)
    with pytest.raises(
        CorruptFileError, match=r"attn_q\.weight.*\[65, 64\] x Q8_0\) overlaps tensor 'blk\.0\.attn_norm"
    ):
        GGUFFile(write(tmp_path, bytes(data)))


def test_row_not_multiple_of_block(tmp_path):
    p = write(tmp_path, gguf_bytes(tensors=(("blk.0.attn_q.weight", (48, 64), 8),)))
    with pytest.raises(CorruptFileError, match=r"attn_q\.weight.*innermost dim 48 is not a multiple of the Q8_0 block"):
        GGUFFile(p)


def test_duplicate_tensor_names(tmp_path):
    t = (("blk.0.attn_norm.weight", (64,), 0), ("blk.0.attn_norm.weight", (64,), 0))
    with pytest.raises(CorruptFileError, match=r"'blk\.0\.attn_norm\.weight'.*duplicate tensor name"):
        GGUFFile(write(tmp_path, gguf_bytes(tensors=t)))


def test_unknown_type_id(tmp_path):
    p = write(tmp_path, gguf_bytes(tensors=(("blk.0.attn_q.weight", (64, 64), 99),)))
    with pytest.raises(UnsupportedFormatError, match=r"attn_q\.weight.*unknown GGML type id 99"):
        GGUFFile(p)


def test_too_many_dims_and_bad_counts(tmp_path):
    with pytest.raises(CorruptFileError, match="n_dims 5 outside 1..4"):
        GGUFFile(write(tmp_path, gguf_bytes(tensors=(("x", (32, 1, 1, 1, 1), 0),))))
    bad = bytearray(gguf_bytes())
    bad[8:16] = struct.pack("<Q", 1 << 60)
    with pytest.raises(CorruptFileError, match="more than a .*-byte file can hold"):
        GGUFFile(write(tmp_path, bytes(bad), "counts.gguf"))


def test_unknown_value_type_and_bad_utf8(tmp_path):
    bad = bytearray(gguf_bytes())
    i = bytes(bad).index(b"general.architecture") + len(b"general.architecture")
    bad[i : i + 4] = struct.pack("<I", 77)
    with pytest.raises(CorruptFileError, match="'general.architecture': unknown value type 77"):
        GGUFFile(write(tmp_path, bytes(bad)))
    bad = bytearray(gguf_bytes())
    i = bytes(bad).index(b"general.architecture") + len(b"general.architecture") + 4 + 8  # first byte of "llama"
    assert bad[i : i + 5] == b"llama"
    bad[i] = 0xFF
    with pytest.raises(CorruptFileError, match="not valid UTF-8"):
        GGUFFile(write(tmp_path, bytes(bad), "utf.gguf"))


@pytest.mark.parametrize("seed", range(40))
def test_random_bytes(tmp_path, seed):
    """Random files (half of them behind a valid GGUF v3 preamble) only ever raise FormatError subclasses."""
    rng = np.random.default_rng(seed)
    body = rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
    if seed % 2:
        counts = struct.pack("<QQ", int(rng.integers(0, 5)), int(rng.integers(0, 5)))
        body = b"GGUF" + struct.pack("<I", 3) + counts + body
    p = write(tmp_path, body, f"r{seed}.gguf")
    with pytest.raises(FormatError) as e:
        convert(p)
    assert f"r{seed}.gguf" in str(e.value)


def test_unsupported_architecture(tmp_path):
    p = write(tmp_path, gguf_bytes(kv={**LLAMA_KV, "general.architecture": "bert"}))
    with pytest.raises(UnsupportedFormatError, match=r"m\.gguf.*general\.architecture.*'bert' is not supported"):
        convert(p)


def test_missing_required_key(tmp_path):
    kv = {k: v for k, v in LLAMA_KV.items() if k != "llama.embedding_length"}
    with pytest.raises(ConfigError, match=r"'llama\.embedding_length'.*required metadata key is missing"):
        convert(write(tmp_path, gguf_bytes(kv=kv)))


def test_unknown_tensor_name(tmp_path):
    p = write(tmp_path, gguf_bytes(tensors=(("blk.0.attn_qkv.weight", (64, 192), 0),)))
    with pytest.raises(UnsupportedFormatError, match=r"'blk\.0\.attn_qkv\.weight'.*no HF counterpart"):
        convert(p)


def test_non_finite_scale_names_tensor(tmp_path):
    data = bytearray(gguf_bytes())
    f = GGUFFile(write(tmp_path, bytes(data)))
    start = f.tensors["blk.0.attn_q.weight"].offset
    data[start : start + 2] = np.array([np.nan], np.float16).tobytes()
    with pytest.raises(FormatError, match=r"'blk\.0\.attn_q\.weight'.*non-finite scale nan at block \(\d+, 0\).*Q8_0"):
        convert(write(tmp_path, bytes(data), "nan.gguf"))


@pytest.mark.parametrize("seed", range(60))
def test_mutated_header_bytes(tmp_path, seed):
    """A valid file with a few header bytes changed converts, or raises a FormatError subclass, never anything else."""
    rng = np.random.default_rng(seed)
    data = bytearray(gguf_bytes())
    header_len = GGUFFile(write(tmp_path, bytes(data), "ok.gguf")).data_offset
    for i in rng.integers(4, header_len, int(rng.integers(1, 4))):
        data[i] = int(rng.integers(0, 256))
    p = write(tmp_path, bytes(data), f"mut{seed}.gguf")
    try:
        convert(p)
    except FormatError as e:
        assert f"mut{seed}.gguf" in str(e)


def test_custom_alignment(tmp_path):
    """general.alignment = 64 moves the data section and every tensor offset; values still match gguf-py."""
    w = gguf.GGUFWriter(str(tmp_path / "a64.gguf"), arch="llama")
    w.add_custom_alignment(64)
    a = np.arange(40, dtype=np.float32)
    w.add_tensor("output_norm.weight", a)
    w.add_tensor("blk.0.attn_norm.weight", a[:24].astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(tmp_path / "a64.gguf")
    r = gguf.GGUFReader(tmp_path / "a64.gguf")
    assert f.alignment == 64 and f.data_offset % 64 == 0 and f.data_offset == r.data_offset
    assert all(t.offset % 64 == 0 for t in f.tensors.values())
    assert np.array_equal(f["output_norm.weight"], a) and f["blk.0.attn_norm.weight"].dtype == np.float16
    bad = bytearray((tmp_path / "a64.gguf").read_bytes())
    i = bytes(bad).index(b"general.alignment") + len(b"general.alignment") + 4
    bad[i : i + 4] = struct.pack("<I", 48)
    with pytest.raises(CorruptFileError, match="general.alignment 48 is not a positive power of two"):
        GGUFFile(write(tmp_path, bytes(bad), "a48.gguf"))


def test_split_file_refused(tmp_path):
    p = write(tmp_path, gguf_bytes(kv={**LLAMA_KV, "split.count": 3}), "m-00001-of-00003.gguf")
    with pytest.raises(UnsupportedFormatError, match=r"00003\.gguf.*split\.count.*one of 3 split files"):
        convert(p)
