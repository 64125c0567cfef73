"""Layers stacked as they are built (`jquant.models.llama._build_stacked`, issue 23's load memory): the
stacks are page-aligned host maps the CPU backend adopts without a copy, and a checkpoint whose layers
differ falls back to the unrolled model with the same logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jquant
from jquant.core import QArray
from jquant.models import from_checkpoint
from tests.models.hf_tiny import hf_dir

IDS = jnp.asarray([[5, 9, 2, 77, 31, 4, 8]], jnp.int32)


def test_stacked_weights_are_adopted_and_match_unrolled():
    ckpt = jquant.quantize(hf_dir("llama3"), "w4a16-g128-asym")
    scanned = from_checkpoint(ckpt, dtype=jnp.float32)
    unrolled = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False)
    assert scanned.stacked_layers is not None
    w = scanned.stacked_layers.mlp.down_proj.weight.get_value()
    assert isinstance(w, QArray) and w.data.shape[0] == scanned.config.num_hidden_layers
    # the device array is the host stack (no second copy on the CPU): its buffer is page-aligned
    assert w.data.unsafe_buffer_pointer() % 4096 == 0
    # scan vs unrolled: XLA fuses differently (f32 rounding), as in test_stacked_cache.py
    np.testing.assert_allclose(np.asarray(scanned(IDS)), np.asarray(unrolled(IDS)), rtol=0, atol=1e-4)


def test_layers_that_differ_fall_back_to_unrolled():
    """Layer 1's down projection left in float: the layers differ in structure, so the stacking started
    for layer 0 is undone (its layer rebuilt from views of the stacks) and the model is unrolled."""
    ckpt = jquant.quantize(hf_dir("llama3"), "w4a16-g128-asym", ignore=["model.layers.1.mlp.down_proj"])
    model = from_checkpoint(ckpt, dtype=jnp.float32)
    assert model.stacked_layers is None and len(model.layers) == 2
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))
    ref = from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=False)
    np.testing.assert_array_equal(np.asarray(model(IDS)), np.asarray(ref(IDS)))


def test_default_form_follows_the_platform(monkeypatch):
    """scan_layers=None stacks on the CPU and unrolls elsewhere (on a GPU, XLA copies a stacked layer's
    weights before its own fused GEMMs); an explicit True still stacks."""
    import jquant.models.llama as llama

    ckpt = jquant.quantize(hf_dir("llama3"), "w4a16-g128-asym")
    assert from_checkpoint(ckpt, dtype=jnp.float32).stacked_layers is not None
    monkeypatch.setattr(llama, "default_platform", lambda: "gpu")
    model = from_checkpoint(ckpt, dtype=jnp.float32)
    assert model.stacked_layers is None and len(model.layers) == model.config.num_hidden_layers
    assert from_checkpoint(ckpt, dtype=jnp.float32, scan_layers=True).stacked_layers is not None
