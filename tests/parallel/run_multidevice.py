"""Child process of tests/parallel/test_multidevice.py: the sharded checks on 8 CPU devices.

XLA_FLAGS must hold ``--xla_force_host_platform_device_count=8`` before JAX starts, and pytest's
process has started JAX already, hence this script. It reads a JSON spec (fixture folders built by
the parent) from argv[1], runs every check, and prints one JSON line of results that the parent's
tests assert on; any exception fails the child (the parent shows its stderr).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jquant
from jquant.core.qarray import QArray
from jquant.models import Generator, from_checkpoint
from jquant.models.config import DecoderConfig
from jquant.models.llama import LlamaForCausalLM
from jquant.nn.linear import QuantLinear
from jquant.parallel import (
    LLAMA_RULES,
    ShardedWeights,
    device_bytes,
    fit,
    load_sharded,
    make_mesh,
    shard,
    shard_checkpoint,
)
from jquant.parallel.rules import Layout

IDS = np.random.default_rng(0).integers(0, 256, size=(2, 16)).astype(np.int32)
_fwd = jax.jit(lambda model, ids: model(ids))


def logits(model) -> np.ndarray:
    return np.asarray(_fwd(model, jnp.asarray(IDS)))


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def split_weight_bytes(model, tp: int) -> dict:
    """Per device: bytes of the column / row split linear weights; plus what an exact 1/tp split gives."""
    per_dev, expect = {}, 0
    for _path, m in nnx.iter_graph(model):
        if isinstance(m, QuantLinear) and getattr(m, "layout", Layout.REPLICATED) is not Layout.REPLICATED:
            w = m.weight.get_value()
            for d, n in device_bytes(w).items():
                per_dev[str(d)] = per_dev.get(str(d), 0) + n
            specs = jax.tree.leaves(jax.tree.map(lambda a: a.sharding.spec, w))
            for a, spec in zip(jax.tree.leaves(w), specs):
                expect += a.nbytes // tp if any(s is not None for s in spec) else a.nbytes
    return {"per_device": per_dev, "expected": expect}


def unsharded_split_bytes(model) -> int:
    total = 0
    for path, m in nnx.iter_graph(model):
        name = ".".join(str(p) for p in path)
        if isinstance(m, QuantLinear) and LLAMA_RULES.layout_of(name) is not Layout.REPLICATED:
            total += sum(a.nbytes for a in jax.tree.leaves(m.weight.get_value()))
    return total


def peak_on_load(ckpt, tp: int) -> dict:
    """Bytes live on each device after every tensor placed while loading (jax.live_arrays)."""
    base = device_bytes(jax.live_arrays())  # whatever is alive before (subtracted per device)
    peak = {"max_device": 0, "baseline_max_device": max(base.values(), default=0)}

    def sample(_name):
        live = device_bytes(jax.live_arrays())
        peak["max_device"] = max(peak["max_device"], max((n - base.get(d, 0) for d, n in live.items()), default=0))

    mesh = make_mesh(tp)
    w = ShardedWeights(ckpt.weights, jnp.float32, mesh=mesh, source="peak", on_place=sample)
    model = LlamaForCausalLM(DecoderConfig.from_hf(ckpt.config), w)
    shard(model, mesh)
    sample("end")
    held = device_bytes(nnx.state(model))
    del model
    return {"peak_max_device": peak["max_device"], "held_max_device": max(held.values()), **peak}


def main(spec: dict) -> dict:
    assert jax.device_count() == 8, jax.devices()
    out: dict = {"devices": jax.device_count(), "cases": {}}
    t0 = time.perf_counter()
    # Peak memory first, while nothing else is alive on the devices.
    gptq = jquant.convert(spec["gptq"])
    peak = peak_on_load(gptq, 8)
    one = from_checkpoint(gptq)
    out["peak"] = {**peak, "one_device_total": sum(device_bytes(nnx.state(one)).values())}
    del one
    for case, (folder, tps) in spec["cases"].items():
        ckpt = jquant.convert(folder)
        ref_model = from_checkpoint(ckpt)
        ref = logits(ref_model)
        res = {"rel": {}, "bytes": {}, "unsharded_split_bytes": unsharded_split_bytes(ref_model)}
        del ref_model
        for tp in tps:
            model = from_checkpoint(ckpt, mesh=make_mesh(tp))
            res["rel"][tp] = rel(logits(model), ref)
            res["top1"] = bool((logits(model).argmax(-1) == ref.argmax(-1)).all())
            res["bytes"][tp] = split_weight_bytes(model, tp)
            del model
        out["cases"][case] = res
    # Greedy decoding through the head-split KV cache: same tokens as one device.
    one = Generator(from_checkpoint(gptq))(IDS[:1, :8], max_new_tokens=6)
    m2 = from_checkpoint(gptq, mesh=make_mesh(2))
    cache = m2.init_cache(1, 32)
    two = Generator(m2)(IDS[:1, :8], max_new_tokens=6)
    out["generate"] = {
        "same_tokens": bool(np.array_equal(one, two)),
        "n": int(one.shape[1]),
        "cache_spec": str(cache.k[0].sharding.spec),
    }
    # shard(model, mesh) on a model built on one device gives the same logits.
    m = shard(from_checkpoint(gptq), make_mesh(4))
    out["shard_after_build_rel"] = rel(logits(m), logits(from_checkpoint(gptq)))
    # Orbax: unsharded round trip vs the safetensors canonical folder; sharded save -> other meshes.
    ob: dict = {}
    for case in ("gptq_act",):
        ckpt = jquant.convert(spec[case])
        ref = logits(from_checkpoint(ckpt))
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            jquant.save(ckpt, d / "st")
            jquant.save(ckpt, d / "ob", format="orbax")
            a, b = jquant.load(d / "st"), jquant.load(d / "ob")
            same = a.format == b.format and a.config == b.config and a.metadata.keys() == b.metadata.keys()
            same &= all(a.metadata[k] == b.metadata[k] for k in a.metadata if k != "canonical_path")
            same &= set(a.weights) == set(b.weights)
            for n, x in a.weights.items():
                y = b.weights[n]
                if isinstance(x, QArray):
                    same &= x.static_json() == y.static_json() and x.arrays().keys() == y.arrays().keys()
                    same &= all(_bits(x.arrays()[f], y.arrays()[f]) for f in x.arrays())
                else:
                    same &= _bits(x, y)
            sharded = shard_checkpoint(ckpt, make_mesh(4))
            jquant.save(sharded, d / "ob4", format="orbax")
            host = jquant.load(d / "ob4")  # re-blocked where tp=4 needed it: same dequantization
            deq_same = all(
                np.array_equal(np.asarray(jquant.dequantize(host.weights[n])), np.asarray(jquant.dequantize(x)))
                for n, x in ckpt.weights.items()
                if isinstance(x, QArray)
            )
            rels = {}
            for tp in (8,):  # saved from 4 devices, restored onto 8 (resharding on load)
                r = load_sharded(d / "ob4", make_mesh(tp))
                on_mesh = all(len(a.sharding.device_set) == tp for w in r.weights.values() for a in jax.tree.leaves(w))
                rels[tp] = (rel(logits(from_checkpoint(r, mesh=make_mesh(tp))), ref), on_mesh)
        ob[case] = {"same_as_safetensors": bool(same), "dequant_same_after_sharded_save": deq_same, "rel": rels}
    out["orbax"] = ob
    # fit: the re-blocked weights of an 8-way split dequantize bit-identically (act-order included).
    ckpt = jquant.convert(spec["gptq_act"])
    exact = True
    for n, w in ckpt.weights.items():
        if isinstance(w, QArray):
            layout = LLAMA_RULES.layout_of(n)
            exact &= np.array_equal(jquant.dequantize(fit(w, layout, 8, name=n)), jquant.dequantize(w))
    out["fit_exact"] = bool(exact)
    out["seconds"] = time.perf_counter() - t0
    return out


def _bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result, default=str))
