"""Broken bitsandbytes checkpoints: a `FormatError` naming file, tensor and problem; the CLI writes nothing.

Each case copies a real transformers + bitsandbytes checkpoint (`tests.fixtures.producers_bnb`) and
breaks one thing in its tensors or its config.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.cli import main as cli_main
from jquant.convert.safetensors_io import write_safetensors
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from tests.formats_bnb.conftest import read_tensors

L = "model.layers.0.self_attn.q_proj"  # N = K = 256: 1024 blocks of 64, 4 nested blocks of 256
QS = f"{L}.weight.quant_state.bitsandbytes__nf4"
FIRST = "model.layers.0.mlp.down_proj"  # the first quantized module in conversion order (config-wide errors)


def _broken(
    src: Path, dst: Path, tensors: Callable[[dict], None] | None = None, config: Callable[[dict], None] | None = None
) -> Path:
    """Copies checkpoint ``src`` to ``dst``, editing its tensor dict / quantization_config in place."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_oracle"))
    if tensors is not None:
        t = read_tensors(dst)
        tensors(t)
        write_safetensors(dst / "model.safetensors", t)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _expect(folder: Path, cls: type[FormatError], tensor: str, problem: str, file: str = "model.safetensors"):
    with pytest.raises(cls) as info:
        jquant.convert(folder)
    e = info.value
    assert type(e) is cls, repr(e)
    assert e.tensor == tensor, str(e)
    assert e.file is not None and e.file.endswith(file), str(e)
    assert problem in e.problem, str(e)
    return e


def _blob(t: dict, key: str = QS) -> dict:
    return json.loads(t[key].tobytes())


def _set_blob(t: dict, blob: dict, key: str = QS) -> None:
    t[key] = np.frombuffer(json.dumps(blob).encode(), dtype=np.uint8).copy()


@pytest.fixture(scope="module")
def nf4dq(bnb_root):
    return bnb_root / "nf4-dq"


@pytest.fixture(scope="module")
def nf4(bnb_root):
    return bnb_root / "nf4"


@pytest.fixture(scope="module")
def int8(bnb_root):
    return bnb_root / "int8"


# ---- missing partners ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix", ["weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map"]
)
def test_missing_partner_4bit(nf4dq, tmp_path, suffix):
    bad = _broken(nf4dq, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.{suffix}"))
    _expect(bad, FormatError, f"{L}.{suffix}", "missing tensor")


def test_missing_quant_state(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", tensors=lambda t: t.pop(QS))
    _expect(bad, FormatError, QS, "missing tensor")


def test_missing_packed_weight(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.weight"))
    _expect(bad, FormatError, f"{L}.weight", "missing tensor")


def test_missing_scb(int8, tmp_path):
    bad = _broken(int8, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.SCB"))
    _expect(bad, FormatError, f"{L}.SCB", "missing tensor")


# ---- truncated / malformed tensors --------------------------------------------------------------


def test_truncated_packed_weight(nf4dq, tmp_path):
    def edit(t):
        t[f"{L}.weight"] = t[f"{L}.weight"][:-10]

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight", "does not hold 256x256 4-bit codes")


def test_truncated_absmax(nf4, tmp_path):
    def edit(t):
        t[f"{L}.weight.absmax"] = t[f"{L}.weight.absmax"][:-1]

    bad = _broken(nf4, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight.absmax", "shape [1023] but expected [1024]")


def test_truncated_file(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck")
    p = bad / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(CorruptFileError, match="truncated"):
        jquant.convert(bad)


def test_corrupt_quant_state_json(nf4dq, tmp_path):
    def edit(t):
        t[QS] = t[QS][:-5].copy()

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, QS, "not UTF-8 JSON")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"shape": [256]}, "is not a 2-D weight shape"),
        ({"blocksize": 48}, "not a power of two"),
        ({"dtype": "int8"}, "quant_state dtype 'int8'"),
        ({"quant_type": "fp4"}, "says quant_type='fp4' but is named for 'nf4'"),
        ({"nested_offset": None}, "nested_offset None is not a finite number"),
        ({"shape": [256, 512]}, "does not hold 256x512 4-bit codes"),
    ],
)
def test_bad_quant_state(nf4dq, tmp_path, change, problem):
    def edit(t):
        _set_blob(t, {**_blob(t), **change})

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    cls = UnsupportedFormatError if "2-D" in problem else FormatError
    tensor = f"{L}.weight" if "4-bit codes" in problem else QS
    _expect(bad, cls, tensor, problem)


def test_wrong_quant_map(nf4dq, tmp_path):
    def edit(t):
        t[f"{L}.weight.quant_map"] = t[f"{L}.weight.quant_map"][::-1].copy()

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight.quant_map", "differs from bitsandbytes' nf4 table")


# ---- NaN / inf statistics -----------------------------------------------------------------------


def test_nan_absmax(nf4, tmp_path):
    def edit(t):
        t[f"{L}.weight.absmax"][7] = np.nan

    bad = _broken(nf4, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight.absmax", "non-finite absmax nan at block 7")


def test_inf_nested_absmax(nf4dq, tmp_path):
    def edit(t):
        t[f"{L}.weight.nested_absmax"][2] = np.inf

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight.nested_absmax", "non-finite value inf at index 2")


def test_nan_nested_quant_map(nf4dq, tmp_path):
    def edit(t):
        t[f"{L}.weight.nested_quant_map"][200] = np.nan

    bad = _broken(nf4dq, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.weight.nested_quant_map", "non-finite value nan at index 200")


def test_nan_scb(int8, tmp_path):
    def edit(t):
        t[f"{L}.SCB"][3] = np.nan

    bad = _broken(int8, tmp_path / "ck", tensors=edit)
    _expect(bad, FormatError, f"{L}.SCB", "non-finite scale nan at row 3")


def test_int8_weight_format_col32(int8, tmp_path):
    def edit(t):
        t[f"{L}.weight_format"] = np.array(1, dtype=np.uint8)

    bad = _broken(int8, tmp_path / "ck", tensors=edit)
    _expect(bad, UnsupportedFormatError, f"{L}.weight_format", "weight_format col32")


# ---- contradictory configs ----------------------------------------------------------------------


def test_config_says_fp4_over_nf4(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", config=lambda qc: qc.update(bnb_4bit_quant_type="fp4"))
    _expect(
        bad,
        ConfigError,
        f"{FIRST}.weight.quant_state.bitsandbytes__nf4",
        "nf4 tensor but the config says bnb_4bit_quant_type='fp4'",
    )


def test_config_denies_double_quant(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", config=lambda qc: qc.update(bnb_4bit_use_double_quant=False))
    _expect(bad, ConfigError, f"{FIRST}.weight.absmax", "double-quantized statistics but the config says")


def test_config_claims_double_quant(nf4, tmp_path):
    bad = _broken(nf4, tmp_path / "ck", config=lambda qc: qc.update(bnb_4bit_use_double_quant=True))
    _expect(bad, ConfigError, f"{FIRST}.weight.absmax", "single-quantized statistics but the config says")


def test_config_storage_contradicts_weight(bnb_root, tmp_path):
    src = bnb_root / "fp4-dq-bf16storage"
    bad = _broken(src, tmp_path / "ck", config=lambda qc: qc.update(bnb_4bit_quant_storage="uint8"))
    _expect(bad, ConfigError, f"{FIRST}.weight", "dtype bfloat16 but bnb_4bit_quant_storage='uint8'")


def test_config_says_8bit_over_4bit(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", config=lambda qc: qc.update(load_in_4bit=False, load_in_8bit=True))
    _expect(bad, ConfigError, "quantization_config.load_in_8bit", "holds 4-bit", file="config.json")


def test_cli_writes_nothing(nf4dq, tmp_path):
    bad = _broken(nf4dq, tmp_path / "ck", tensors=lambda t: t.pop(f"{L}.weight.absmax"))
    out = tmp_path / "out" / "converted"
    out.parent.mkdir()
    assert cli_main(["convert", str(bad), str(out)]) == 2
    assert not out.exists() and list(out.parent.iterdir()) == []
