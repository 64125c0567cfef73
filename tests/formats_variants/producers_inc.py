"""Intel Neural Compressor FP8 checkpoints of the tiny Llama, made by INC itself on CPU.

``inc_dir()`` returns a cached folder (tests.fixtures.cache) with one subfolder per scale method in
`SCALE_METHODS`, each the output of neural-compressor's FP8 flow on the bf16 tiny Llama:
``prepare(model, FP8Config(mode="MEASURE"))`` + calibration tokens + ``finalize_calibration``
(writes the measured-scale files ``hqt_output/measure_hooks_maxabs*.json|npz``, kept in the
subfolder's ``_measure/``), then ``convert(model, FP8Config(mode="QUANTIZE", scale_method=...))``
and ``save(model, dir, format="huggingface")``. ``use_qdq=True`` is what INC accepts on a CPU
(``quant_config.py``: "only QDQ mode is supported on CPU device"); the Gaudi-only
``maxabs_hw`` rounding needs an HPU, so the per-tensor run uses ``maxabs_arbitrary``.

Oracle: ``_oracle.npz`` in each subfolder, every PatchedLinear's own ``dequant_weights(weight)``
(INC's dequantization, bf16, transposed to HF [N, K]) stored as float32.

INC is not part of the project's environment: `inc_dir` raises `ProducerUnavailable` unless
``neural_compressor`` (PyPI ``neural-compressor-pt``, tested with 3.10 installed ``--no-deps`` plus
``prettytable``, ``wcwidth``, ``py-cpuinfo``) is importable. Runs in a subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.cache import cached_dir
from tests.fixtures.producers_gptq_awq import ProducerUnavailable

REPO = Path(__file__).resolve().parents[2]
# per-tensor weight scales, and per-output-channel (PCS) power-of-two weight scales
SCALE_METHODS = ("maxabs_arbitrary", "act_maxabs_pow2_weights_pcs_maxabs_pow2")


def inc_dir() -> Path:
    """The cached folder described in the module docstring."""
    if importlib.util.find_spec("neural_compressor") is None:
        raise ProducerUnavailable("neural_compressor (PyPI neural-compressor-pt) is not installed")
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("neural-compressor-pt")
    except PackageNotFoundError:
        ver = "unknown"
    return cached_dir(f"inc-{ver}-fp8-tiny-llama-v1", _run)


def _run(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "tests.formats_variants.producers_inc", str(out)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise RuntimeError(f"INC producer failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


def _build(out: Path) -> None:
    import shutil

    import numpy as np
    import torch
    from neural_compressor.torch.quantization import FP8Config, convert, finalize_calibration, prepare, save
    from transformers import AutoModelForCausalLM

    from tests.fixtures.tiny_llama import make_tiny_llama

    src = out / "src"
    make_tiny_llama(src, dtype="bfloat16")
    ids = torch.randint(4, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    for method in SCALE_METHODS:
        d = out / method
        stats = d / "_measure" / "measure"
        common = {"use_qdq": True, "observer": "maxabs", "dump_stats_path": str(stats)}
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
        model = prepare(model, FP8Config.from_dict({**common, "mode": "MEASURE"}))
        with torch.no_grad():
            model(ids)
        finalize_calibration(model)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
        model = convert(model, FP8Config.from_dict({**common, "mode": "QUANTIZE", "scale_method": method}))
        save(model, str(d), format="huggingface")
        oracle = {}
        with torch.no_grad():
            for name, mod in model.named_modules():
                if type(mod).__name__ == "PatchedLinear":
                    oracle[f"{name}.weight"] = mod.dequant_weights(mod.weight).float().numpy().T.copy()
        np.savez(d / "_oracle.npz", **oracle)
    shutil.rmtree(src)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    _build(Path(sys.argv[1]))
