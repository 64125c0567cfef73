"""``jquant parity`` on a canonical folder (issue 17): the reference is the spec leg.

transformers cannot load a canonical folder, so ``jquant parity`` builds transformers from the
config over ``jquant.dequantize``d weights (`torch_bridge.parity.dense_model`, the reference of
``jquant parity-torch``) and says so on its ``reference:`` line. The real flow: the embedded
SmolLM2-135M-Instruct GGUF, dequantized to a bf16 float checkpoint, ``jquant convert --quantize
fp8`` (dynamic per-tensor fp8 activations), then ``jquant parity OUT``, held to the
activation-quantized bounds (`jquant.parity.ACT_MAX_REL`, `jquant.parity.ACT_MIN_TOP1`).
"""

from __future__ import annotations

import re

import ml_dtypes
import pytest

import jquant
from jquant.cli import main
from tests.fixtures.cache import cached_dir


def _smollm2_fp8():
    """(bf16 float folder, its ``convert --quantize fp8`` canonical folder), built once into the fixture cache."""
    from jquant.convert.default_model import default_model_path
    from jquant.quantize import dequantized

    try:
        gguf = default_model_path()
    except jquant.FormatError as e:
        pytest.skip(str(e))

    def build_bf16(out):
        jquant.save(dequantized(jquant.convert(gguf), ml_dtypes.bfloat16), out / "m")

    bf16 = cached_dir(f"smollm2-135m-bf16-from-{gguf.name}", build_bf16) / "m"

    def build_fp8(out):
        assert main(["convert", str(bf16), str(out / "m"), "--quantize", "fp8"]) == 0

    return bf16, cached_dir(f"smollm2-135m-fp8-online-from-{gguf.name}", build_fp8) / "m"


@pytest.mark.slow
def test_parity_of_a_canonical_fp8_folder_passes_against_the_spec(capsys):
    """The issue 17 flow: GGUF -> bf16 float folder -> ``convert --quantize fp8`` -> ``parity OUT``.

    The two default prompts, 8 new tokens (about 80 s on the 2-core box, the folders cached).
    """
    _, fp8 = _smollm2_fp8()
    capsys.readouterr()
    assert main(["parity", str(fp8), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "reference: spec (transformers from the config over jquant.dequantize'd weights, inputs of 210 layers" in out
    assert "transformers cannot load a canonical jquant folder" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("PASS: activations quantized: 2 prompts;"), last
    rel, top1 = re.search(r"max\|diff\|/std (\S+) <= 2e\+00, top-1 agreement (\S+)% >= 80.0%", last).groups()
    assert float(rel) <= 2.0 and float(top1) >= 80.0
    # the weights alone (activation recipes removed from both sides) agree to float32 precision
    rel_w = re.search(r"weights only: 2 prompts; max\|diff\|/std (\S+) <= 1e-03, top-1 agreement 100.0%", last)
    assert rel_w and float(rel_w.group(1)) <= 1e-3 and last.endswith("greedy continuations identical"), last
    assert "The capital of France is Paris" in out


@pytest.fixture(scope="module")
def gptq_canonical(tmp_path_factory):
    """GPTQModel's 4-bit tiny Llama (tests/fixtures) saved as a canonical folder, tokenizer included."""
    from tests.fixtures.producers_gptq_awq import ProducerUnavailable, gptq_checkpoint

    try:
        src = gptq_checkpoint(4, 128, True)
    except ProducerUnavailable as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("parity") / "gptq-canonical"
    jquant.save(jquant.convert(src), out)
    return out


def test_parity_of_a_canonical_gptq_folder_uses_the_spec_and_passes(gptq_canonical, capsys):
    # One new token: on this random tiny Llama the greedy continuations of jquant and transformers
    # part at the second token with the transformers reference on the GPTQ source folder too (the
    # logits agree within 2e-6 / std on the prompt), so only the first is compared here.
    argv = ["parity", str(gptq_canonical), "--no-chat", "--prompt", "t5 t9 t17 t33 t65", "--max-new-tokens", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ref = next(line for line in out.splitlines() if line.startswith("reference: "))
    assert ref == (
        "reference: spec (transformers from the config over jquant.dequantize'd weights; "
        "transformers cannot load a canonical jquant folder)"
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith("PASS: 1 prompt; max|diff|/std ") and last.endswith("greedy continuations identical"), last


def test_parity_reference_transformers_refuses_a_canonical_folder(gptq_canonical, capsys):
    """``--reference transformers`` is never switched to the spec behind the user's back."""
    assert main(["parity", str(gptq_canonical), "--reference", "transformers", "--no-chat", "--prompt", "t5"]) == 2
    err = capsys.readouterr().err
    assert "transformers cannot load a canonical jquant folder; use --reference spec" in err, err
