"""AWQ GEMM / GEMV / GEMV_FAST checkpoints packed by AutoAWQ's own layer classes (CPU, no kernels).

``awq_variants()`` returns a cached folder (tests.fixtures.cache) holding, for each group size G
in `GROUP_SIZES`, three bag-of-weights checkpoints ``g{G}-{version}/`` (``config.json`` with
``quant_method: "awq"`` + ``model.safetensors``) made from the same fp16 layers:

1. AutoAWQ's ``AwqQuantizer.pseudo_quantize_tensor`` (zero point, 4-bit, group G) gives the
   fake-quantized weight, scales and zeros, exactly as ``AwqQuantizer._apply_quant`` does;
2. ``WQLinear_GEMM`` / ``WQLinear_GEMV`` / ``WQLinear_GEMVFast.from_linear`` pack them (with the
   GEMM-only transpose of scales and zeros that ``_apply_quant`` applies).

plus ``pack_intweight.npz``: random 4-bit codes [N, K] and ``awq.modules.linear.gemv_fast.pack_intweight``
of them (the GEMV_FAST packer on its own). The GEMM folder is the oracle for the others: its
canonical form is checked against AutoAWQ's ``dequantize_gemm`` by tests/formats.

Runs in a subprocess (``python -m tests.formats_variants.producers_awq OUT``): importing AutoAWQ
takes seconds, building everything well under one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.cache import cached_dir
from tests.fixtures.producers_gptq_awq import producer_version

REPO = Path(__file__).resolve().parents[2]
GROUP_SIZES = (128, 32)
VERSIONS = ("gemm", "gemv", "gemv_fast")
# (module, in_features K, out_features N, bias): K a multiple of 64 (GEMV_FAST's k-stride) and of
# every G; N a multiple of 32 (the GEMM packer floors N/32) but not of 64.
LAYERS = (
    ("model.layers.0.self_attn.q_proj", 256, 64, False),
    ("model.layers.0.mlp.down_proj", 512, 96, True),
)


def awq_variants() -> Path:
    """The cached folder described in the module docstring."""
    key = f"autoawq-{producer_version('autoawq')}-gemv-variants-v1"
    return cached_dir(key, _run)


def _run(out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "tests.formats_variants.producers_awq", str(out)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"AutoAWQ variant producer failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


def _build(out: Path) -> None:
    import numpy as np
    import torch
    from awq.modules.linear.gemm import WQLinear_GEMM
    from awq.modules.linear.gemv import WQLinear_GEMV
    from awq.modules.linear.gemv_fast import WQLinear_GEMVFast, pack_intweight
    from awq.quantize.quantizer import AwqQuantizer
    from safetensors.torch import save_file

    classes = {"gemm": WQLinear_GEMM, "gemv": WQLinear_GEMV, "gemv_fast": WQLinear_GEMVFast}
    for gs in GROUP_SIZES:
        quantizer = AwqQuantizer.__new__(AwqQuantizer)  # only pseudo_quantize_tensor's attributes
        quantizer.w_bit, quantizer.group_size, quantizer.zero_point = 4, gs, True
        torch.manual_seed(gs)
        tensors: dict[str, dict[str, torch.Tensor]] = {v: {} for v in VERSIONS}
        for name, k, n, bias in LAYERS:
            lin = torch.nn.Linear(k, n, bias=bias).half()
            with torch.no_grad():
                lin.weight.mul_(4.0)  # spread the values so every group uses many codes
                lin.weight.data, scales, zeros = quantizer.pseudo_quantize_tensor(lin.weight.data)
            for v in VERSIONS:
                s, z = (scales.t().contiguous(), zeros.t().contiguous()) if v == "gemm" else (scales, zeros)
                q = classes[v].from_linear(lin, 4, gs, scales=s, zeros=z)
                for suffix in ("qweight", "qzeros", "scales", "bias"):
                    t = getattr(q, suffix, None)
                    if t is not None:
                        tensors[v][f"{name}.{suffix}"] = t.contiguous()
        for v in VERSIONS:
            d = out / f"g{gs}-{v}"
            d.mkdir()
            qc = {"quant_method": "awq", "bits": 4, "group_size": gs, "zero_point": True, "version": v}
            (d / "config.json").write_text(json.dumps({"quantization_config": qc}, indent=1))
            save_file(tensors[v], str(d / "model.safetensors"))
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(12, 192), dtype=np.int64)
    packed = pack_intweight(torch.from_numpy(codes).to(torch.int32), interleave=4, kstride=64).numpy()
    np.savez(out / "pack_intweight.npz", codes=codes.astype(np.uint8), packed=packed)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    _build(Path(sys.argv[1]))
