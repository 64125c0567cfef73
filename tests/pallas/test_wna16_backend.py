"""Registration, dispatch and the reasons the Pallas backends give when they decline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant.pallas  # noqa: F401
from jquant.core.qarray import QArray
from jquant.core.qtypes import fp8_e4m3, nf4
from jquant.core.routing import Device
from jquant.ops.backend import BACKENDS, available_backends
from jquant.ops.qmatmul import explain, select
from jquant.pallas import WNA16Backend
from tests.pallas.helpers import make_weight

RNG = np.random.default_rng(0)


def test_registered_for_gpu_only_in_table_order():
    names = [b.name for b in available_backends("gpu")]
    assert names.index("pallas_triton_wna16_decode") < names.index("pallas_triton_wna16_prefill")
    assert names[-1] == "xla_dequant_dot" and "xla_reference" not in names  # the spec is no GPU path
    assert "pallas_triton_wna16_decode" not in [b.name for b in available_backends("cpu")]


@pytest.mark.parametrize(
    "m, expect",
    [
        (1, "pallas_triton_wna16_decode"),
        (64, "pallas_triton_wna16_decode"),
        (65, "pallas_triton_wna16_prefill"),
        (127, "pallas_triton_wna16_prefill"),
        (128, "xla_dequant_dot"),
        (4096, "xla_dequant_dot"),
    ],
)
def test_dispatch_by_m(m, expect, monkeypatch):
    # the CUDA kernels outrank these where the library builds (nvcc on this host)
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", "cuda_w4a16_decode,cuda_w4a16_gemm,cuda_w4a16_wgmma")
    w = make_weight(RNG, 64, 256, bits=4, group=128)
    x = jax.ShapeDtypeStruct((m, 256), jnp.bfloat16)
    r = select(x, w, platform="gpu")
    b, skipped = r.backend, list(r.skipped)
    assert b.name == expect, skipped
    if m > 64:
        assert any("decode" in s and "M=" in s for s in skipped)


def test_dequant_dot_backend_matches_spec_on_cpu():
    """The two-stage backend is plain XLA: run it on CPU against the spec (act-order included)."""
    from jquant.ops.qmatmul import XlaDequantDot
    from tests.pallas.helpers import assert_close

    w = make_weight(RNG, 48, 256, bits=4, group=64, zero=True, perm=True)
    x = jnp.asarray(RNG.standard_normal((130, 256)), jnp.bfloat16)
    b = XlaDequantDot()
    gpu = Device("gpu")
    assert b.supports(x, w, device=gpu)[0] and not b.supports(x, w, device=Device("cpu"))[0]
    y = b(x, jax.tree_util.tree_map(jnp.asarray, w))
    assert_close(np.asarray(y.astype(jnp.float32)), np.asarray(x.astype(jnp.float32)), w)


def _decline(w, x=None, mode="decode"):
    x = x if x is not None else jax.ShapeDtypeStruct((1, w.shape[1]), jnp.bfloat16)
    ok, why = WNA16Backend(mode).supports(x, w, device=Device("gpu"))
    assert not ok and why
    return why


def test_declines_with_reasons():
    base = make_weight(RNG, 32, 256, bits=4, group=128)
    assert "dtype float32" in _decline(base, jax.ShapeDtypeStruct((1, 256), jnp.float32))
    assert "K=" in _decline(base, jax.ShapeDtypeStruct((1, 128), jnp.bfloat16))
    assert "M=65" in _decline(base, jax.ShapeDtypeStruct((65, 256), jnp.bfloat16))
    assert "scale2" in _decline(base.replace(scale2=np.ones((1, 1), np.float32)))
    assert "group size 16" in _decline(make_weight(RNG, 32, 256, bits=4, group=16))
    assert "group size 48" in _decline(base.replace(block=(1, 48), scale=np.ones((32, 6), np.float16)))
    assert "block (128, 128)" in _decline(base.replace(block=(128, 128), scale=np.ones((1, 2), np.float16)))
    fz = make_weight(RNG, 32, 256, bits=4, group=128, zero=True)
    assert "zero dtype float16" in _decline(fz.replace(zero=fz.zero.astype(np.float16)))
    fp8 = QArray(
        data=np.zeros((32, 256), fp8_e4m3.storage_dtype),
        scale=np.ones((32, 1), np.float32),
        qtype=fp8_e4m3,
        shape=(32, 256),
        block=(1, 256),
    )
    assert "the kernel reads int8/uint4/uint8" in _decline(fp8)
    n4 = QArray(
        data=np.zeros((32, 128), np.uint8),
        scale=np.ones((32, 4), np.float16),
        qtype=nf4,
        shape=(32, 256),
        block=(1, 64),
    )
    assert "qtype nf4" in _decline(n4)
    assert "float8_e4m3fn" in _decline(base.replace(scale=base.scale.astype(fp8_e4m3.storage_dtype)))


def test_explain_names_pallas_on_gpu():
    w = make_weight(RNG, 64, 256, bits=8, group=-1)
    text = explain(jax.ShapeDtypeStruct((3, 256), jnp.float16), w, platform="gpu")
    assert "pallas_triton_wna16_decode" in text.splitlines()[0]


def test_forced_backend_raises_when_it_declines():
    w = make_weight(RNG, 64, 256, bits=4, group=16)
    from jquant.ops import qmatmul

    with pytest.raises(ValueError, match="runs on gpu, not cpu"):  # this host is no GPU
        qmatmul(jnp.zeros((1, 256), jnp.bfloat16), w, implementation="pallas_triton_wna16_decode")
    assert "group size 16" in _decline(w)
    assert "pallas_triton_wna16_prefill" in BACKENDS
