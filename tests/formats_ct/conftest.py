"""Shared fixtures and the compressed-tensors oracle for tests/formats_ct."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jquant.convert.safetensors_io import SafetensorsFile


@pytest.fixture(scope="session")
def llmc() -> Path:
    """The llm-compressor 0.14 checkpoints (one subfolder per scheme), built once and cached."""
    from tests.fixtures.producers_ct import llmcompressor_dir

    return llmcompressor_dir()


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of ``folder/model.safetensors`` as an in-memory numpy copy."""
    sf = SafetensorsFile(Path(folder) / "model.safetensors")
    return {k: np.array(sf[k]) for k in sf}


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two float32 arrays (sign of zero and NaN payloads included)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def ct_decompress_fp32(local: dict, scheme, fmt: str):
    """compressed-tensors 0.20's own decompression of one module, in float32.

    ``Compressor.decompress`` computes in the scale's dtype (fp16 here; bf16 for the fp4 unpack), so
    float scales are upcast to float32 first and, for the fp4 formats, the body of
    ``NVFP4PackedCompressor.decompress`` is run with ``dtype=float32`` (same helpers, same order:
    ``unpack_fp4_from_uint8``, ``_decompress_scale``, ``dequantize(..., global_scale)``).
    """
    import torch
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.mx_utils import decompress_mx_scale
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    comp = BaseCompressor.get_value_from_registry(fmt)
    sd = {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in local.items()}
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        packed = sd["weight_packed"]
        m, n = packed.shape
        x = unpack_fp4_from_uint8(packed, m, 2 * n, dtype=torch.float32)
        s = comp._decompress_scale(sd["weight_scale"], torch.float32)
        return dequantize(
            x_q=x, scale=s, args=scheme.weights, global_scale=sd.get("weight_global_scale"), dtype=torch.float32
        )
    if fmt == "mxfp8-quantized":
        sd["weight_scale"] = decompress_mx_scale(sd["weight_scale"]).float()
        return BaseCompressor.get_value_from_registry("naive-quantized").decompress(sd, scheme)["weight"].float()
    return comp.decompress(sd, scheme)["weight"].float()
