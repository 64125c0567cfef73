"""QArray: validation names the problem; numpy and jnp dequantize agree bit-exactly on random bytes."""

import numpy as np
import pytest

from jquant.core import FormatError, QArray, dequantize, get_qtype, pack_codes
from jquant.core import qtypes as qt


def random_qarray(qtype, n=12, k=64, block=(1, 32), zero=None, perm=False, scale_dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    sn, sk = -(-n // block[0]), -(-k // block[1])
    if qtype.storage is not None:  # fp8: random *bytes* reinterpreted (finite ones only)
        import ml_dtypes

        data = rng.integers(0, 256, (n, k), dtype=np.uint8).view(qtype.storage_dtype)
        data = np.where(np.isfinite(data.astype(np.float32)), data, data.dtype.type(0)).astype(qtype.storage_dtype)
        _ = ml_dtypes
    elif qtype.signed:
        data = rng.integers(-128, 128, (n, k), dtype=np.int8)
    else:
        data = pack_codes(rng.integers(0, 1 << qtype.container_bits, (n, k)) % (1 << qtype.bits), qtype.container_bits)
    scale = (rng.random((sn, sk)) + 0.01).astype(scale_dtype)
    z = None
    if zero == "int":
        z = rng.integers(0, 1 << qtype.bits, (sn, sk), dtype=np.uint8)
    elif zero == "float":
        z = rng.standard_normal((sn, sk)).astype(np.float32)
    p = rng.permutation(k).astype(np.int32) if perm else None
    return QArray(data=data, scale=scale, zero=z, perm=p, qtype=qtype, shape=(n, k), block=block)


CASES = [
    (qt.uint4b8, {}),
    (qt.uint4, {"zero": "int", "perm": True}),
    (get_qtype("uint2"), {"zero": "int"}),
    (get_qtype("uint3b4"), {}),
    (get_qtype("uint6b32"), {"block": (1, 16), "scale_dtype": np.float32}),
    # float zeros need v*s exact in f32 (fp16 scales), else XLA's FMA rounds differently (by design)
    (qt.uint4, {"zero": "float", "scale_dtype": np.float16}),
    (qt.int8, {"block": (1, 64)}),
    (qt.uint8b128, {"block": (12, 64)}),
    (qt.fp8_e4m3, {"block": (4, 32), "scale_dtype": np.float32}),
    (qt.fp8_e5m2, {"block": (12, 64), "scale_dtype": np.float32}),
    (qt.fp4_e2m1, {"block": (1, 16)}),
    (qt.nf4, {"block": (1, 64), "scale_dtype": np.float32}),
    (qt.iq4nl, {}),
]


@pytest.mark.parametrize("qtype,kw", CASES, ids=[c[0].name + "-" + "-".join(map(str, c[1].values())) for c in CASES])
def test_numpy_vs_jnp_bit_exact(qtype, kw):
    import jax
    import jax.numpy as jnp

    from jquant.core import register_pytree

    register_pytree()  # what every JAX-side jquant module does on import
    w = random_qarray(qtype, **kw).validate("w")
    ref = dequantize(w)
    assert ref.shape == (12, 64) and ref.dtype == np.float32 and np.isfinite(ref).all()
    got = jax.jit(dequantize)(jax.tree.map(jnp.asarray, w))
    np.testing.assert_array_equal(np.asarray(got), ref)


def test_dequantize_semantics_by_hand():
    # 2 rows, K=4, group 2, asym uint4 with perm: W[:, perm[j]] = (q - z) * s
    codes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    w = QArray(
        data=pack_codes(codes, 4),
        scale=np.array([[1.0, 2.0], [0.5, 0.25]], np.float32),
        zero=np.array([[1, 0], [5, 8]], np.uint8),
        perm=np.array([2, 0, 3, 1], np.int32),
        qtype=qt.uint4,
        shape=(2, 4),
        block=(1, 2),
    ).validate()
    permuted = np.array([[0, 1, 6, 8], [0, 0.5, -0.25, 0]], np.float32)
    expect = np.empty_like(permuted)
    expect[:, [2, 0, 3, 1]] = permuted
    np.testing.assert_array_equal(dequantize(w), expect)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(scale=np.full((12, 2), np.nan, np.float16)), "non-finite scale"),
        (dict(scale=np.ones((12, 3), np.float16)), "scale shape"),
        (dict(data=np.zeros((12, 31), np.uint8)), "data shape"),
        (dict(scale=np.ones((12, 2), np.int32)), "not a float"),
        (dict(zero=np.full((12, 2), 16, np.uint8)), "does not fit 4 bits"),
        (dict(perm=np.zeros(64, np.int32)), "not a permutation"),
        (dict(layout_version=99), "layout_version"),
    ],
)
def test_validate_names_problem(change, match):
    w = random_qarray(qt.uint4, zero="int").replace(**change)
    with pytest.raises(FormatError, match=match) as e:
        w.validate("model.layers.0.mlp.up_proj.weight")
    assert "model.layers.0.mlp.up_proj.weight" in str(e.value)
