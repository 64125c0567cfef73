"""Property-based fuzzing of every reader: the result is a valid `Checkpoint` (or array), or a
`FormatError` naming the file, within bounded time, and never any other exception.

Covered: the safetensors header and offsets; GGUF header, metadata, tensor infos and data; the
canonical folder's metadata; `QArray.validate`. (Each format's partner-tensor grouping is fuzzed in
test_fuzz_formats.py.) Profiles: see conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import struct
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jquant
from jquant.convert.safetensors_io import DTYPES, SafetensorsFile
from jquant.core import qtypes as qt
from jquant.core.errors import FormatError
from jquant.core.qarray import QArray
from tests.fuzz import builders as B

SECONDS = 20  # per example: far above any real case (milliseconds); a hang fails the test


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS):
    def boom(signum, frame):
        raise TimeoutError(f"example took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def converts_or_refuses(path: Path, *, expect_name: str | None = None):
    """jquant.convert(path): a Checkpoint whose arrays can be read, or a FormatError; nothing else."""
    with time_limit(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ck = jquant.convert(path)
        except FormatError as e:
            assert str(e), "empty message"
            if expect_name is not None:
                assert expect_name in str(e), str(e)
            return None
        for name, w in ck.weights.items():
            if isinstance(w, QArray):
                w.validate(name)
                np.asarray(w.data).tobytes()
            else:
                np.asarray(w).tobytes()
        return ck


# ---- safetensors -----------------------------------------------------------------------------
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=6)
)
json_value = st.recursive(
    json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=12
)
small_int = st.integers(-3, 40) | st.sampled_from([0, 2**31, 2**32, 2**63 - 1, 2**64, -(2**63)])
entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(sorted(DTYPES)) | st.text(max_size=5) | json_scalar,
        "shape": st.lists(small_int, max_size=4) | json_value,
        "data_offsets": st.lists(small_int, min_size=2, max_size=2) | st.lists(json_scalar, max_size=3) | json_value,
    },
)
header = st.dictionaries(st.text(max_size=12), entry | json_value, max_size=6)


@given(header=header, metadata=st.none() | json_value, data=st.binary(max_size=256))
def test_safetensors_headers(tmp_path_factory, header, metadata, data):
    d = (
        tmp_path_factory.mktemp("st", numbered=False)
        if not hasattr(test_safetensors_headers, "d")
        else test_safetensors_headers.d
    )
    test_safetensors_headers.d = d
    if metadata is not None:
        header = {**header, "__metadata__": metadata}
    p = d / "model.safetensors"
    p.write_bytes(B.safetensors_bytes(header, data))
    with time_limit():
        try:
            f = SafetensorsFile(p)
        except FormatError as e:
            assert "model.safetensors" in str(e)
            return
        for name in f:
            a = f[name]
            assert a.shape == f.shape(name) and a.dtype == f.dtype(name) and a.nbytes == f.nbytes(name)
            a.tobytes()


def _valid_hf(d: Path) -> bytes:
    B.write_hf(d)
    return (d / "model.safetensors").read_bytes()


edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


@given(edits=edits, cut=st.none() | st.integers(0, 10**6))
def test_safetensors_byte_edits_in_a_whole_model(tmp_path_factory, edits, cut):
    d = getattr(test_safetensors_byte_edits_in_a_whole_model, "d", None)
    if d is None:
        d = tmp_path_factory.mktemp("hf")
        test_safetensors_byte_edits_in_a_whole_model.d = d
        test_safetensors_byte_edits_in_a_whole_model.raw = _valid_hf(d)
    raw = bytearray(test_safetensors_byte_edits_in_a_whole_model.raw)
    n = struct.unpack("<Q", raw[:8])[0] + 8
    for pos, val in edits:
        raw[pos % n] = val  # the header (where the structure is)
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    (d / "model.safetensors").write_bytes(bytes(raw))
    converts_or_refuses(d, expect_name=str(d))


# ---- GGUF -------------------------------------------------------------------------------------
_KEYS = [k for k, _, _ in B.llama_kv()] + [
    "general.alignment",
    "split.count",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
]


@st.composite
def gguf_value(draw, depth=0):
    vtype = draw(
        st.sampled_from([B.U8, B.I8, B.U16, B.I16, B.U32, B.I32, B.F32, B.BOOL, B.STRING, B.ARRAY, B.U64, B.I64, B.F64])
    )
    if vtype == B.STRING:
        return vtype, draw(st.text(max_size=8))
    if vtype == B.ARRAY:
        if depth > 2:
            return vtype, (B.U8, [])
        inner = draw(gguf_value(depth=depth + 1))
        n = draw(st.integers(0, 4))
        return vtype, (inner[0], [inner[1]] * n)
    if vtype in (B.F32, B.F64):
        return vtype, draw(st.floats(width=32 if vtype == B.F32 else 64))
    lo, hi = {B.U8: (0, 255), B.I8: (-128, 127), B.U16: (0, 2**16 - 1), B.I16: (-(2**15), 2**15 - 1), B.U32: (0, 2**32 - 1),
              B.I32: (-(2**31), 2**31 - 1), B.BOOL: (0, 1), B.U64: (0, 2**64 - 1), B.I64: (-(2**63), 2**63 - 1)}[vtype]  # fmt: skip
    return vtype, draw(st.integers(lo, hi) | st.sampled_from([lo, hi, 0, 1, 2, 8, 16]).filter(lambda v: lo <= v <= hi))


@st.composite
def gguf_file(draw):
    kv = {k: (t, v) for k, t, v in B.llama_kv()}
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(_KEYS) | st.text(max_size=10))
        if draw(st.booleans()):
            kv.pop(key, None)
        else:
            kv[key] = draw(gguf_value())
    tensors = []
    for name, ne, tid, data in B.llama_tensors():
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # dropped
        if choice == 1:
            ne = tuple(draw(st.lists(st.integers(0, 70) | st.just(2**40), min_size=0, max_size=5)))
        if choice == 2:
            tid = draw(st.integers(0, 45) | st.just(2**31))
        if choice == 3:
            data = data[: draw(st.integers(0, len(data)))]
        tensors.append((name, ne, tid, data))
    return [(k, t, v) for k, (t, v) in kv.items()], tensors


@given(spec=gguf_file())
def test_gguf_structured(tmp_path_factory, spec):
    d = getattr(test_gguf_structured, "d", None) or tmp_path_factory.mktemp("gguf")
    test_gguf_structured.d = d
    kv, tensors = spec
    try:
        raw = B.gguf_bytes(kv, tensors)
    except struct.error:
        return  # a value the writer cannot encode (e.g. a dim out of u64)
    p = d / "m.gguf"
    p.write_bytes(raw)
    converts_or_refuses(p, expect_name="m.gguf")


@given(edits=edits, cut=st.none() | st.integers(0, 10**6))
def test_gguf_byte_edits(tmp_path_factory, edits, cut):
    d = getattr(test_gguf_byte_edits, "d", None) or tmp_path_factory.mktemp("ggufb")
    test_gguf_byte_edits.d = d
    raw = bytearray(B.gguf_bytes(B.llama_kv(), B.llama_tensors()))
    for pos, val in edits:
        raw[pos % 1200] = val  # header, KV and tensor infos
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    p = d / "b.gguf"
    p.write_bytes(bytes(raw))
    converts_or_refuses(p, expect_name="b.gguf")


# ---- canonical folders ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def canonical_src(tmp_path_factory) -> Path:
    from tests.core.test_qarray import random_qarray

    w = random_qarray(qt.uint4, n=16, k=128, block=(1, 64), zero="int")
    ck = jquant.Checkpoint("gptq", {"model_type": "llama"}, {"a.weight": w, "b": np.ones(3, np.float32)})
    return jquant.save(ck, tmp_path_factory.mktemp("canon") / "c")


qarray_desc = st.fixed_dictionaries(
    {},
    optional={
        "qtype": st.sampled_from([qt.uint4.to_json(), qt.fp8_e4m3.to_json(), qt.nf4.to_json()]) | json_value,
        "shape": st.lists(small_int, max_size=3) | json_value,
        "block": st.lists(small_int, max_size=3) | json_value,
        "layout_version": st.sampled_from([1, 2, "1"]) | json_value,
    },
)


@given(
    marker=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "layout_version": st.just(1) | json_value,
            "format": st.just("gptq") | json_value,
            "metadata": json_value,
        },
    )
    | json_value,
    config=st.none()
    | st.dictionaries(st.sampled_from(["model_type", "hidden_size", "rms_norm_eps", "rope_scaling", "x"]), json_value)
    | json_value,
    qarrays=st.none()
    | st.dictionaries(st.sampled_from(["a.weight", "b", "c"]), qarray_desc | json_value, max_size=3)
    | json_value,
)
def test_canonical_metadata(canonical_src, tmp_path_factory, marker, config, qarrays):
    d = getattr(test_canonical_metadata, "d", None) or tmp_path_factory.mktemp("canonfz")
    test_canonical_metadata.d = d
    dst = d / "c"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(canonical_src, dst)
    if marker is not None:
        (dst / "jquant.json").write_text(json.dumps(marker))
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    if qarrays is not None:
        from jquant.convert.safetensors_io import write_safetensors

        sf = SafetensorsFile(dst / "model.safetensors")
        t = {k: np.array(sf[k]) for k in sf}
        meta = dict(sf.metadata, qarrays=json.dumps(qarrays))
        del sf
        write_safetensors(dst / "model.safetensors", t, meta)
    converts_or_refuses(dst, expect_name=str(dst))


# ---- QArray.validate --------------------------------------------------------------------------
_DT = [
    np.uint8,
    np.int8,
    np.int32,
    np.float32,
    np.float16,
    ml_dtypes.bfloat16,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e8m0fnu,
    np.bool_,
]


@st.composite
def some_array(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
    dt = np.dtype(draw(st.sampled_from(_DT)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dt.itemsize, max_size=int(np.prod(shape)) * dt.itemsize))
    return np.frombuffer(raw, dt).reshape(shape) if raw or not shape or 0 in shape else np.zeros(shape, dt)


@given(
    qtype=st.sampled_from(
        [
            qt.uint4,
            qt.uint4b8,
            qt.uint8,
            qt.int8,
            qt.fp8_e4m3,
            qt.nf4,
            qt.fp4_e2m1,
            qt.get_qtype("uint2"),
            qt.get_qtype("uint3"),
        ]
    )
    | st.none()
    | st.just("uint4"),
    shape=st.tuples(st.integers(-2, 9), st.integers(-2, 17)) | st.just((4,)) | st.just(("4", 8)),
    block=st.tuples(st.integers(-1, 9), st.integers(-1, 17)),
    data=some_array(),
    scale=some_array(),
    zero=st.none() | some_array(),
    perm=st.none() | some_array(),
    scale2=st.none() | some_array(),
    version=st.sampled_from([1, 0]),
)
def test_qarray_validate(qtype, shape, block, data, scale, zero, perm, scale2, version):
    q = QArray(data, scale, zero, perm, scale2, qtype=qtype, shape=shape, block=block, layout_version=version)
    with time_limit():
        try:
            q.validate("w")
        except FormatError as e:
            assert e.tensor == "w"
            return
    jquant.dequantize(q)  # a valid QArray dequantizes
