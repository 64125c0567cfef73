"""Memory bounds of the readers (README: the limits on hostile headers), measured in a child process.

Each case builds a hostile file, then a fresh interpreter opens it and reports its peak RSS over
what it had after imports. Before the limits: 13M empty nested GGUF arrays took 2.3 GB, a
safetensors header of 400k empty tensors 511 MB.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import builders as B

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import resource, sys, time
from jquant.convert.gguf_reader import GGUFFile
from jquant.convert.safetensors_io import SafetensorsFile
from jquant.core.errors import FormatError
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    (GGUFFile if sys.argv[1].endswith(".gguf") else SafetensorsFile)(sys.argv[1])
    verdict = "ok"
except FormatError as e:
    verdict = "refused: " + str(e)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(verdict)
print((peak - base) / 1024, time.perf_counter() - t)
"""


def _open(path: Path) -> tuple[str, float, float]:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    verdict, nums = r.stdout.strip().splitlines()
    mb, seconds = map(float, nums.split())
    return verdict, mb, seconds


def _gguf_with(path: Path, key: str, raw_value: bytes) -> Path:
    path.write_bytes(B.gguf_bytes(B.llama_kv() + [(key, B.ARRAY, raw_value)], []))
    return path


def test_nested_gguf_arrays(tmp_path):
    from jquant.convert.gguf_reader import MAX_NESTED_ARRAYS

    n = 2_000_000  # 24 MB of empty sub-arrays
    p = _gguf_with(
        tmp_path / "nested.gguf", "x.nested", struct.pack("<IQ", B.ARRAY, n) + struct.pack("<IQ", B.U8, 0) * n
    )
    verdict, mb, seconds = _open(p)
    assert verdict.startswith("refused") and f"more than {MAX_NESTED_ARRAYS} nested arrays" in verdict, verdict
    assert mb < 60 and seconds < 10, (mb, seconds)


def test_gguf_strings_at_and_over_the_limit(tmp_path):
    from jquant.convert.gguf_reader import MAX_METADATA_STRINGS

    over = MAX_METADATA_STRINGS + 1
    p = _gguf_with(tmp_path / "over.gguf", "x.s", struct.pack("<IQ", B.STRING, over) + struct.pack("<Q", 0) * over)
    verdict, mb, seconds = _open(p)
    assert verdict.startswith("refused") and f"more than {MAX_METADATA_STRINGS} strings" in verdict, verdict
    assert mb < 80, mb
    n = 1_000_000  # accepted: a big vocabulary of 4-byte tokens
    tok = struct.pack("<Q", 4) + b"tokn"
    p = _gguf_with(tmp_path / "vocab.gguf", "tokenizer.ggml.tokens", struct.pack("<IQ", B.STRING, n) + tok * n)
    verdict, mb, seconds = _open(p)
    assert verdict == "ok" and mb < 250 and seconds < 20, (verdict, mb, seconds)


def test_safetensors_header_of_many_empty_tensors(tmp_path):
    from jquant.convert.safetensors_io import MAX_TENSORS

    entry = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    over = tmp_path / "over.safetensors"
    over.write_bytes(B.safetensors_bytes({f"t{i}": entry for i in range(400_000)}))
    verdict, mb, seconds = _open(over)
    assert verdict.startswith("refused") and f"more than {MAX_TENSORS} tensors" in verdict, verdict
    assert mb < 300, mb
    at = tmp_path / "at.safetensors"
    raw = json.dumps({f"t{i}": entry for i in range(MAX_TENSORS)}).encode()
    at.write_bytes(struct.pack("<Q", len(raw)) + raw)
    verdict, mb, seconds = _open(at)
    assert verdict == "ok" and mb < 350, (verdict, mb)


@pytest.mark.parametrize("n", [3000])
def test_deep_nesting_is_refused_cheaply(tmp_path, n):
    p = _gguf_with(tmp_path / "deep.gguf", "x.deep", struct.pack("<IQ", B.ARRAY, 1) * n + struct.pack("<IQ", B.U8, 0))
    verdict, mb, _ = _open(p)
    assert verdict.startswith("refused") and "nested deeper" in verdict and mb < 20, (verdict, mb)
