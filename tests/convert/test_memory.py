"""Streaming conversion: peak memory is the output plus one module group, however many layers there are."""

import json
import re
import shutil
import tracemalloc

import jquant
from jquant.convert.hf import open_shards
from jquant.convert.safetensors_io import write_safetensors
from tests.fixtures.producers_gptq_awq import gptq_checkpoint


def _replicate_layers(src, dst, times):
    """A GPTQ checkpoint with ``times`` x the layers (copies of the producer's layers, renamed)."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    cfg["num_hidden_layers"] = n * times
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in ("quantize_config.json",):
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    tensors = {}
    for name, f in open_shards(src).items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if m is None:
            tensors[name] = f[name]
            continue
        for t in range(times):
            tensors[f"model.layers.{int(m.group(1)) + t * n}.{m.group(2)}"] = f[name]
    write_safetensors(dst / "model.safetensors", tensors)
    return dst


def _peak_beyond_output(folder):
    tracemalloc.start()
    try:
        ckpt = jquant.convert(folder)
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ckpt.quantized()) > 0
    return peak - retained, retained


def test_peak_memory_does_not_grow_with_layers(tmp_path):
    src = gptq_checkpoint(bits=4, group_size=32, sym=False, desc_act=True)
    small = _replicate_layers(src, tmp_path / "x1", 1)
    big = _replicate_layers(src, tmp_path / "x8", 8)
    jquant.convert(small)  # warm imports and caches outside the measurement
    extra_small, out_small = _peak_beyond_output(small)
    extra_big, out_big = _peak_beyond_output(big)
    assert out_big > 6 * out_small  # the output does grow 8x ...
    assert extra_big < 1.5 * extra_small + 64 * 1024, (extra_small, extra_big)  # ... the transient does not
