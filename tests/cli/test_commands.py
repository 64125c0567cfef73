"""Each subcommand's early checks, labels, units, verdicts and tokenizers, on tiny checkpoints."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jquant
from jquant.cli import main
from jquant.core import qtypes as qt
from tests.core.test_qarray import random_qarray

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def canonical(tmp_path_factory) -> Path:
    """A canonical folder (source format "gptq") with 12 layers, so that text order would put 10 before 2."""
    w = random_qarray(qt.uint4, n=64, k=256, block=(1, 128), zero="int")
    weights = {f"model.layers.{i}.mlp.up_proj.weight": w for i in (0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9)}
    weights["model.norm.weight"] = np.ones(64, np.float32)
    out = tmp_path_factory.mktemp("canon") / "q"
    jquant.save(jquant.Checkpoint("gptq", {"model_type": "llama"}, weights), out)
    return out


def test_missing_source_fails_fast_without_jax(tmp_path):
    """A wrong path is one line and exit 2 from every command, before JAX (or torch) is imported."""
    code = (
        "import sys; from jquant.cli import main\n"
        "for argv in (['generate', '/nonexistent'], ['convert', '/nonexistent', sys.argv[1]], "
        "['inspect', '/nonexistent'], ['parity', '/nonexistent'], ['parity-torch', '/nonexistent']):\n"
        "    assert main(argv) == 2, argv\n"
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'imported JAX or torch'\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert lines == ["error: file /nonexistent: no such file or folder"] * 5, lines
    assert not (tmp_path / "out").exists()


def test_convert_refuses_existing_out_before_any_work(canonical, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(jquant, "convert", lambda *a, **k: pytest.fail("converted before checking OUT"))
    assert main(["convert", str(canonical), str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.err.strip() == f"error: {out} exists; pass --force to replace it"
    assert "overwrite=True" not in cap.err and "converting" not in cap.out + cap.err  # no progress bar


def test_convert_ends_with_a_sentence_and_keeps_the_source_format(canonical, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["convert", str(canonical), str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"Converted {re.escape(str(canonical))} \(gptq \(canonical folder\), 13 tensors, 12 quantized\) "
        rf"into the canonical folder {re.escape(str(out))} \([\d.]+ MB\)\.",
        last,
    ), last
    assert "Checkpoint(" not in last
    assert main(["convert", str(canonical), str(out), "--force"]) == 0  # --force replaces it


def test_inspect_labels_canonical_sorts_layers_naturally_in_mb(canonical, capsys):
    assert main(["inspect", str(canonical)]) == 0
    out = capsys.readouterr().out
    assert "format gptq (canonical folder)" in out
    layers = [int(m) for m in re.findall(r"model\.layers\.(\d+)\.mlp", out)]
    assert layers == list(range(12)), layers
    assert re.search(r"\d kB\b", out) and "MiB" not in out and "KiB" not in out
    assert re.search(r"total [\d.]+ kB vs bf16 [\d.]+ kB", out)


def test_end_tokens_include_the_chat_templates_and_generation_config(tmp_path):
    from jquant.convert.tokenizer import end_token_ids

    class Tok:
        eos_token_id = 0
        chat_template = "{{ '<|im_start|>' + m['content'] + '<|im_end|>' }}"

        def get_vocab(self):
            return {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "</s>": 5}

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert end_token_ids(Tok(), tmp_path, (3,)) == [0, 2, 3, 7, 9]  # </s> is not in this template
    assert end_token_ids(Tok(), None) == [0, 2]


def test_parity_verdict_line():
    from jquant.cli.parity import verdict
    from jquant.parity import LogitAgreement

    ok, line = verdict([(LogitAgreement(1e-4, 2e-5, 1.0), True)] * 2, 1e-3, 1.0)
    assert ok and line == (
        "PASS: 2 prompts; max|diff|/std 2.0e-05 <= 1e-03, top-1 agreement 100.0% >= 100.0%, "
        "greedy continuations identical"
    )
    ok, line = verdict([(LogitAgreement(1e-4, 2e-5, 1.0), True), (LogitAgreement(1.0, 0.5, 0.75), False)], 1e-3, 1.0)
    assert not ok and line.startswith("FAIL: prompt 2: max|diff|/std 5.0e-01 > 1e-03; prompt 2: top-1 agreement 75.0%")
    assert "greedy continuations differ" in line and line.endswith(
        "(thresholds: max|diff|/std <= 1e-03, top-1 agreement >= 100.0%, greedy identical)"
    )


def test_sentencepiece_only_tokenizer_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    from jquant.convert import tokenizer as tk

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.model").write_bytes(b"\0")
    monkeypatch.setattr(tk, "_has", lambda m: m != "sentencepiece")
    assert main(["generate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sentencepiece" in err and "pip install 'jquant[hf]'" in err, err


def test_unreadable_tokenizer_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["generate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "cannot build the tokenizer" in err, err


@pytest.fixture(scope="module")
def sentencepiece_dir() -> Path:
    """The tiny HF Llama with only a SentencePiece BPE ``tokenizer.model`` (as Llama-2-era repos ship)."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece (hf extra) is not installed")
    from tests.fixtures.cache import cached_dir
    from tests.models.hf_tiny import hf_dir

    src = hf_dir("llama3")

    def build(folder: Path) -> None:
        for f in ("config.json", "model.safetensors"):
            (folder / f).write_bytes((src / f).read_bytes())
        text = ["the quick brown fox jumps over the lazy dog", "what is the capital of France", "hello world"] * 20
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(text), model_writer=model, vocab_size=64, model_type="bpe", minloglevel=2,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        )  # fmt: skip
        (folder / "tokenizer.model").write_bytes(model.getvalue())

    return cached_dir(f"hf-tiny-llama3-sentencepiece-{spm.__version__}", build)


def test_generate_sentencepiece_only_checkpoint_through_a_canonical_folder(sentencepiece_dir, tmp_path, capsys):
    assert not (sentencepiece_dir / "tokenizer.json").exists()
    out = tmp_path / "canon"
    assert main(["convert", str(sentencepiece_dir), str(out)]) == 0
    assert (out / "tokenizer.model").exists()
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "hello world", "--no-chat", "--max-new-tokens", "3"]) == 0
    cap = capsys.readouterr()
    assert f"[unquantized (canonical folder)] {out}: weights" in cap.err and " MB on device" in cap.err
    assert re.search(r"^[1-3] tokens; first token", cap.err, re.M), cap.err


def test_bench_commands_and_gpu_check(tmp_path, capsys):
    from jquant.cli.bench import command

    py = sys.executable
    cmd, folder = command("decode", None, None, [])
    assert cmd == [py, "-m", "bench.decode_cpu", "--out", str(Path("bench/results/cpu/decode.md"))]
    assert folder == Path("bench/results/cpu")
    cmd, folder = command("decode", "NVIDIA H200", None, ["--tokens", "8"])
    assert cmd == [py, "-m", "bench.decode_e2e", "--out", str(Path("bench/results/nvidia_h200")), "--tokens", "8"]
    cmd, _ = command("qmatmul", "NVIDIA H100 80GB HBM3", str(tmp_path), [])
    assert cmd == [py, "-m", "bench.qmatmul", "--out", str(tmp_path)]
    assert command("torch", None, None, ["--dry"])[0][2] == "bench.torch_qmatmul"
    import jquant.cli.bench as b

    if b.gpu_name() is None:
        assert main(["bench", "qmatmul"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs an NVIDIA GPU" in err and "jquant bench decode" in err


def test_bench_runs_the_module_in_a_child_and_writes_results(tmp_path, capsys, monkeypatch):
    """`jquant bench NAME ARGS`: the module in a child process, ARGS passed on, --out created and reported.

    (tests/cli/test_help_and_packaging.py checks that the bench modules are installed; running one
    takes minutes, so the child is recorded here instead of run.)
    """
    import jquant.cli.bench as b

    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(cmd, env):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(b.subprocess, "run", fake_run)
    monkeypatch.setattr(b, "gpu_name", lambda: None)
    out = tmp_path / "res"
    assert main(["bench", "decode", "--tokens", "8", "--out", str(out)]) == 0
    assert calls == [[sys.executable, "-m", "bench.decode_cpu", "--out", str(out / "decode.md"), "--tokens", "8"]]
    assert out.is_dir() and f"results in {out}/" in capsys.readouterr().err
    assert main(["bench", "torch", "--dry", "--quick"]) == 0  # no GPU: --dry runs on the CPU interpreter
    assert calls[-1][2:] == ["bench.torch_qmatmul", "--out", str(Path("bench/results/cpu")), "--dry", "--quick"]


def test_inspect_kernels_names_each_layer_kinds_backend(canonical, capsys):
    """`inspect --kernels` routes each kind of layer as on an H100/H200, with the reasons at M = 16."""
    assert main(["inspect", str(canonical), "--kernels", "--device", "gpu", "--sm", "90"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "uint4 K=256 block (1, 128)" in line and "12" in line)
    # K = 256 is a multiple of 128: the CUDA kernels' ranges (decode, GEMM, wgmma from M = 40)
    assert re.findall(r"(?:cuda|pallas|xla)_\w+", row) == [
        "cuda_w4a16_decode",
        "cuda_w4a16_decode",
        "cuda_w4a16_wgmma",
        "cuda_w4a16_wgmma",
    ]
    assert "xla_reference" not in out and "M=16 -> cuda_w4a16_decode; before it:" in out
