"""kernels_cpu's qmatmul against the spec: the shared suite, every code path (AVX-512 / AVX2 / scalar)
at M = 1, 2, 7, 16 with odd N, real GGUF-converted weights, thread counts, and the routing choice."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core import dequantize
from jquant.core.routing import Device
from jquant.ops.qmatmul import explain, select
from kernels_cpu import CAPS, cpu_qmatmul, set_threads, why_not
from tests.ops.qmatmul_suite import CASES, TOL, QCase, check_backend, make_qarray, make_x

ISAS = ("avx512", "avx2", "scalar")
_op = jax.jit(cpu_qmatmul)


def _check(x: np.ndarray, w, what: str = "") -> np.ndarray:
    """Runs the op and asserts the suite's sqrt(K)-scaled tolerance against the float64 oracle."""
    wd = dequantize(w).astype(np.float64)
    ref = x.astype(np.float64) @ wd.T
    y = np.asarray(_op(jnp.asarray(x), jax.device_put(w)).astype(jnp.float32), np.float64)
    assert y.shape == ref.shape and np.isfinite(y).all(), what
    tol = TOL[str(x.dtype)] * math.sqrt(x.shape[-1]) * math.sqrt(np.mean(x.astype(np.float64) ** 2) * np.mean(wd**2))
    err = float(np.abs(y - ref).max())
    assert err <= tol, f"{what}: max|err| {err:.3e} > tol {tol:.3e}"
    return y


@pytest.mark.parametrize("case", CASES, ids=str)
def test_shared_suite(cpu_lib, case):
    """Every suite case the backend takes, through the dispatcher with the backend forced."""
    check_backend("cpu_qmatmul", case, skip_unsupported=True)


# One case per weight kind the kernel reads (qtype, block, zeros, scale dtype), at odd N.
KINDS = [
    dict(qtype="uint4b8", block=(1, 128)),  # GPTQ sym
    dict(qtype="uint4", block=(1, 64), zero="int"),  # AWQ
    dict(qtype="uint4", block=(1, 32), zero="float"),  # GGUF Q4_1 / K-quant mins
    dict(qtype="uint4", block=(1, 128), zero="int", perm=True, scale_dtype="bfloat16"),  # GPTQ act-order
    dict(qtype="uint4b8", block="channel", scale_dtype="float32"),
    dict(qtype="int8", block=(1, 32)),  # GGUF Q8_0
    dict(qtype="uint8b128", block="channel", scale_dtype="float32"),
    dict(qtype="uint8b128", block=(1, 16), zero="int"),  # 8-bit groups of 16 (the direct kernel)
    dict(qtype="nf4", block=(1, 64), scale_dtype="float32"),  # codebook
    dict(qtype="iq4nl", block=(1, 32)),
]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("m", (1, 2, 7, 16))
def test_code_paths(isa, m):
    """Every code path (factored decode kernels at M <= 2, register-tiled ones above) on every kind."""
    for i, kind in enumerate(KINDS):
        case = QCase(m=m, n=67, k=384, seed=10 + i, **kind)
        _check(make_x(case), make_qarray(case), f"{isa} {case}")


@pytest.mark.parametrize("m", (1, 2, 9))
def test_bf16_and_f16_activations(cpu_lib, m):
    for dtype in ("bfloat16", "float16"):
        case = QCase(qtype="uint4", block=(1, 32), zero="float", m=m, n=33, k=256, dtype=dtype, seed=3)
        x = make_x(case)
        y = _op(jnp.asarray(x), jax.device_put(make_qarray(case)))
        assert y.dtype == x.dtype and y.shape == (m, 33)
        _check(x, make_qarray(case), str(case))


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "IQ4_NL"])
def test_gguf_converted_weights(cpu_lib, name):
    """Real GGUF block bytes through jquant's converter, then the kernel (or its stated reason)."""
    from jquant.formats.gguf import ggml_type
    from jquant.formats.gguf.types import to_qarray
    from tests.fixtures.gguf_files import random_blocks

    t = ggml_type(name)
    rng = np.random.default_rng(t.id)
    n, k = 37, 512
    w = to_qarray(t, random_blocks(name, n, k, rng, scale=0.05)).validate(name)
    for m in (1, 2, 7):
        x = rng.standard_normal((m, k)).astype(np.float32)
        why = why_not(jax.ShapeDtypeStruct(x.shape, x.dtype), w)
        if why:
            pytest.skip(f"{name} ({w.qtype.name}, block {w.block}): {why}")
        _check(x, w, f"{name} M={m}")


def test_threads_do_not_change_results(cpu_lib):
    """Each output row is computed by one thread with the same code: any thread count, same bits."""
    case = QCase(qtype="uint4", block=(1, 32), zero="float", m=2, n=1031, k=576, seed=5)
    x, w = jnp.asarray(make_x(case)), jax.device_put(make_qarray(case))
    outs = []
    try:
        for t in (1, 2, 3):
            set_threads(t)
            outs.append(np.asarray(_op(x, w)))
    finally:
        set_threads(0)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_declines_with_reasons():
    w = make_qarray(QCase(qtype="uint4b8", block=(1, 16), m=1, n=8, k=64))  # 4-bit groups of 16
    x = jax.ShapeDtypeStruct((1, 64), jnp.float32)
    assert "multiple of 32" in why_not(x, w)
    w = make_qarray(QCase(qtype="uint2", block=(1, 64), zero="int", m=1, n=8, k=128))
    assert "uint2" in why_not(jax.ShapeDtypeStruct((1, 128), jnp.float32), w)
    with pytest.raises(ValueError, match="kernels_cpu"):
        cpu_qmatmul(jnp.zeros((1, 128)), w)


def test_routing_picks_it_for_decode(cpu_lib):
    """On a CPU the dispatcher runs it for M <= m_max and hands larger M to xla_cpu_chunked."""
    w = make_qarray(QCase(qtype="uint4", block=(1, 32), zero="float", m=1, n=64, k=576))
    cpu = Device("cpu")
    for m, want in ((1, "cpu_qmatmul"), (CAPS.m_max, "cpu_qmatmul"), (CAPS.m_max + 1, "xla_cpu_chunked")):
        assert select(jax.ShapeDtypeStruct((m, 576), jnp.float32), w, device=cpu).backend.name == want, m
    assert "-> cpu_qmatmul" in explain(jax.ShapeDtypeStruct((1, 576), jnp.float32), w, device=cpu)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.m > CAPS.m_max and c.dtype == "float32" and c.qtype in ("uint4", "int8")], ids=str
)
def test_shared_suite_beyond_routed_m(cpu_lib, case):
    """Large-M suite cases (routed to xla_cpu_chunked) computed by the op directly: still the spec."""
    x, w = make_x(case), make_qarray(case)
    why = why_not(jax.ShapeDtypeStruct(x.shape, x.dtype), w)
    if why:
        pytest.skip(why)
    _check(x, w, str(case))


@pytest.mark.parametrize("kind", [KINDS[2], KINDS[3], KINDS[5]], ids=lambda k: k["qtype"] + str(k["block"]))
def test_stacked_layers_read_in_place(cpu_lib, kind):
    """Stacked weights [L, ...] and a traced layer index (a scanned model): each layer's own result."""
    layers = [make_qarray(QCase(m=2, n=67, k=256, seed=20 + i, **kind)) for i in range(3)]

    def stack(*a):
        return None if a[0] is None else np.stack(a)

    f = ("data", "scale", "zero", "perm")
    w = layers[0].replace(**{name: stack(*(getattr(q, name) for q in layers)) for name in f})
    x = make_x(QCase(m=2, n=67, k=256, seed=1, **kind))

    @jax.jit
    def run(x, w):
        return jax.lax.map(lambda i: cpu_qmatmul(x, w, layer=i), jnp.arange(3, dtype=jnp.int32))

    y = np.asarray(run(jnp.asarray(x), jax.device_put(w)))
    for i, q in enumerate(layers):
        np.testing.assert_array_equal(y[i], np.asarray(_op(jnp.asarray(x), jax.device_put(q))))
