"""Tensor / expert parallelism on 8 CPU devices: logits equal to one device, placement, Orbax.

The checks run in one child process (`run_multidevice.py`) started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX reads it once, at start-up, and this
process has started JAX already); the child asserts that it sees 8 devices. Checkpoints are the
real producers' (GPTQModel: g128 sym, act-order g32 asym; transformers' fine-grained FP8 128x128
blocks with dynamic fp8 activations; the fp16 source; a transformers Mixtral with 4 experts),
built once into the fixture cache by the parent.

Tolerances: a row-parallel layer sums tp partial products, so logits differ from one device's in
f32 reduction order only (rel <= 2e-6 here). FP8 checkpoints also quantize activations per token
at run time: a reduction-order difference that moves an activation across an fp8 rounding edge
changes its code, so their logits agree to rel <= 1e-2 (4e-3 measured at tp=4; top-1 equal), not to
f32 noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.cache import cached_dir

pytestmark = pytest.mark.slow  # one ~40-60 s child process on a 2-core box

REPO = Path(__file__).resolve().parents[2]
F32_TOL = 2e-6


def _mixtral_dir() -> Path:
    from importlib.metadata import version

    def build(folder: Path) -> None:
        import torch
        import transformers

        torch.manual_seed(0)
        cfg = transformers.MixtralConfig(
            vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2,
            tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.MixtralForCausalLM(cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gate.weight"):  # sharper routing than the 0.02 init: the top-k matters
                    p.mul_(20.0)
        model.save_pretrained(folder)

    return cached_dir(f"hf-tiny-mixtral-e4-transformers{version('transformers')}", build)


@pytest.fixture(scope="module")
def results():
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint, tiny_llama_source
    from tests.parity.test_parity import hf_fp8_block

    try:
        gptq, gptq_act = gptq_checkpoint(4, 128, True, False), gptq_checkpoint(4, 32, False, True)
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    spec = {
        "gptq": str(gptq),
        "gptq_act": str(gptq_act),
        "cases": {
            "gptq_g128": (str(gptq), [2, 8]),
            "gptq_act_g32": (str(gptq_act), [8]),
            "fp8_block128": (str(hf_fp8_block()[0]), [4]),
            "fp16": (str(tiny_llama_source()), [4]),
            "mixtral_e4": (str(_mixtral_dir()), [4]),
        },
    }
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    p = subprocess.run(
        [sys.executable, "-m", "tests.parallel.run_multidevice", json.dumps(spec)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-6000:]
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    print(f"multi-device child: {out['seconds']:.1f} s of checks")
    return out


def test_child_sees_eight_devices(results):
    assert results["devices"] == 8


@pytest.mark.parametrize("case", ["gptq_g128", "gptq_act_g32", "fp16", "mixtral_e4"])
def test_tp_logits_equal_one_device(results, case):
    res = results["cases"][case]
    assert res["rel"], case
    for tp, r in res["rel"].items():
        assert r <= F32_TOL, f"{case} tp={tp}: rel {r}"
    assert res["top1"]


def test_fp8_with_dynamic_activations(results):
    res = results["cases"]["fp8_block128"]
    assert res["rel"]["4"] <= 1e-2 and res["top1"], res


@pytest.mark.parametrize("case", ["gptq_g128", "gptq_act_g32", "fp8_block128", "fp16"])
def test_placement_bytes_per_device(results, case):
    """Each device holds 1/tp of every split field (scales re-blocked for 8 ways included): per-device
    bytes of the split weights are equal, exactly the expected split, and ~ total / tp."""
    res = results["cases"][case]
    for tp, b in res["bytes"].items():
        per = list(b["per_device"].values())
        assert len(per) == int(tp) and len(set(per)) == 1, (tp, b)
        assert per[0] == b["expected"], (tp, b)
        if int(tp) > 1:  # re-blocking grows the scales a little, never the codes
            assert per[0] <= 1.25 * res["unsharded_split_bytes"] / int(tp), (tp, per[0], res["unsharded_split_bytes"])


def test_peak_device_memory_on_load(results):
    """Loading onto 8 devices never gathers the model on one: the most any device held at any point
    is well below the one-device model (a loader that placed it whole first would reach 100%)."""
    p = results["peak"]
    assert p["peak_max_device"] <= 0.6 * p["one_device_total"], p
    assert p["held_max_device"] <= 0.5 * p["one_device_total"], p


def test_generate_with_head_split_kv_cache(results):
    g = results["generate"]
    assert g["same_tokens"] and g["n"] == 6, g
    assert "'tp'" in g["cache_spec"], g  # 2 KV heads over 2 devices: split by heads


def test_shard_after_build(results):
    assert results["shard_after_build_rel"] <= F32_TOL


@pytest.mark.parametrize("case", ["gptq_act"])
def test_orbax_round_trip_and_reshard(results, case):
    ob = results["orbax"][case]
    assert ob["same_as_safetensors"], "Orbax and safetensors canonical folders differ"
    assert ob["dequant_same_after_sharded_save"]
    for tp, (r, on_mesh) in ob["rel"].items():
        assert on_mesh, f"restored onto tp={tp}: some tensor not on the {tp} devices"
        assert r <= F32_TOL, f"saved from 4 devices, restored onto {tp}: rel {r}"


def test_fit_is_lossless(results):
    assert results["fit_exact"]
