"""The XLA reference qmatmul against the float64 oracle, and the dispatcher's rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.routing import Capabilities
from jquant.ops import explain, qmatmul, qtake, register_backend, select
from jquant.ops.backend import BACKENDS, REGISTRY, Backend
from tests.ops.qmatmul_suite import CASES, SMALL_CASES, QCase, check_backend, make_qarray


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_float64_oracle(case):
    check_backend("xla_reference", case)


@pytest.mark.parametrize("case", SMALL_CASES + [c for c in CASES if c.m in (1, 129) and c.qtype == "uint4b8"], ids=str)
def test_dispatcher_choice_matches_oracle(case):
    """Whatever backend the dispatcher picks here (reference on CPU, Pallas kernels on a GPU) is right."""
    check_backend(None, case)


def test_kernel_packages_load_on_their_platform():
    from jquant.ops.qmatmul import load_kernel_packages

    status = load_kernel_packages("gpu")
    assert set(status) == {"jquant.pallas", "kernels_cuda"}
    assert all(v == "ok" or v.startswith("not loaded: ") for v in status.values())
    assert status["kernels_cuda"] == "ok"  # importing needs neither a GPU nor nvcc (the build is lazy)
    assert load_kernel_packages("cpu") == {"kernels_cpu.qmatmul": "ok"}  # importing does not build it


def test_dense_weight_is_plain_matmul():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 40)).astype(np.float32), rng.standard_normal((24, 40)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(qmatmul(jnp.asarray(x), jnp.asarray(w))), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [QCase("uint4", (1, 32), 1, 50, 96, zero="float", perm=True),
                                  QCase("fp8_e4m3", (128, 128), 1, 300, 256, scale_dtype="float32"),
                                  QCase("nf4", (1, 64), 1, 20, 128, scale_dtype="float32")], ids=str)  # fmt: skip
def test_qtake_rows_bit_exact(case):
    from jquant.core import dequantize, jnp_dequant

    w = make_qarray(case)
    ids = np.array([[0, 5, case.n - 1], [7, 7, 2]], np.int32)
    got = np.asarray(qtake(jax.device_put(w), jnp.asarray(ids)))
    ref = np.asarray(jax.jit(jnp_dequant.dequantize)(jax.device_put(w)))
    assert got.shape == (2, 3, case.k)
    np.testing.assert_array_equal(got, ref[ids])
    np.testing.assert_allclose(got, dequantize(w)[ids], rtol=0, atol=1e-6)


class _Declines(Backend):
    """A test backend that only runs M == 1 and computes the reference (so selections are observable)."""

    name = "test_m1_only"
    caps = Capabilities(
        platforms=frozenset({"cpu", "gpu"}), m_max=1, zeros=None, scale_dtypes=None, row_blocks=None, act_dtypes=None
    )

    def __init__(self):
        self.calls = 0

    def __call__(self, x, w, act=None):
        self.calls += 1
        return BACKENDS["xla_reference"](x, w)


@pytest.fixture
def m1_backend(monkeypatch):
    b = register_backend(_Declines())
    monkeypatch.setitem(REGISTRY.tables, "cpu", (b.name, *REGISTRY.tables["cpu"]))  # first in the CPU table
    yield b
    BACKENDS.pop(b.name)


def _xw(m):
    case = QCase("uint4b8", (1, 128), m, 16, 256)
    return jnp.ones((m, 256), jnp.float32), jax.device_put(make_qarray(case))


def test_table_order_then_fallback_with_reasons(m1_backend):
    x1, w = _xw(1)
    assert select(x1, w, platform="cpu").backend is m1_backend
    x4, _ = _xw(4)
    r = select(x4, w, platform="cpu")
    b, skipped = r.backend, list(r.skipped)
    # the next CPU backend in the table that runs here (kernels_cpu needs a C++ compiler; the reference comes last)
    nxt = "xla_cpu_chunked" if BACKENDS["cpu_qmatmul"].unavailable(None) else "cpu_qmatmul"
    assert b.name == nxt
    assert skipped[0] == "test_m1_only: M=4 outside 1..1 (this kernel's range)"
    report = explain(x4, w, platform="cpu")
    assert f"-> {nxt}" in report and "M=4 outside 1..1" in report
    qmatmul(x1, w)
    assert m1_backend.calls == 1


def test_disabled_kernels_env(m1_backend, monkeypatch):
    monkeypatch.setenv("JQUANT_DISABLED_KERNELS", "other, test_m1_only, cpu_qmatmul, xla_cpu_chunked")
    x1, w = _xw(1)
    r = select(x1, w, platform="cpu")
    b, skipped = r.backend, list(r.skipped)
    assert b.name == "xla_reference"
    assert skipped == [
        "test_m1_only: disabled by JQUANT_DISABLED_KERNELS",
        "cpu_qmatmul: disabled by JQUANT_DISABLED_KERNELS",
        "xla_cpu_chunked: disabled by JQUANT_DISABLED_KERNELS",
    ]


def test_forced_kernels_env(m1_backend, monkeypatch):
    x1, w = _xw(1)
    monkeypatch.setenv("JQUANT_KERNELS", "xla_reference")
    assert select(x1, w, platform="cpu").backend.name == "xla_reference"
    monkeypatch.setenv("JQUANT_KERNELS", "nope,test_m1_only")
    r = select(x1, w, platform="cpu")
    b, skipped = r.backend, list(r.skipped)
    assert b is m1_backend and "nope: unknown backend" in skipped[0]


def test_forced_backend_that_declines_raises(m1_backend, monkeypatch):
    x4, w = _xw(4)
    with pytest.raises(ValueError, match="M=4 outside 1..1"):
        qmatmul(x4, w, implementation="test_m1_only")
    monkeypatch.setenv("JQUANT_KERNELS", "test_m1_only")
    with pytest.raises(ValueError, match="requested qmatmul backend"):
        qmatmul(x4, w)
    with pytest.raises(ValueError, match="unknown backend"):
        qmatmul(x4, w, implementation="no_such_kernel")


def test_routing_follows_the_default_device():
    """``with jax.default_device(cpu)`` on a GPU host must route to CPU kernels (Pallas GPU kernels
    cannot run there); without one, JAX's default backend decides."""
    import jax

    from jquant.ops.device import current_device, default_platform

    assert default_platform() == jax.default_backend()
    with jax.default_device(jax.devices("cpu")[0]):
        assert default_platform() == "cpu" and current_device().platform == "cpu"
