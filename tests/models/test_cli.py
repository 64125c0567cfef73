"""``jquant generate`` and ``jquant parity`` on tiny checkpoints (an HF folder and a GGUF file)."""

from __future__ import annotations

import re

import pytest

from jquant.cli import main
from tests.models.hf_tiny import hf_dir


def test_generate_hf_folder_streams_and_reports(capsys):
    rc = main([
        "generate", str(hf_dir("llama3")), "--prompt", "t5 t6 t7", "--no-chat", "--max-new-tokens", "5",
        "--temperature", "0.8", "--top-p", "0.9", "--seed", "1",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    assert len(out.split()) >= 1  # word-level tokenizer: the streamed tokens, space separated
    assert "[unquantized]" in err and "weights" in err and "tokens/s" in err and "5 tokens" in err


def test_parity_gguf_file(capsys):
    """Progress on stderr as each step starts; the report, then one PASS line with the thresholds, exit 0."""
    gguf_files = pytest.importorskip("tests.fixtures.gguf_files", reason="tests/fixtures/gguf_files.py is absent")
    path, _ = gguf_files.tiny_gguf("qwen3")
    rc = main(["parity", str(path), "--prompt", "hello world", "--no-chat", "--max-new-tokens", "6"])
    out, err = capsys.readouterr()
    assert rc == 0, out
    assert "top-1 agreement 100.0%" in out and re.search(r"greedy [1-6] tokens identical", out)
    assert re.fullmatch(
        r"PASS: 1 prompt; max\|diff\|/std \S+ <= 1e-03, top-1 agreement 100.0% >= 100.0%, greedy continuations identical",
        out.strip().splitlines()[-1],
    ), out
    steps = re.findall(r"^\[\s*[\d.]+ s\] (.*)$", err, re.M)
    assert any("transformers" in s for s in steps) and any("prompt 1/1" in s for s in steps), err
