"""Scanned models read their layer of the stacked weights in place: ``qmatmul(..., layer=)``, the
``reads_stacked`` backend capability, and the model's scan body (no per-layer weight copy)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.core import QArray, get_qtype
from jquant.models import Generator, from_checkpoint
from jquant.nn.linear import LayerOf, QuantLinear, at_layer, split_layer_weights
from jquant.ops.qmatmul import qmatmul, reads_stacked, select
from kernels_cpu import CpuQmatmulBackend
from tests.fixtures.cache import cached_dir


def _stacked_q41(layers: int, n: int, k: int, seed: int = 0) -> QArray:
    """A GGUF-Q4_1-shaped QArray (uint4 codes, f16 scales and float mins, groups of 32) with a leading
    layer axis on every array."""
    rng = np.random.default_rng(seed)
    g = k // 32
    return QArray(
        data=jnp.asarray(rng.integers(0, 256, (layers, n, k // 2), dtype=np.uint8)),
        scale=jnp.asarray((rng.random((layers, n, g)) * 0.02).astype(np.float16)),
        zero=jnp.asarray((rng.random((layers, n, g)) * 0.02).astype(np.float16)),
        qtype=get_qtype("uint4"),
        shape=(n, k),
        block=(1, 32),
    )


def _layer(w: QArray, i: int) -> QArray:
    return jax.tree.map(lambda a: a[i], w)


def test_cpu_backend_declares_reads_stacked(cpu_lib):
    assert reads_stacked(CpuQmatmulBackend())
    from jquant.ops.backend import BACKENDS

    assert not reads_stacked(BACKENDS["xla_cpu_chunked"])


@pytest.mark.parametrize("impl", [None, "xla_cpu_chunked", "xla_reference"])
def test_qmatmul_layer_equals_the_slice(cpu_lib, impl):
    """``qmatmul(x, stack, layer=i)`` == ``qmatmul(x, stack[i])``: in place (cpu_qmatmul, bit-exact:
    the same kernel on the same bytes) or through the slice (backends without ``reads_stacked``)."""
    w = _stacked_q41(3, 40, 96)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 96)).astype(np.float32))
    f = jax.jit(lambda x, w, i: qmatmul(x, w, implementation=impl, layer=i))
    for i in range(3):
        want = np.asarray(qmatmul(x, _layer(w, i), implementation=impl))
        got = np.asarray(f(x, w, jnp.int32(i)))
        np.testing.assert_array_equal(got, want, err_msg=f"layer {i}, {impl}")
    # a different layer gives a different answer (the index is not ignored)
    assert not np.array_equal(np.asarray(f(x, w, jnp.int32(0))), np.asarray(f(x, w, jnp.int32(1))))


def test_dense_stacked_weight_is_sliced():
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((2, 5, 8)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((3, 8)).astype(np.float32))
    np.testing.assert_allclose(qmatmul(x, w, layer=jnp.int32(1)), x @ w[1].T, rtol=1e-6, atol=1e-6)


def test_quantlinear_with_layer_of():
    """A `QuantLinear` holding ``LayerOf(stack, i)`` multiplies by layer i (dense and quantized)."""
    w = _stacked_q41(2, 16, 64)
    lin = QuantLinear(64, 16, weight=_layer(w, 0), rngs=None)
    g, weights, rest = split_layer_weights(lin)
    assert jax.tree.leaves(rest) == []  # the weight is the only state of a bias-free layer
    x = jnp.ones((1, 64), jnp.float32)
    ref = lin(x)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), weights, jax.tree.map(lambda a: a * 0, weights))
    wrapped = at_layer(stacked, jnp.int32(0))
    assert isinstance(jax.tree.leaves(wrapped, is_leaf=lambda v: isinstance(v, LayerOf))[0], LayerOf)
    m = nnx.merge(g, wrapped, rest)
    assert m.quantized
    np.testing.assert_array_equal(np.asarray(m(x)), np.asarray(ref))


def _uniform_gguf() -> Path:
    """A tiny Llama GGUF (2 layers, hidden 256) whose every 2-D weight is Q4_1 (gguf-py quantized):
    identical layer types, so the model runs its layers stacked under lax.scan."""
    from tests.fixtures.gguf_files import write_tiny_model

    folder = cached_dir("gguf-tiny-llama-all-q4_1-v1", lambda d: write_tiny_model(d / "tiny.gguf", "llama", ["Q4_1"]))
    return folder / "tiny.gguf"


def test_scanned_model_reads_weights_in_place(cpu_lib):
    """The scanned model's custom calls take the whole [L, N, K/2] code stacks (no per-layer copy), and
    its logits and greedy tokens equal the unrolled model's."""
    pytest.importorskip("gguf")
    ckpt = jquant.convert(_uniform_gguf())
    scanned = from_checkpoint(ckpt, dtype=jnp.float32)
    unrolled = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False)
    assert scanned.stacked_layers is not None
    g, s = nnx.split(scanned)
    ids = jnp.asarray(np.arange(1, 9, dtype=np.int32)[None])
    hlo = jax.jit(lambda s, ids: nnx.merge(g, s)(ids)).lower(s, ids).compile().as_text()
    calls = [ln for ln in hlo.splitlines() if 'custom_call_target="jquant_cpu_qmatmul"' in ln]
    assert calls, "the scanned model did not route to cpu_qmatmul"
    in_layers = [ln for ln in calls if "lm_head" not in ln]
    assert in_layers and all("u8[2," in ln.split("operand_layout_constraints=")[1] for ln in in_layers), in_layers
    assert select(jax.ShapeDtypeStruct((1, 256), jnp.float32), ckpt.weights["lm_head.weight"]).backend.name == (
        "cpu_qmatmul"
    )
    a, b = Generator(scanned), Generator(unrolled)
    np.testing.assert_allclose(a.logits(ids), b.logits(ids), rtol=1e-5, atol=1e-5)
    assert a(ids, max_new_tokens=5).tolist() == b(ids, max_new_tokens=5).tolist()


def test_generate_reports_the_decode_path(cpu_lib):
    """`jquant generate`'s kernel line: the scanned model's decode matmuls run cpu_qmatmul in place."""
    from jquant.cli.generate import kernels_line

    ckpt = jquant.convert(_uniform_gguf())
    scanned = from_checkpoint(ckpt, dtype=jnp.float32)
    # fused q/k/v and gate/up + o + down in the stacked layer, and the LM head
    assert kernels_line(scanned, 1, jnp.float32) == "cpu_qmatmul x5 (stacked layers read in place)"
    assert kernels_line(scanned, 64, jnp.float32) == "xla_cpu_chunked x5 (stacked layers sliced per call)"
    unrolled = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False)
    assert kernels_line(unrolled, 1, jnp.float32) == "cpu_qmatmul x9"
