"""Marlin-repacked GPTQ checkpoints, made the way the Marlin sources convert a real GPTQ checkpoint.

``marlin_variants()`` returns a cached folder (tests.fixtures.cache) built from GPTQModel's 4-bit
symmetric G=128 checkpoint of the tiny Llama (`tests.fixtures.producers_gptq_awq.gptq_checkpoint`):

* every GPTQ module is dequantized as IST-DASLab ``conversion/convert.py dequantize_weight`` does
  (``(q - (qzeros + 1)) * scales`` in f16) and packed by `source_marlin_pack`, then saved as
  ``B`` / ``s`` with the rest of the checkpoint unchanged, under three configs:
  ``ist/`` (``{"quant_method": "marlin", "group_size": 128}``, what ``convert.py`` writes),
  ``autogptq/`` (the GPTQ config with ``checkpoint_format: "marlin"``, AutoGPTQ >= 0.8) and
  ``legacy/`` (``is_marlin_format: true``, AutoGPTQ <= 0.7.1);
* ``random.npz``: random codes / scales for shapes straddling the grouped / single scale paths,
  and their `source_marlin_pack`.

`source_marlin_pack` is a line-by-line transcription of ``QuantLinear.pack`` from AutoGPTQ
``auto_gptq/nn_modules/qlinear/qlinear_marlin.py`` (commit 0759aeaefd16; identical to IST-DASLab
``marlin/__init__.py Layer.pack``), whose CUDA-capability check in ``__init__`` keeps it from
running here; the permutation tables are imported from the installed GPTQModel
(``gptqmodel/nn_modules/qlinear/marlin.py _get_perms``, the same tables), not from jquant.

Runs in a subprocess (``python -m tests.formats_variants.producers_marlin OUT``): importing
GPTQModel takes seconds and patches torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.cache import cached_dir
from tests.fixtures.producers_gptq_awq import gptq_checkpoint, producer_version

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("ist", "autogptq", "legacy")
# (K, N, G): grouped (G < K) and single-group (G = K, also what group_size -1 packs) scale paths.
RANDOM_SHAPES = ((256, 128, 128), (256, 192, 64), (128, 64, -1), (256, 256, 256))


def marlin_variants() -> tuple[Path, Path]:
    """(the cached Marlin folder described above, the GPTQ checkpoint it was made from)."""
    src = gptq_checkpoint(bits=4, group_size=128, sym=True)
    key = f"marlin-from-gptqmodel-{producer_version('gptqmodel')}-b4-g128-v1"
    return cached_dir(key, lambda out: _run(out, src)), src


def _run(out: Path, src: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "tests.formats_variants.producers_marlin", str(out), str(src)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"Marlin producer failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}")


def source_marlin_pack(weight, scales, group_size: int):
    """AutoGPTQ ``QuantLinear.pack`` (qlinear_marlin.py @0759aeae), transcribed; torch in, numpy out.

    Args:
        weight: fake-quantized f16 weight [N, K] (``linear.weight``).
        scales: f16 [N, K/G] (``convert.py`` passes ``module.scales.t()``).
        group_size: G, or -1 (AutoGPTQ stores ``group_size = K`` then).

    Returns:
        (``B`` int32 [K/16, 2N], ``s`` f16 [K/G, N]) as numpy arrays.
    """
    import numpy as np
    import torch
    from gptqmodel.nn_modules.qlinear.marlin import _get_perms

    _perm, _scale_perm, _scale_perm_single = _get_perms()
    outfeatures, infeatures = weight.shape
    group_size = infeatures if group_size == -1 else group_size
    tile = 16
    maxq = 2**4 - 1
    s = scales.t()
    w = weight.t()
    if group_size != infeatures:
        w = w.reshape((-1, group_size, outfeatures))
        w = w.permute(1, 0, 2)
        w = w.reshape((group_size, -1))
        s = s.reshape((1, -1))
    w = torch.round(w / s).int()
    w += (maxq + 1) // 2
    w = torch.clamp(w, 0, maxq)
    if group_size != infeatures:
        w = w.reshape((group_size, -1, outfeatures))
        w = w.permute(1, 0, 2)
        w = w.reshape((infeatures, outfeatures)).contiguous()
        s = s.reshape((-1, len(_scale_perm)))[:, _scale_perm]
    else:
        s = s.reshape((-1, len(_scale_perm_single)))[:, _scale_perm_single]
    s = s.reshape((-1, outfeatures)).contiguous()
    w = w.reshape((infeatures // tile, tile, outfeatures // tile, tile))
    w = w.permute((0, 2, 1, 3))
    w = w.reshape((infeatures // tile, outfeatures * tile))
    res = w
    res = res.reshape((-1, _perm.numel()))[:, _perm].reshape(res.shape)
    q = np.zeros((res.shape[0], res.shape[1] // 8), dtype=np.uint32)
    res = res.cpu().numpy().astype(np.uint32)
    for i in range(8):
        q |= res[:, i::8] << 4 * i
    return q.astype(np.int32), s.numpy()


def _convert_py_dequantize(qweight, qzeros, scales):
    """IST-DASLab ``conversion/convert.py dequantize_weight`` (4-bit GPTQ v1 -> f16 [N, K]), transcribed."""
    import torch

    uw = torch.zeros((qweight.shape[0] * 8, qweight.shape[1]), dtype=torch.int8)
    uz = torch.zeros((qzeros.shape[0], qzeros.shape[1] * 8), dtype=torch.int8)
    for row in range(uw.shape[0]):
        uw[row, :] = (qweight[row // 8, :] >> (4 * (row % 8))) & 0xF
    for col in range(uz.shape[1]):
        uz[:, col] = (qzeros[:, col // 8] >> (4 * (col % 8))) & 0xF
    uz = uz + 1
    group_size = uw.shape[0] // scales.shape[0]
    s = scales.repeat_interleave(group_size, dim=0)
    uz = uz.repeat_interleave(group_size, dim=0)
    return ((uw - uz) * s).T


def _build(out: Path, src: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "model.safetensors"))
    marlin = {}
    for name, t in tensors.items():
        prefix, _, suffix = name.rpartition(".")
        if suffix in ("qzeros", "scales", "g_idx"):
            continue
        if suffix != "qweight":
            marlin[name] = t
            continue
        qz, sc = tensors[f"{prefix}.qzeros"], tensors[f"{prefix}.scales"]
        w = _convert_py_dequantize(t, qz, sc).to(torch.float16)
        b, s = source_marlin_pack(w, sc.t().contiguous(), 128)
        marlin[f"{prefix}.B"], marlin[f"{prefix}.s"] = torch.from_numpy(b), torch.from_numpy(s)
    cfg = json.loads((src / "config.json").read_text())
    gq = {k: v for k, v in cfg["quantization_config"].items() if k not in ("format", "checkpoint_format")}
    qcs = {
        "ist": {"group_size": 128, "quant_method": "marlin"},
        "autogptq": {**gq, "checkpoint_format": "marlin"},
        "legacy": {**gq, "is_marlin_format": True},
    }
    for name, qc in qcs.items():
        d = out / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}, indent=1))
        save_file(marlin, str(d / "model.safetensors"))
    rng = np.random.default_rng(0)
    arrays = {}
    for i, (k, n, g) in enumerate(RANDOM_SHAPES):
        gs = k if g == -1 else g
        codes = rng.integers(0, 16, size=(k, n)).astype(np.uint8)
        scales = rng.uniform(0.5, 2.0, size=(k // gs, n)) * 2.0 ** rng.integers(-12, -4, size=(k // gs, n))
        scales = scales.astype(np.float16)
        w = torch.from_numpy((codes.astype(np.float32) - 8) * np.repeat(scales, gs, axis=0).astype(np.float32))
        b, s = source_marlin_pack(w.T.to(torch.float16), torch.from_numpy(scales).t(), g)
        arrays.update({f"codes{i}": codes, f"scales{i}": scales, f"B{i}": b, f"s{i}": s})
    np.savez(out / "random.npz", **arrays)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    _build(Path(sys.argv[1]), Path(sys.argv[2]))
