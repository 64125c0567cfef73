"""Issue 17's parity acceptance for the formats added with it: producer / transformers, JAX, Torch bridge.

Every case is a whole tiny-Llama checkpoint made by the real producer (the cached fixtures of the
format's own loader tests), run through `tests.parity.test_parity.check_parity` (same legs, same
tolerances). The reference leg is, per case:

* ``producer``: transformers over the producer's own dequantized weights, which must equal
  ``jquant.dequantize`` bit for bit: TorchAO (torchao's ``dequantize(torch.float32)``; Int4: the
  mslk formula, see tests/fixtures/producers_torchao.py), AWQ GEMV (AutoAWQ's ``dequantize_gemm``
  of the GEMM checkpoint it was repacked from, below), Marlin (GPTQModel's dequantization of the
  GPTQ checkpoint the Marlin pack was made from), GPTQModel planar 5/6/7-bit (GPTQModel's
  ``convert_gptq_file``), compressed-tensors MXFP6 (``MXFP6PackedCompressor.decompress``);
* ``spec`` (transformers over ``jquant.dequantize``): INC FP8 (INC's own ``dequant_weights``
  rounds to its bf16 hp dtype, so it is matched after that rounding in
  tests/formats_variants/test_inc.py, not bit for bit in float32 here), AWQ GEMV_FAST (its float
  offset ``-(s * z)`` rounded to f16 is not AutoAWQ GEMM's ``(q - z) * s``; its codes and scales
  are checked equal to the GEMM checkpoint's below) and ``jquant.quantize``'s online schemes
  (jquant is the producer; tests/quantize matches them against llm-compressor / bitsandbytes).

Where transformers runs the producer's checkpoint itself on a CPU in float32, that is one more
leg (``transformers``): TorchAO ``Int8WeightOnly`` (at the suite's 1e-4), ``Int8Dynamic`` and
``Float8Dynamic`` (at the activation-flip bounds below; torchao's int8 x int8 -> int32 matmul
measured max |diff| / std 0.058, top-1 0.958 against the producer leg), through ``TorchAoConfig``,
torchao's own tensor subclasses and matmuls. It does not run for: TorchAO ``Float8WeightOnly``
(torchao 0.18 dequantizes to the bf16 it was quantized from and ``F.linear`` refuses a float32
input against it) and ``Int4WeightOnly`` (its matmul needs the CUDA package mslk). For
compressed-tensors MXFP6, transformers' compressed run path fails the same way (it decompresses
to bf16 inside the forward), so its leg is transformers' integration decompressing at load
(``CompressedTensorsConfig(dequantize=True)``), then run in float32. Not
attempted: Marlin and AWQ GEMV / GEMV_FAST (their transformers integrations dispatch to CUDA
kernels), GPTQ planar and INC (no CPU integration tried; their producers' dequantizations are the
reference, as for the main suite's GPTQ cases). The torchao leg runs in a subprocess, as the
torchao fixture is built (torchao's global torch registrations stay out of the test process): its
forward calls are recorded once per torchao / transformers version (cached) and replayed, each
replayed call checked to receive exactly the recorded tokens.

Checkpoints quantizing activations (TorchAO Int8Dynamic / Float8Dynamic, INC, the fp8 / int8 /
mxfp4 online schemes) get the suite's activation-flip bounds on the ``jax`` and ``transformers``
legs (test_parity.py's docstring).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.core.activation import ActQuant
from jquant.parity import transformers_logits
from tests.fixtures.cache import cached_dir
from tests.fixtures.producers_gptq_awq import ProducerUnavailable, producer_dequantized, producer_version
from tests.parity.test_parity import check_parity

REPO = Path(__file__).resolve().parents[2]
# run_parity's default prompt (batch 2, length 12, seed 0); a shorter greedy continuation than the
# main suite's 6 keeps these 20 cases within the CI budget (seconds each on 2 cores).
NEW_TOKENS = 3
TORCHAO_CONFIGS = ("int8_weight_only", "int8_dynamic", "float8_weight_only", "float8_dynamic", "int4_weight_only")
TORCHAO_WITH_TRANSFORMERS = ("int8_weight_only", "int8_dynamic", "float8_dynamic")


def _act_quantized(ckpt) -> bool:
    return any(isinstance(w, ActQuant) for w in ckpt.weights.values())


def _run_module(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "tests.parity.test_parity_new_formats", *args]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


# ---- TorchAO -------------------------------------------------------------------------------------


def _torchao_dir() -> Path:
    from tests.fixtures.producers_torchao import torchao_available, torchao_dir

    if torchao_available() is not None:
        pytest.skip(torchao_available())
    return torchao_dir()


def _torchao_recordings(tao: Path) -> Path:
    """Cached ``<config>.npz`` per `TORCHAO_WITH_TRANSFORMERS`: transformers' forward calls (see `_record`)."""
    from importlib.metadata import version

    key = f"parity-torchao-{version('torchao')}-tf{version('transformers')}-greedy{NEW_TOKENS}-{tao.name}-v2"
    return cached_dir(key, lambda out: _run_module("record-torchao", str(tao), str(out)))


def _replay_leg(recording: Path):
    """A parity leg returning the recorded logits of transformers' own greedy run, call by call.

    `torch_bridge.parity.greedy` calls a leg ``NEW_TOKENS`` times, each input made of the prompt
    and the leg's own previous argmaxes, so the calls are deterministic; each replayed call must
    receive exactly the recorded input (else the recording was made for other tokens: an error).
    """

    def leg(ckpt):
        with np.load(recording) as z:
            calls = [(z[f"in{i}"], z[f"out{i}"]) for i in range(NEW_TOKENS)]
        count = [0]

        def fn(ids: np.ndarray) -> np.ndarray:
            i = count[0]
            count[0] += 1
            if i >= len(calls):
                raise RuntimeError(f"{recording.name}: call {i}, only {len(calls)} were recorded")
            want, out = calls[i]
            if not np.array_equal(np.asarray(ids), want):
                raise RuntimeError(f"{recording.name}: call {i} got other tokens than recorded ({ids} vs {want})")
            return out

        return fn

    return leg


def _record(tao: Path, out: Path) -> None:
    """Subprocess side: transformers + torchao greedy runs on run_parity's prompt, every call recorded."""
    from jquant.parity import load_transformers_model
    from torch_bridge.parity import greedy

    for config in TORCHAO_WITH_TRANSFORMERS:
        model = load_transformers_model(tao / config)  # float32, torchao tensor subclasses as saved
        vocab = int(model.config.vocab_size)
        ids = np.random.default_rng(0).integers(3, vocab, (2, 12))  # = run_parity(seed=0, batch=2, length=12)
        rec = {}

        def recorded(x, model=model, rec=rec):
            i = len(rec) // 2
            rec[f"in{i}"], rec[f"out{i}"] = np.array(x), transformers_logits(model, x)
            return rec[f"out{i}"]

        greedy(recorded, ids, NEW_TOKENS)
        np.savez(out / f"{config}.npz", **rec)


def torchao_case(config: str):
    tao = _torchao_dir()
    folder = tao / config
    with np.load(folder / "oracle.npz") as z:
        oracle = {k: z[k] for k in z.files if k.endswith("_proj.weight") and not k.startswith("act:")}
    extra = {}
    if config in TORCHAO_WITH_TRANSFORMERS:
        extra["transformers"] = _replay_leg(_torchao_recordings(tao) / f"{config}.npz")
    return folder, oracle, extra


# ---- AutoAWQ GEMV / GEMV_FAST of the whole tiny Llama --------------------------------------------


def _awq_gemm() -> Path:
    from tests.fixtures.producers_gptq_awq import awq_checkpoint

    try:
        return awq_checkpoint(128)
    except ProducerUnavailable as e:
        pytest.skip(str(e))


def awq_gemv_dir() -> Path:
    """AutoAWQ's GEMM checkpoint of the tiny Llama repacked by AutoAWQ's ``WQLinear_GEMV(Fast).from_linear``.

    Subfolders ``gemv/`` and ``gemv_fast/``: per module, AutoAWQ's ``unpack_awq`` +
    ``reverse_awq_order`` give the codes and zero points, ``(q - z) * s`` in f16 the fake-quantized
    weight (= ``dequantize_gemm``, = what ``AwqQuantizer.pseudo_quantize_tensor`` hands
    ``from_linear`` when AutoAWQ quantizes), packed by each version's ``from_linear``
    (tests/formats_variants/producers_awq.py does the same on two random layers).
    """
    src = _awq_gemm()
    key = f"autoawq-{producer_version('autoawq')}-gemv-from-{src.name}-v1"
    return cached_dir(key, lambda out: _run_module("awq-gemv", str(src), str(out)))


def _build_awq_gemv(src: Path, out: Path) -> None:
    import torch
    from awq.modules.linear.gemv import WQLinear_GEMV
    from awq.modules.linear.gemv_fast import WQLinear_GEMVFast
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    bits, gs = cfg["quantization_config"]["bits"], cfg["quantization_config"]["group_size"]
    tensors = load_file(str(src / "model.safetensors"))
    for version, cls in (("gemv", WQLinear_GEMV), ("gemv_fast", WQLinear_GEMVFast)):
        sd = {}
        for name, t in tensors.items():
            prefix, _, suffix = name.rpartition(".")
            if suffix in ("qzeros", "scales"):
                continue
            if suffix != "qweight":
                sd[name] = t
                continue
            scales = tensors[f"{prefix}.scales"]  # f16 [K/G, N]
            q, z = reverse_awq_order(*unpack_awq(t, tensors[f"{prefix}.qzeros"], bits), bits)
            q, z = q & (2**bits - 1), z & (2**bits - 1)  # as dequantize_gemm
            w = (q - z.repeat_interleave(gs, 0)) * scales.repeat_interleave(gs, 0)  # f16 [K, N]
            lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=False, dtype=torch.float16)
            lin.weight.data = w.t().contiguous()
            packed = cls.from_linear(lin, bits, gs, scales=scales.t().contiguous(), zeros=z.t().half().contiguous())
            for part in ("qweight", "qzeros", "scales"):
                sd[f"{prefix}.{part}"] = getattr(packed, part).contiguous()
        d = out / version
        d.mkdir()
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        qc = {**cfg["quantization_config"], "version": version}
        (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=1))


def awq_case(version: str):
    gemm = _awq_gemm()
    folder = awq_gemv_dir() / version
    ref, got = jquant.convert(gemm), jquant.convert(folder)
    assert sorted(got.quantized()) == sorted(ref.quantized()) and len(ref.quantized()) == 14
    for name in ref.quantized():  # the same codes and group scales as the GEMM checkpoint
        a, b = ref.weights[name], got.weights[name]
        np.testing.assert_array_equal(np.asarray(b.data), np.asarray(a.data), err_msg=name)
        np.testing.assert_array_equal(np.asarray(b.scale), np.asarray(a.scale), err_msg=name)
    oracle = producer_dequantized(gemm)["f32"] if version == "gemv" else None
    return got, oracle, {}


# ---- Marlin, GPTQ planar, MXFP6, INC, online quantization ----------------------------------------


def marlin_case():
    from tests.formats_variants.producers_marlin import marlin_variants

    try:
        made, src = marlin_variants()
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    return made / "ist", producer_dequantized(src)["f32"], {}


def planar_case(*variant):
    from tests.fixtures.producers_gptq_awq import gptq_checkpoint

    try:
        folder = gptq_checkpoint(*variant)
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["checkpoint_format"] == "gptq_p"
    return folder, producer_dequantized(folder)["f32"], {}


def _ct_dequantize_leg(folder: Path):
    """transformers' compressed-tensors integration decompressing ``folder`` at load, run in float32.

    ``CompressedTensorsConfig(dequantize=True)`` (transformers 5; formerly ``run_compressed=False``):
    the compressed run path decompresses MXFP6 to bf16 inside each forward, which a float32 model
    refuses (module docstring), while decompressing at load writes float32 weights.
    """

    def leg(ckpt):
        import torch
        from transformers import AutoModelForCausalLM, CompressedTensorsConfig

        qc = CompressedTensorsConfig(dequantize=True)
        with warnings.catch_warnings():  # "the quantization_config from the model will be used" (merged: wanted)
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=qc).eval()
        return lambda ids: transformers_logits(model, ids)

    return leg


def mxfp6_case():
    from tests.formats_variants.producers_mxfp6 import mxfp6_dir

    d = mxfp6_dir()
    with np.load(d / "oracle.npz") as z:
        oracle = {k: z[k] for k in z.files}
    return d / "MXFP6A16", oracle, {"transformers": _ct_dequantize_leg(d / "MXFP6A16")}


def inc_case(method: str):
    from tests.formats_variants.producers_inc import inc_dir

    try:
        return inc_dir() / method, None, {}
    except ProducerUnavailable as e:
        pytest.skip(f"INC producer unavailable: {e}")


def quantize_case(scheme: str):
    from tests.fixtures.producers_gptq_awq import tiny_llama_source

    return jquant.quantize(jquant.convert(tiny_llama_source()), scheme), None, {}


CASES = {
    **{f"torchao_{c}": (lambda c=c: torchao_case(c)) for c in TORCHAO_CONFIGS},
    "awq_gemv_g128": lambda: awq_case("gemv"),
    "awq_gemv_fast_g128": lambda: awq_case("gemv_fast"),
    "marlin_gptq_4bit_g128": marlin_case,
    "gptq_planar_5bit_sym_g128": lambda: planar_case(5, 128, True, False, "gptq"),
    "gptq_planar_6bit_asym_g64": lambda: planar_case(6, 64, False, False, "gptq_p"),
    "gptq_planar_7bit_sym_g32_actorder": lambda: planar_case(7, 32, True, True, "gptq_p"),
    "ct_mxfp6": mxfp6_case,
    "inc_fp8_per_tensor": lambda: inc_case("maxabs_arbitrary"),
    "inc_fp8_per_channel_pow2": lambda: inc_case("act_maxabs_pow2_weights_pcs_maxabs_pow2"),
    **{f"quantize_{s}": (lambda s=s: quantize_case(s)) for s in ("fp8", "int8", "nf4", "mxfp4", "fp6")},
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_new_format(case):
    src, oracle, extra = CASES[case]()
    ckpt = src if hasattr(src, "weights") else jquant.convert(src)
    rep = check_parity(case, ckpt, oracle, extra, _act_quantized(ckpt), new_tokens=NEW_TOKENS)
    assert {c.leg for c in rep.comparisons} >= {"jax", "torch_bridge", *extra}


def test_replay_refuses_other_tokens():
    rec = _torchao_recordings(_torchao_dir()) / "int8_weight_only.npz"
    fn = _replay_leg(rec)(None)
    with np.load(rec) as z:
        first, logits = z["in0"], z["out0"]
    np.testing.assert_array_equal(fn(first), logits)
    with pytest.raises(RuntimeError, match="call 1 got other tokens than recorded"):
        fn(first)  # call 1 was recorded with the first greedy token appended


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    job, *paths = sys.argv[1:]
    {"record-torchao": _record, "awq-gemv": _build_awq_gemv}[job](*map(Path, paths))
