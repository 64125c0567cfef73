"""Every GGML type -> canonical QArray, bit-exact against gguf-py's own dequantizer.

Random *bytes* go through both paths (`gguf.quants.dequantize` and `jquant.dequantize(QArray)`),
with only the fp16 / exponent scale fields made finite (NaN / inf scales are refused by
`QArray.validate`, tested separately). Row counts and block counts are odd to catch reshape slips.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from jquant.core.dequant import dequantize
from jquant.core.errors import FormatError, UnsupportedFormatError
from jquant.formats.gguf import CANONICAL, GGML_TYPES, convert_tensor, ggml_type
from jquant.formats.gguf.types import to_qarray
from tests.fixtures.gguf_files import random_blocks

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit equality of float32 arrays, except that E2M1's code 8 (-0.0 in the OCP table) may meet +0.0.

    gguf-py's MXFP4 / NVFP4 tables use +0 for code 8 (``kvalues = (0, 1, ..., 0, -1, ...)``);
    the canonical E2M1 table has -0.0. The two are equal numbers, so only zeros may differ in sign.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ab, bb = a.view(np.uint32), b.view(np.uint32)
    return a.shape == b.shape and bool(np.all((ab == bb) | ((a == 0) & (b == 0))))


def random_rows(name: str, rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = ggml_type(name)
    raw = rng.integers(0, 256, (rows, k // t.block * t.nbytes), dtype=np.uint8)
    valid = random_blocks(name, rows, k, rng, scale=3.0)  # finite scale fields, random everything else
    b, vb = raw.reshape(rows, -1, t.nbytes), valid.reshape(rows, -1, t.nbytes)
    fields = {"MXFP4": [0], "NVFP4": [0, 1, 2, 3]}.get(name, [])
    from tests.fixtures.gguf_files import F16_FIELDS

    for off in F16_FIELDS.get(name, ()):
        fields += [off, off + 1]
    b[..., fields] = vb[..., fields]
    return raw


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_random_bytes_bit_exact(name):
    t = ggml_type(name)
    rows, k = 7, 3 * t.block
    raw = random_rows(name, rows, k, seed=GGML_TYPES[t.id].id)
    want = np.asarray(gguf_dequantize(raw, T[name]), np.float32).reshape(rows, k)
    q = to_qarray(t, raw).validate(name)
    assert q.shape == (rows, k)
    assert q.group_size in (16, 32, 256)
    assert same_bits(dequantize(q), want), name


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_jnp_twin_bit_exact(name):
    """The jnp dequantizer reads the GGUF-derived QArrays bit-exactly like the numpy spec (kernel reference)."""
    jnp = pytest.importorskip("jax.numpy")
    t = ggml_type(name)
    q = to_qarray(t, random_rows(name, 5, 2 * t.block, seed=1)).validate()
    qj = q.replace(**{f: jnp.asarray(a) for f, a in q.arrays().items()})
    assert same_bits(np.asarray(dequantize(qj)), dequantize(q))


def test_container_choice():
    """5/6-bit codes are one uint8 per code, 3-bit codes 4-bit containers, 2-bit codes packed 4 per byte."""
    expect = {
        "Q5_0": ("uint5b16", np.uint8, 1),
        "Q5_1": ("uint5", np.uint8, 1),
        "Q5_K": ("uint5", np.uint8, 1),
        "Q6_K": ("uint6b32", np.uint8, 1),
        "Q3_K": ("uint3b4", np.uint8, 2),
        "Q2_K": ("uint2", np.uint8, 4),
        "Q8_0": ("int8", np.int8, 1),
        "Q4_K": ("uint4", np.uint8, 2),
        "MXFP4": ("fp4_e2m1", np.uint8, 2),
    }
    for name, (qname, dtype, per_byte) in expect.items():
        t = ggml_type(name)
        q = to_qarray(t, random_rows(name, 3, t.block, seed=2))
        assert q.qtype.name == qname and q.data.dtype == dtype and q.data.shape == (3, t.block // per_byte), name
        if q.qtype.container_bits == 8 and q.qtype.kind == "int" and not q.qtype.signed:
            assert int(q.data.max()) < 1 << q.qtype.bits, name


def test_q4_0_worked_example():
    """formats.md 7.2: Q4_0 of linspace(-1, 1, 32) has d = 0.125 and bytes 0030 8091 91a2 ..."""
    raw = gguf.quants.quantize(np.linspace(-1, 1, 32, dtype=np.float32)[None], T.Q4_0)
    assert raw.tobytes().hex() == "0030809191a2a2b3b3c4c4d5d5e6e6f7f7f8"
    q = to_qarray(ggml_type("Q4_0"), raw)
    assert q.scale.dtype == np.float16 and float(q.scale[0, 0]) == 0.125
    # element 0 is code 0 (-1.0) and element 16 code 8 (0.0): canonical bytes put them 16 codes apart
    codes = np.concatenate([q.data[0] & 15, q.data[0] >> 4], axis=0).reshape(2, 16).T.ravel()
    assert codes[0] == 0 and codes[16] == 8


def test_q4_1_zero_is_negated_min():
    raw = gguf.quants.quantize(np.linspace(0.5, 2.0, 64, dtype=np.float32).reshape(1, 64), T.Q4_1)
    q = to_qarray(ggml_type("Q4_1"), raw)
    m = raw.reshape(2, 20)[:, 2:4].copy().view(np.float16).ravel()
    assert np.array_equal(q.zero.ravel(), -m) and q.zero.dtype == np.float16


def test_k_quant_scales_are_exact_products():
    """Q4_K effective scales d * sc are exact in f32: dividing back gives the 6-bit integers."""
    t = ggml_type("Q4_K")
    raw = random_rows("Q4_K", 4, 512, seed=3)
    q = to_qarray(t, raw)
    d = raw.reshape(4, 2, 144)[..., 0:2].copy().view(np.float16).astype(np.float32)  # [4, 2, 1]
    sc = q.scale.reshape(4, 2, 8) / d
    assert np.array_equal(sc, np.rint(sc)) and sc.min() >= 0 and sc.max() <= 63


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0"])
def test_non_canonical_types_dequantize_exactly_with_warning(name):
    t = ggml_type(name)
    raw = random_rows(name, 3, 256, seed=4)
    with pytest.warns(UserWarning, match=f"{name} has no canonical form"):
        w = convert_tensor(raw, t, (3, 256), name="blk.0.ffn_up.weight", file="x.gguf")
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    assert same_bits(w, np.asarray(gguf_dequantize(raw, T[name]), np.float32).reshape(3, 256))


def test_type_without_any_dequantizer_is_unsupported():
    t = ggml_type("Q1_0")  # gguf-py 0.19 lists it but cannot dequantize it
    raw = np.zeros((2, t.nbytes), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedFormatError, match=r"blk\.0\.attn_q\.weight.*Q1_0"):
            convert_tensor(raw, t, (2, t.block), name="blk.0.attn_q.weight", file="x.gguf")


def test_type_table_matches_gguf_py():
    from gguf.constants import GGML_QUANT_SIZES

    for t in GGML_TYPES.values():
        assert T(t.id).name == t.name
        assert GGML_QUANT_SIZES[T(t.id)] == (t.block, t.nbytes), t.name
    assert {T[n].value for n in CANONICAL} <= set(GGML_TYPES)


def test_non_finite_scale_is_refused():
    raw = random_rows("Q8_0", 2, 64, seed=5)
    raw[1, 34:36] = np.array([np.inf], np.float16).view(np.uint8)  # d of row 1, block 1
    q = to_qarray(ggml_type("Q8_0"), raw)
    with pytest.raises(FormatError, match="non-finite scale inf at block \\(1, 1\\)"):
        q.validate("blk.0.attn_q.weight")


def test_nvfp4_any_scale_byte():
    """NVFP4 scale bytes >= 0x7F (not valid fp8 e4m3fn) get their exact float32 value instead."""
    t = ggml_type("NVFP4")
    raw = np.random.default_rng(6).integers(0, 256, (5, 3 * t.nbytes), dtype=np.uint8)
    raw[0, 0] = 0x7F
    raw[0, 1] = 0xFF
    q = to_qarray(t, raw).validate()
    assert q.scale.dtype == np.float32
    assert same_bits(dequantize(q), np.asarray(gguf_dequantize(raw, T.NVFP4), np.float32).reshape(5, -1))
