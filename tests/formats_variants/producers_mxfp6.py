"""A compressed-tensors ``mxfp6-pack-quantized`` checkpoint made by llm-compressor, with its decompression.

``mxfp6_dir()`` returns a cached folder (tests.fixtures.cache): llm-compressor 0.14
``oneshot(QuantizationModifier(targets="Linear", scheme="MXFP6A16", ignore=["lm_head"]))`` on the
tiny random Llama (weight-only RTN with E8M0 group scales, CPU), ``save_pretrained(save_compressed=True)``
(compressed-tensors 0.20's ``MXFP6PackedCompressor.compress`` packs it), plus ``oracle.npz``: for
every quantized module, compressed-tensors' own ``MXFP6PackedCompressor.decompress`` of the saved
tensors (the producer's dequantizer), in float32.

Runs in a subprocess (``python -m tests.formats_variants.producers_mxfp6 OUT``), like
tests/fixtures/producers_ct.py: llm-compressor's global state must not leak into the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.cache import cached_dir

REPO = Path(__file__).resolve().parents[2]


def mxfp6_dir() -> Path:
    """The cached folder described in the module docstring (checkpoint in ``MXFP6A16/``)."""
    from importlib.metadata import version

    key = f"llmcompressor-{version('llmcompressor')}_ct-{version('compressed-tensors')}_mxfp6a16_v1"
    return cached_dir(key, _run)


def _run(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    cmd = [sys.executable, "-m", "tests.formats_variants.producers_mxfp6", str(out)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise RuntimeError(f"MXFP6 producer failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


def _build(out: Path) -> None:
    import numpy as np
    import torch
    from compressed_tensors.compressors.mxfp6.base import MXFP6PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.fixtures.tiny_llama import make_tiny_llama

    src = out / "src"
    make_tiny_llama(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="MXFP6A16", ignore=["lm_head"]))
    model.save_pretrained(out / "MXFP6A16", save_compressed=True)
    scheme: QuantizationScheme = preset_name_to_scheme("MXFP6A16", ["Linear"])
    tensors = load_file(str(out / "MXFP6A16" / "model.safetensors"))
    oracle = {}
    for name in tensors:
        if name.endswith(".weight_packed"):
            prefix = name[: -len(".weight_packed")]
            sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            w = MXFP6PackedCompressor.decompress(sd, scheme)["weight"]
            oracle[f"{prefix}.weight"] = w.float().numpy()
    np.savez(out / "oracle.npz", **oracle)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    _build(Path(sys.argv[1]))
