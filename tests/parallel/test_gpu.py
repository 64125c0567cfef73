"""On the GPU machine (``pytest -m gpu tests/parallel``): the sharded path with the GPU kernels.

A 1-GPU mesh runs every layer through ``shard_map`` (the local qmatmul is the routed Pallas / CUDA /
XLA backend, bf16) and must match the unsharded GPU model; with 2 or more GPUs, 2-way tensor
parallelism must too (psum in bf16: tolerance of bf16 rounding). The CPU multi-device tests
(test_multidevice.py) run on that machine as well (their child forces the CPU platform).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jquant
from jquant.models import from_checkpoint
from jquant.parallel import make_mesh

pytestmark = pytest.mark.gpu

IDS = np.random.default_rng(0).integers(0, 512, size=(2, 16)).astype(np.int32)


def _logits(model):
    return np.asarray(jax.jit(lambda m, i: m(i))(model, jnp.asarray(IDS)), np.float32)


@pytest.fixture(scope="module")
def ckpt():
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint

    try:
        return jquant.convert(gptq_checkpoint(4, 128, True, False))
    except ProducerUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("tp", [1, 2])
def test_sharded_gpu_logits(ckpt, tp):
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if len(gpus) < tp:
        pytest.skip(f"needs {tp} GPUs, have {len(gpus)}")
    ref = _logits(from_checkpoint(ckpt, dtype=jnp.bfloat16))
    out = _logits(from_checkpoint(ckpt, dtype=jnp.bfloat16, mesh=make_mesh(tp, devices=gpus)))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel <= 2e-2, f"tp={tp}: rel {rel}"
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
