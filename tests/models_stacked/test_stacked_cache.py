"""The scanned model's stacked KV cache (one [L, B, S, H, D] array per k / v, issue 23) and its
quantized weights reaching the device once, stacked (`jquant.nn.weights.stack_to_device`).

The scanned and the unrolled model of one checkpoint must agree on every logit of a prefill and
decode steps, with a float and an int8 cache, with one cache length and with one per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jquant
from jquant.core import QArray
from jquant.models import Generator, KVCache, from_checkpoint
from jquant.nn.weights import stack_to_device
from tests.models.hf_tiny import hf_dir

PROMPTS = [[5, 9, 2, 77, 31, 4, 8], [12, 3, 40], [7, 7, 1, 90, 6]]  # ragged: one cache length per row


@pytest.fixture(scope="module")
def llama_ckpt():
    return jquant.convert(hf_dir("llama3"))


@pytest.mark.parametrize("kv", ["auto", "int8"])
def test_scanned_cache_is_stacked_and_matches_unrolled(llama_ckpt, kv):
    scanned = from_checkpoint(llama_ckpt, dtype=jnp.float32, kv_cache_dtype=kv)
    unrolled = from_checkpoint(llama_ckpt, dtype=jnp.float32, kv_cache_dtype=kv, scan_layers=False)
    assert scanned.stacked_layers is not None and unrolled.stacked_layers is None
    cfg = scanned.config
    c = scanned.init_cache(2, 32)
    assert c.is_stacked and c.k.shape == (cfg.num_hidden_layers, 2, 32, cfg.num_key_value_heads, cfg.head_dim)
    assert c.max_len == 32 and not unrolled.init_cache(2, 32).is_stacked
    if kv == "int8":
        assert c.k.dtype == jnp.int8 and c.k_scale.shape == (cfg.num_hidden_layers, cfg.num_key_value_heads)
    # one compiled step keeps the cache stacked (no per-layer tuples come out of the scan)
    step = nnx.jit(lambda m, ids, cache: m(ids, cache))
    _, c2 = step(scanned, jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32), c)
    assert c2.is_stacked and c2.k.shape == c.k.shape and int(c2.length) == 3
    assert np.abs(np.asarray(c2.k[:, :, :3], np.float32)).sum() > 0 and not np.asarray(c2.k[:, :, 3:]).any()

    def run(model):
        seen = []
        out = Generator(model).completions(PROMPTS, max_new_tokens=5, on_logits=seen.append)
        return out, np.stack(seen)

    (t_s, l_s), (t_u, l_u) = run(scanned), run(unrolled)
    assert all(np.array_equal(a, b) for a, b in zip(t_s, t_u))
    np.testing.assert_allclose(l_s, l_u, rtol=0, atol=1e-5 * np.abs(l_u).max())


def test_per_layer_cache_given_to_a_scanned_model_comes_back_stacked(llama_ckpt):
    model = from_checkpoint(llama_ckpt, dtype=jnp.float32)
    cfg = model.config
    args = (cfg.num_hidden_layers, 1, 16, cfg.num_key_value_heads, cfg.head_dim, jnp.float32)
    ids = jnp.asarray([[3, 1, 4, 1, 5]], jnp.int32)
    lg_t, c_t = model(ids, KVCache.create(*args))
    lg_s, c_s = model(ids, KVCache.create(*args, stacked=True))
    assert c_t.is_stacked and c_s.is_stacked
    np.testing.assert_array_equal(np.asarray(lg_t), np.asarray(lg_s))
    np.testing.assert_array_equal(np.asarray(c_t.k), np.asarray(c_s.k))
    # the per-layer view reads the same buffers either way
    np.testing.assert_array_equal(np.asarray(c_t.layer(1)[0]), np.asarray(c_s.k[1]))


def test_stacked_cache_keeps_the_head_split_and_a_leading_layer_axis():
    mesh = Mesh(np.array(jax.devices()[:1]), ("tp",))
    sh = NamedSharding(mesh, P(None, None, "tp", None))
    c = KVCache.create(3, 1, 8, 2, 4, jnp.float32, sharding=sh, stacked=True)
    assert c.k.sharding.spec == P(None, None, None, "tp", None) and c.k.shape == (3, 1, 8, 2, 4)
    per_layer = KVCache.create(3, 1, 8, 2, 4, jnp.float32, sharding=sh)
    assert per_layer.k[0].sharding.spec == P(None, None, "tp", None) and len(per_layer.k) == 3


def test_stack_to_device_copies_host_arrays_once():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (7, 33), dtype=np.uint8) for _ in range(5)]
    want = np.stack(parts)
    col = list(parts)
    got = stack_to_device(col, consume=True)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert col == [None] * 5 and got.dtype == jnp.uint8
    if jax.default_backend() == "cpu":  # adopted as is: the buffer is the aligned host copy
        assert got.unsafe_buffer_pointer() % 64 == 0
    dev = stack_to_device([jnp.ones((2, 3)), jnp.zeros((2, 3))])
    np.testing.assert_array_equal(np.asarray(dev), np.stack([np.ones((2, 3)), np.zeros((2, 3))]))


def _uniform_q41_gguf():
    pytest.importorskip("gguf")
    from tests.fixtures.cache import cached_dir
    from tests.fixtures.gguf_files import write_tiny_model

    folder = cached_dir("gguf-tiny-llama-all-q4_1-v1", lambda d: write_tiny_model(d / "tiny.gguf", "llama", ["Q4_1"]))
    return folder / "tiny.gguf"


@pytest.mark.parametrize("scan", [None, False])
def test_quantized_layer_weights_end_on_the_device(scan):
    """Layers are built from host weights (`Weights.defer_quantized`); stacked or unrolled, every
    array of the finished model is a device array and the logits are the same."""
    ckpt = jquant.convert(_uniform_q41_gguf())
    model = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=scan)
    assert (model.stacked_layers is not None) == (scan is None)
    leaves = jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, QArray))
    qs = [x for x in leaves if isinstance(x, QArray)]
    assert qs and all(isinstance(a, jax.Array) for q in qs for a in jax.tree.leaves(q))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))
    ids = jnp.asarray([[1, 2, 3, 4]], jnp.int32)
    ref = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False if scan is None else None)
    np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(ref(ids)), rtol=0, atol=1e-4)
