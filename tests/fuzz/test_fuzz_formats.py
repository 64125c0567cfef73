"""Fuzzing each format's partner-tensor grouping, from real producer checkpoints.

One module of each producer checkpoint (GPTQ, AWQ, AutoRound, compressed-tensors schemes, HF FP8,
bitsandbytes NF4 / int8) is read into memory; hypothesis drops partner tensors, changes their
dtype or shape, fills them with random bytes (NaN scales, out-of-range codes) or adds strays, and
converts the module with the format built from the checkpoint's config. The property: a dict of
valid `QArray`s / arrays, or a `FormatError`; never any other exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jquant.convert.hf import read_config
from jquant.convert.safetensors_io import SafetensorsFile
from jquant.core.errors import FormatError
from jquant.core.qarray import QArray
from jquant.formats import TensorGroup, detect_format
from tests.fuzz.test_fuzz_readers import time_limit

MODULE = "model.layers.0.self_attn.q_proj"


class Mem:
    """An in-memory stand-in for an opened shard."""

    path = "mem.safetensors"

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __getitem__(self, name):
        return self.arrays[name]

    def shape(self, name):
        return self.arrays[name].shape

    def dtype(self, name):
        return self.arrays[name].dtype


def _sources() -> dict[str, Path]:
    from tests.fixtures import producers_gptq_awq as pg

    out: dict[str, Path] = {}
    for label, make in (
        ("gptq", lambda: pg.gptq_checkpoint(4, 32, False, True, "gptq")),
        ("awq", lambda: pg.awq_checkpoint(128)),
        ("autoround", lambda: pg.autoround_checkpoint()),
    ):
        try:
            out[label] = make()
        except Exception:  # producer not installed / not cached: that format is covered elsewhere
            pass
    try:
        from tests.fixtures.producers_ct import llmcompressor_dir

        ct = llmcompressor_dir()
        for scheme in ("W4A16_ASYM", "FP8_BLOCK", "NVFP4", "MXFP4", "W8A8", "GPTQ"):
            if (ct / scheme / "config.json").exists():
                out[f"ct-{scheme}"] = ct / scheme
    except Exception:
        pass
    try:
        from tests.fixtures.producers_bnb import bnb_dir

        for kind in ("nf4-dq", "int8"):
            if (bnb_dir() / kind / "config.json").exists():
                out[f"bnb-{kind}"] = bnb_dir() / kind
    except Exception:
        pass
    return out


_CACHE: dict[str, tuple] = {}


def _load(label: str, folder: Path):
    if label not in _CACHE:
        config = read_config(folder)
        shards = [SafetensorsFile(p) for p in sorted(folder.glob("*.safetensors"))]
        names = {n: f for f in shards for n in f}
        fmt = detect_format(config, list(names))
        module = {}
        for n, f in names.items():
            prefix, suffix = fmt.split_name(n)
            if prefix == MODULE:
                module[suffix] = np.array(f[n])
        assert module, f"{label}: no tensors under {MODULE}"
        _CACHE[label] = (config, list(names), module)
    return _CACHE[label]


SOURCES = _sources()
_DTYPES = [np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]


@st.composite
def mutation(draw, module: dict[str, np.ndarray]):
    out = dict(module)
    suffixes = sorted(out)
    for _ in range(draw(st.integers(1, 3))):
        s = draw(st.sampled_from(suffixes))
        if s not in out:
            continue
        a = out[s]
        kind = draw(st.integers(0, 5))
        if kind == 0:
            del out[s]
        elif kind == 1:
            out[s] = a.astype(draw(st.sampled_from(_DTYPES)))
        elif kind == 2 and a.ndim:
            axis = draw(st.integers(0, a.ndim - 1))
            out[s] = np.take(a, range(draw(st.integers(0, a.shape[axis]))), axis=axis)
        elif kind == 3:
            out[s] = a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
        elif kind == 4:
            raw = draw(st.binary(min_size=min(a.nbytes, 64), max_size=min(a.nbytes, 64)))
            b = a.copy().reshape(-1).view(np.uint8)
            b[: len(raw)] = np.frombuffer(raw, np.uint8)
            out[s] = b.view(a.dtype).reshape(a.shape)
        else:
            out[draw(st.sampled_from(["g_idx", "qzeros", "weight_scale", "input_scale", "junk", "weight.absmax"]))] = a
    return out


@pytest.mark.parametrize(
    "label", sorted(SOURCES) or [pytest.param("none", marks=pytest.mark.skip("no producer fixtures"))]
)
@given(data=st.data())
def test_partner_grouping(label, data):
    config, names, module = _load(label, SOURCES[label])
    tensors = data.draw(mutation(module))
    fmt = detect_format(config, names)
    mem = Mem({f"{MODULE}.{s}": a for s, a in tensors.items()})
    group = TensorGroup(MODULE, {s: (mem, f"{MODULE}.{s}") for s in tensors})
    with time_limit():
        try:
            out = fmt.convert_module(group)
            for name, w in out.items():
                if isinstance(w, QArray):
                    w.validate(name)
        except FormatError as e:
            assert str(e)
            return
    assert isinstance(out, dict)


def test_sources_found():
    """The grouping fuzz has real checkpoints to start from (they are cached by the other suites)."""
    if not SOURCES:
        pytest.skip("no producer fixtures in the cache")
    assert all((p / "config.json").exists() for p in SOURCES.values())
    json.dumps(sorted(SOURCES))
