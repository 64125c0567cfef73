"""`jquant.quantize` on whole checkpoints: what is selected, errors, validate / save / convert round
trips, the CLI, fp6 (no CPU producer: its definition), streaming into `models.from_checkpoint`,
and the numpy-only import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import jquant
from jquant.core.errors import FormatError, UnsupportedFormatError
from jquant.quantize import SCHEMES, QuantizedWeights, dequantized, quantize, quantize_weight, scheme_names
from jquant.quantize.microfloat import FP6_E3M2_VALUES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def src_dir() -> Path:
    from tests.fixtures.producers_gptq_awq import tiny_llama_source

    return tiny_llama_source()


@pytest.fixture(scope="module")
def src(src_dir):
    return jquant.convert(src_dir)


def test_registry_lists_every_scheme_of_the_issue():
    want = {"fp8", "fp8-channel", "fp8-block", "int8", "w8a16", "w4a16-g128", "w4a16-g128-asym", "nf4", "mxfp4", "fp6"}
    assert want <= set(scheme_names())
    with pytest.raises(UnsupportedFormatError, match="unknown quantization scheme 'int3'.*fp8-block"):
        quantize_weight("w", np.zeros((4, 8), np.float32), "int3")


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_validates_and_round_trips_through_save(scheme, src, tmp_path):
    q = quantize(src, scheme)
    linears = [n for n in src.weights if n.endswith("_proj.weight")]
    assert sorted(q.quantized()) == sorted(linears)
    for n in linears:
        w = q.weights[n].validate(n)
        ref = np.asarray(src.weights[n], np.float32)
        err = np.abs(jquant.dequantize(w) - ref).max() / np.abs(ref).max()
        assert err < {"mxfp4": 0.35, "mxfp4-a16": 0.35, "nf4": 0.2, "w4a16-g128": 0.1, "w4a16-g128-asym": 0.1}.get(
            scheme, 0.07
        ), (n, err)
        act = q.weights.get(n[: -len("weight")] + "input_quant")
        assert (act is None) == (SCHEMES[scheme].activation is None)
    assert q.format == "jquant-quantize" and q.metadata["quantize"]["scheme"] == scheme
    assert q.metadata["source_format"] == "unquantized"
    back = jquant.load(jquant.save(q, tmp_path / "out"))
    assert set(back.weights) == set(q.weights)
    for n, w in q.quantized().items():
        np.testing.assert_array_equal(jquant.dequantize(back.weights[n]), jquant.dequantize(w))
        assert back.weights[n].qtype == w.qtype
    assert (tmp_path / "out" / "tokenizer.json").exists()  # copied from the source folder


def test_selection_and_ignore(src):
    q = quantize(src, "w8a16", ignore=["re:.*mlp\\.down_proj$", "model.layers.1.self_attn"])
    quantized = set(q.quantized())
    assert "model.layers.0.mlp.down_proj.weight" not in quantized
    assert not any(n.startswith("model.layers.1.self_attn.") for n in quantized)
    assert "model.layers.1.mlp.up_proj.weight" in quantized
    assert "lm_head.weight" not in quantized and "model.embed_tokens.weight" not in quantized
    assert q.weights["model.norm.weight"] is src.weights["model.norm.weight"]
    q2 = quantize(src, "fp8-channel", include_lm_head=True, include_embeddings=True)
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(q2.quantized())
    assert "lm_head.input_quant" in q2.weights and "model.embed_tokens.input_quant" not in q2.weights


def test_refusals_name_the_tensor(src):
    q = quantize(src, "int8")
    with pytest.raises(FormatError, match="model.layers.0.mlp.down_proj.weight.*already quantized"):
        quantize(q, "fp8")
    with pytest.raises(FormatError, match="'w'.*K=7 is odd"):
        quantize_weight("w", np.ones((4, 7), np.float32), "w4a16-g128")
    with pytest.raises(FormatError, match="'w'.*not a multiple of the NF4 block size 64"):
        quantize_weight("w", np.ones((4, 96), np.float32), "nf4")
    with pytest.raises(FormatError, match="'w'.*int32 is not a float weight"):
        quantize_weight("w", np.ones((4, 8), np.int32), "fp8")
    with pytest.raises(FormatError, match="'w'.*2-D"):
        quantize_weight("w", np.ones((2, 4, 8), np.float32), "fp8")
    with pytest.raises(FormatError, match="not a valid regular expression"):
        quantize(src, "fp8", ignore=["re:("])
    with pytest.raises(FormatError, match="found no linear weight"):
        quantize(src, "fp8", ignore=["re:.*"])


def test_partial_last_group_and_block():
    w = np.random.default_rng(0).normal(0, 0.02, (200, 576)).astype(ml_dtypes.bfloat16)
    for scheme, block, scale_shape in (("w4a16-g128", (1, 128), (200, 5)), ("fp8-block", (128, 128), (2, 5))):
        q = quantize_weight("w", w, scheme)
        assert q.block == block and q.scale.shape == scale_shape
        # the last (partial) group / block's scale is its own amax over its 64 columns
        tail = np.abs(w[: block[0], 512:]).max(axis=1 if block[0] == 1 else None)
        want = (tail / ml_dtypes.bfloat16(7.5 if scheme.startswith("w4") else 448)).astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(q.scale[: len(np.atleast_1d(want)), -1], np.atleast_1d(want))


def test_fp6_follows_its_definition():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (64, 320)).astype(np.float32)
    w[0, :128] = 0
    q = quantize_weight("w", w, "fp6")
    assert q.qtype.name == "fp6_e3m2" and q.qtype.container_bits == 8 and q.block == (1, 128)
    assert max(FP6_E3M2_VALUES) == 28.0 and len(set(FP6_E3M2_VALUES)) == 63  # +0 / -0
    amax = np.abs(np.pad(w, ((0, 0), (0, 64))).reshape(64, 3, 128)).max(-1)
    np.testing.assert_array_equal(q.scale, np.where(amax == 0, 1, amax / np.float32(28)).astype(np.float32))
    s = np.repeat(q.scale, 128, axis=1)[:, :320]
    want = (w / s).astype(ml_dtypes.float6_e3m2fn).astype(np.float32) * s
    np.testing.assert_array_equal(jquant.dequantize(q), want)
    # the largest magnitude of every non-zero group is coded exactly as +-28
    v = np.abs(np.asarray(FP6_E3M2_VALUES, np.float32)[q.data])
    assert (np.pad(v, ((0, 0), (0, 64))).reshape(64, 3, 128).max(-1)[1:] == 28).all()


def test_cli_convert_quantize(src_dir, tmp_path, capsys):
    from jquant.cli import main

    out = tmp_path / "q"
    assert main(["convert", str(src_dir), str(out), "--quantize", "w4a16-g128-asym", "--ignore", "down_proj"]) == 0
    text = capsys.readouterr().out
    assert "unquantized quantized online with w4a16-g128-asym" in text and "12 quantized" in text
    ckpt = jquant.convert(out)
    ref = quantize(jquant.convert(src_dir), "w4a16-g128-asym", ignore=["down_proj"])
    assert set(ckpt.quantized()) == set(ref.quantized())
    for n, w in ref.quantized().items():
        np.testing.assert_array_equal(jquant.dequantize(ckpt.weights[n]), jquant.dequantize(w))
    assert main(["convert", str(src_dir), str(tmp_path / "x"), "--ignore", "down_proj"]) == 2
    assert "go with --quantize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(src_dir), str(tmp_path / "y"), "--quantize", "int3"])


def test_from_checkpoint_streams_one_weight_at_a_time(src, monkeypatch):
    import jax.numpy as jnp

    from jquant.models import from_checkpoint
    from jquant.quantize import checkpoint as qc

    calls = []
    real = qc.quantize_weight
    monkeypatch.setattr(qc, "quantize_weight", lambda n, w, s: calls.append(n) or real(n, w, s))
    ids = jnp.asarray([[1, 5, 9, 200, 33]], dtype=jnp.int32)
    for scheme in ("w4a16-g128", "fp6"):
        calls.clear()
        streamed = from_checkpoint(src, quantize=scheme, dtype=jnp.float32)
        linears = [n for n in src.weights if n.endswith("_proj.weight")]
        assert sorted(set(calls)) == sorted(linears) and len(calls) <= 2 * len(linears)
        eager = from_checkpoint(quantize(src, scheme), dtype=jnp.float32)
        np.testing.assert_array_equal(np.asarray(streamed(ids)), np.asarray(eager(ids)))
        dense = from_checkpoint(dequantized(quantize(src, scheme), np.float32), dtype=jnp.float32)
        a, b = np.asarray(streamed(ids)), np.asarray(dense(ids))
        assert np.abs(a - b).max() / b.std() < 1e-4, scheme
    w = QuantizedWeights(src.weights, "int8")
    assert "model.layers.0.mlp.up_proj.input_quant" in w and len(w) == len(src.weights) + 14


def test_quantize_imports_numpy_only():
    code = (
        "import sys\n"
        "sys.modules['jax'] = None; sys.modules['torch'] = None\n"
        "import jquant, jquant.quantize\n"
        "from jquant.quantize import quantize_weight\n"
        "import numpy as np\n"
        "quantize_weight('w', np.ones((4, 64), np.float32), 'nf4').validate()\n"
        "assert sys.modules.get('jax') is None and sys.modules.get('torch') is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
