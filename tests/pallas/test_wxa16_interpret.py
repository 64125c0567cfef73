"""The general weight-only Pallas kernel (`jquant.pallas.wxa16`) in interpret mode on CPU, against the spec.

One case per code type the converters produce: GGUF weights are converted from random blocks by
the real converter (`jquant.formats.gguf.types.to_qarray`; K-quant float mins, 16-column groups,
5/6-bit codes in bytes, IQ4 tables, MXFP4 / NVFP4), the others are random codes of the right qtype,
block, scale dtype and zero kind (`tests.ops.qmatmul_suite.make_qarray`). Shapes are small
(interpret cost grows with grid steps) but straddle the edges: M not a tile multiple, odd N, K not
a multiple of the step, split-K remainders. Outputs go into a NaN-poisoned buffer. The value and
scale decoders are also checked bit for bit against the jnp spec on every code.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jquant.core import jnp_dequant
from jquant.core.qtypes import bnb_fp4, fp4_e2m1, fp8_e4m3, fp8_e5m2, get_qtype, int8, iq4nl, nf4
from jquant.formats.gguf.types import ggml_type, to_qarray
from jquant.pallas.wxa16 import CAPS, PallasWXA16, config_for, decode_config, prefill_config, why_not, wxa16_qmatmul
from jquant.pallas.wxa16_triton import SCALE_DECODERS, VALUE_DECODERS, WXA16Config, value_kind
from tests.fixtures.gguf_files import F16_FIELDS
from tests.ops.qmatmul_suite import QCase, make_qarray
from tests.pallas.helpers import assert_close

D = WXA16Config(bm=16, bn=32, bk=128, split_k=2)  # decode-like: split-K
D2 = WXA16Config(bm=16, bn=32, bk=256, split_k=2)  # 2-bit codes: 64-column planes
P = WXA16Config(bm=32, bn=32, bk=64, split_k=1)  # prefill-like (8-bit codes)
G = WXA16Config(bm=1, bn=32, bk=128, split_k=2, gemv=True)


def gguf(name: str, n: int, k: int, seed: int = 0):
    """A canonical QArray converted from random valid GGUF blocks of type ``name`` (random bytes with
    finite scale fields, as `tests.fixtures.gguf_files.random_blocks`, on jquant's own block table)."""
    rng = np.random.default_rng(seed)
    t = ggml_type(name)
    b = rng.integers(0, 256, (n, k // t.block, t.nbytes), dtype=np.uint8)
    for off in F16_FIELDS.get(name, ()):
        d = (rng.uniform(0.5, 1.5, b.shape[:2]) * 0.05 * rng.choice([-1, 1], b.shape[:2])).astype("<f2")
        b[..., off : off + 2] = d.view(np.uint8).reshape(*b.shape[:2], 2)
    if name == "MXFP4":  # E8M0 exponents around 2^-7
        b[..., 0] = rng.integers(118, 124, b.shape[:2], dtype=np.uint8)
    if name == "NVFP4":  # UE4M3 sub-block scales below 0x7F (fp8 e4m3 scales in the QArray)
        b[..., 0:4] = rng.integers(0x08, 0x30, (*b.shape[:2], 4), dtype=np.uint8)
    return to_qarray(t, b.reshape(n, -1)).validate(name)


def synth(n: int, k: int, **kw):
    return make_qarray(QCase(m=1, n=n, k=k, **kw))


# id, weight factory, M, config (None: the heuristic), activation dtype
CASES = [
    ("Q4_K", lambda: gguf("Q4_K", 40, 512), 5, D, jnp.bfloat16),  # uint4, f32 float zero (mins), g32
    ("Q6_K", lambda: gguf("Q6_K", 33, 512), 3, P, jnp.bfloat16),  # uint6b32 in bytes, g16, f32 scales
    ("Q3_K", lambda: gguf("Q3_K", 40, 512), 7, D, jnp.float16),  # uint3b4 in 4-bit containers, g16
    ("Q2_K", lambda: gguf("Q2_K", 40, 512), 2, D2, jnp.bfloat16),  # uint2, float zero, g16
    ("Q5_K", lambda: gguf("Q5_K", 24, 256), 4, P, jnp.bfloat16),  # uint5 in bytes, float zero, g32
    ("Q4_1", lambda: gguf("Q4_1", 40, 320), 6, D, jnp.float16),  # uint4, f16 float zero, g32, K edge
    ("Q5_0", lambda: gguf("Q5_0", 24, 192), 3, P, jnp.bfloat16),  # uint5b16, f16 scales
    ("Q8_0", lambda: gguf("Q8_0", 40, 320), 9, P, jnp.bfloat16),  # int8, g32
    ("IQ4_NL", lambda: gguf("IQ4_NL", 40, 256), 5, D, jnp.bfloat16),  # codebook, f16 scales
    ("IQ4_XS", lambda: gguf("IQ4_XS", 33, 512), 1, D, jnp.float16),  # codebook, f32 effective scales
    ("MXFP4-gguf", lambda: gguf("MXFP4", 40, 256), 3, D, jnp.bfloat16),  # e2m1, e8m0 scales, g32
    ("NVFP4-gguf", lambda: gguf("NVFP4", 40, 256), 3, D, jnp.bfloat16),  # e2m1, e4m3 scales, g16
    ("TQ2_0", lambda: gguf("TQ2_0", 24, 512), 2, D2, jnp.bfloat16),  # uint2b1, g256 (> bk)
    ("nf4-g64", lambda: synth(40, 320, qtype="nf4", block=(1, 64), scale_dtype="float32"), 5, D, jnp.bfloat16),
    ("bnb_fp4-bf16", lambda: synth(40, 256, qtype="bnb_fp4", block=(1, 64), scale_dtype="bfloat16"), 2, D, jnp.bfloat16),
    (
        "nvfp4-scale2",
        lambda: synth(40, 320, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True),
        5,
        D,
        jnp.bfloat16,
    ),
    ("mxfp4", lambda: synth(40, 256, qtype="fp4_e2m1", block=(1, 32), scale_dtype="float8_e8m0fnu"), 4, D, jnp.float16),
    ("fp8-channel", lambda: synth(40, 320, qtype="fp8_e4m3", block="channel", scale_dtype="float32"), 5, P, jnp.bfloat16),
    ("fp8-tensor", lambda: synth(40, 256, qtype="fp8_e4m3", block="tensor", scale_dtype="float32"), 3, D, jnp.bfloat16),
    ("fp8-block128", lambda: synth(200, 320, qtype="fp8_e4m3", block=(128, 128), scale_dtype="float32"), 3, P, jnp.bfloat16),
    ("fp8_e5m2-e5m2", lambda: synth(24, 128, qtype="fp8_e5m2", block=(1, 64), scale_dtype="float8_e5m2"), 2, P, jnp.bfloat16),
    ("uint2-g64-zero-perm", lambda: synth(40, 512, qtype="uint2", block=(1, 64), zero="int", perm=True), 3, D2, jnp.bfloat16),
    ("uint3b4-g128", lambda: synth(40, 384, qtype="uint3b4", block=(1, 128)), 2, D, jnp.bfloat16),
    ("uint8-channel-zero", lambda: synth(40, 192, qtype="uint8", block="channel", zero="int"), 3, P, jnp.float16),
    ("uint4-channel-floatzero", lambda: synth(24, 256, qtype="uint4", block="channel", zero="float"), 3, D, jnp.bfloat16),
    ("uint1-g128", lambda: synth(24, 512, qtype="uint1", block=(1, 128)), 2, D2, jnp.bfloat16),
    ("int8-g32-bf16-scales", lambda: synth(24, 192, qtype="int8", block=(1, 32), scale_dtype="bfloat16"), 2, P, jnp.bfloat16),
    ("nf4-gemv", lambda: synth(40, 320, qtype="nf4", block=(1, 64), scale_dtype="float32"), 1, G, jnp.bfloat16),
    ("fp8-channel-gemv", lambda: synth(24, 256, qtype="fp8_e4m3", block="channel", scale_dtype="float32"), 1, G, jnp.bfloat16),
    # the heuristic configs: decode (split-K, 16-row tiles) and prefill (64 x 128 tiles)
    ("Q4_K-decode-heuristic", lambda: gguf("Q4_K", 40, 1024, seed=1), 9, None, jnp.bfloat16),
    ("nvfp4-prefill-heuristic", lambda: synth(40, 256, qtype="fp4_e2m1", block=(1, 16), scale_dtype="float8_e4m3fn", scale2=True), 70, None, jnp.bfloat16),
    ("Q6_K-prefill-heuristic", lambda: gguf("Q6_K", 24, 256, seed=2), 66, None, jnp.float16),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_spec(case):
    name, make, m, cfg, dt = case
    w = make()
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = jnp.asarray(rng.standard_normal((m, w.shape[1])), dt)
    assert why_not(x, w) == "", name
    y = wxa16_qmatmul(x, jax.tree_util.tree_map(jnp.asarray, w), cfg=cfg, interpret=True, poison=True)
    assert y.dtype == dt and y.shape == (m, w.shape[0])
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w, what=name)


DECODED_QTYPES = [get_qtype("uint4b8"), get_qtype("uint6b32"), get_qtype("uint2"), int8, fp8_e4m3, fp8_e5m2]
DECODED_QTYPES += [fp4_e2m1, nf4, bnb_fp4, iq4nl]


@pytest.mark.parametrize("q", DECODED_QTYPES, ids=lambda q: q.name)
def test_value_decoders_bit_exact_on_every_code(q):
    """Each value decoder (the in-kernel functions, run as jnp) == the spec's decode_values, every code."""
    codes = np.arange(1 << q.container_bits, dtype=np.int32)
    if q.storage == "float8_e4m3fn":
        codes = codes[(codes & 0x7F) != 0x7F]  # the NaN codes (documented: decoded as +-480)
    if q.signed:
        codes = codes.astype(np.uint8).view(np.int8).astype(np.int32)  # sign-extended, as loaded
    stored = codes.astype(np.uint8)
    if q.storage is not None:
        stored = stored.view(q.storage_dtype)
    elif q.signed:
        stored = codes.astype(np.int8)
    want = np.asarray(jnp_dequant.decode_values(jnp.asarray(stored), q), np.float32)
    lut = None if q.codebook is None else jnp.asarray(np.asarray(q.codebook, np.float32))
    lay = type("Lay", (), {"bias": q.bias})()
    got = np.asarray(VALUE_DECODERS[value_kind(q)](jnp.asarray(codes), lay, lut), np.float32)
    nan = np.isnan(want)  # e5m2 NaN codes stay NaN (payload bits may differ)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize(
    "kind, dtype", [("e8m0", "float8_e8m0fnu"), ("e4m3", "float8_e4m3fn"), ("e5m2", "float8_e5m2")]
)
def test_scale_decoders_bit_exact_on_every_byte(kind, dtype):
    raw = np.arange(256, dtype=np.uint8)
    want = raw.view(getattr(ml_dtypes, dtype)).astype(np.float32)
    got = np.asarray(SCALE_DECODERS[kind](jnp.asarray(raw)), np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_backend_3d_input_and_heuristic_config():
    """The backend path (heuristic config, leading batch dims) in interpret mode."""
    w = gguf("Q4_K", 24, 256, seed=3)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3, 256)), jnp.bfloat16)
    b = PallasWXA16(interpret=True, name="pallas_triton_wxa16_interpret")
    ok, why = b.supports(x, w)
    assert ok, why
    y = b(x, jax.tree_util.tree_map(jnp.asarray, w))
    assert y.shape == (2, 3, 24)
    assert_close(np.asarray(y.astype(jnp.float32)).reshape(6, 24), np.asarray(x.astype(jnp.float32)).reshape(6, 256), w)


def test_heuristic_tiles():
    """Every container streams 128 code bytes per row per decode step; planes stay >= 16 columns."""
    for planes in (1, 2, 4, 8):
        d = decode_config(1, 4096, 8192, planes=planes)
        assert d.bk == 128 * planes and d.bm == 16 and d.split_k > 1 and 8192 // d.bk // d.split_k >= 4
        p = prefill_config(100, 4096, 8192, planes=planes)
        assert p.bk // planes >= 16 and (p.bm, p.bn) == (64, 128)
    w = synth(24, 256, qtype="nf4", block=(1, 64), scale_dtype="float32")
    assert config_for(64, w).bm == 64 and config_for(64, w).bn == 64 and config_for(65, w).bn == 128


def test_declines_with_reasons():
    x = jax.ShapeDtypeStruct((4, 256), jnp.bfloat16)
    w = synth(24, 256, qtype="uint4b8", block=(1, 128))
    assert "float32" in why_not(jax.ShapeDtypeStruct((4, 256), jnp.float32), w)
    x288 = jax.ShapeDtypeStruct((4, 288), jnp.bfloat16)
    assert "power of two" in why_not(x288, make_qarray(QCase(m=1, n=24, k=288, qtype="uint4b8", block=(1, 96))))
    assert "below 16" in why_not(x, make_qarray(QCase(m=1, n=24, k=256, qtype="uint4b8", block=(1, 8))))
    b = PallasWXA16()
    assert b.caps.m_max == 127 and "gpu" in b.caps.platforms and "cpu" not in b.caps.platforms
    assert "cpu" in PallasWXA16(interpret=True).caps.platforms
    assert CAPS.scale2 and CAPS.row_blocks is None


def test_every_weight_only_routing_case_is_covered():
    """Each representative weight of tests/ops/routing_cases.py is read by this kernel (weight-only)."""
    from jquant.core.routing import Call, Device, check
    from tests.ops.routing_cases import CASES as ROUTING

    for name, (w, _act) in ROUTING.items():
        call = Call.of((16, w.shape[1]), "bfloat16", w, Device("gpu"))
        assert check(CAPS, call) == "", (name, check(CAPS, call))
        # routed for every code type but the 16-entry tables (slower than XLA's dequantize -> dot)
        lut = w.qtype.name in ("nf4", "bnb_fp4", "iq4nl")
        assert (PallasWXA16().reason(call) == "") != lut, name


def test_poison_detects_unwritten_outputs():
    """The poison check itself can fail: a grid that misses rows leaves NaN behind."""
    w = synth(32, 128, qtype="nf4", block=(1, 64), scale_dtype="float32")
    x = jnp.asarray(np.random.default_rng(5).standard_normal((20, 128)), jnp.bfloat16)
    y = wxa16_qmatmul(x[:16], jax.tree_util.tree_map(jnp.asarray, w), cfg=D, interpret=True, poison=True)
    assert np.isfinite(np.asarray(y, np.float32)).all()
    full = jnp.full((20, 32), jnp.nan, jnp.bfloat16).at[:16].set(y)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(np.asarray(full.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w)
