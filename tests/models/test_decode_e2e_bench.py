"""`bench.decode_e2e` end to end on the tiny preset (CPU): both variants decode, logits finite, files written."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from bench import decode_e2e
from jquant.core.qarray import QArray

TOKENS = 4


def test_random_weights_are_device_arrays_of_the_right_kind():
    cfg = decode_e2e.make_config("tiny", layers=1)
    q = decode_e2e.RandomWeights(cfg, "w4a16")
    d = decode_e2e.RandomWeights(cfg, "bf16")
    assert set(q) == set(d) and len(q) == 2 + 2 + 7 + 1  # embed, head, 2 norms + 7 linears, final norm
    wq = q["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(wq, QArray) and wq.qtype.name == "uint4b8" and wq.block == (1, 128)
    assert wq.shape == (cfg.hidden_size, cfg.intermediate_size) and wq.scale.dtype == jnp.float16
    wd = d["model.layers.0.mlp.down_proj.weight"]
    assert wd.dtype == jnp.bfloat16 and wd.shape == (cfg.hidden_size, cfg.intermediate_size)
    assert q["lm_head.weight"].dtype == jnp.bfloat16  # lm_head stays dense in both variants


def test_make_config_llama3_8b_geometry():
    cfg = decode_e2e.make_config("llama3-8b")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == (128256, 4096, 14336)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 32, 8, 128)
    assert cfg.rope["rope_type"] == "llama3" and not cfg.tie_word_embeddings
    assert decode_e2e.make_config("llama3-8b", layers=2).num_hidden_layers == 2


def test_tiny_end_to_end(tmp_path, capsys):
    assert decode_e2e.main(["--preset", "tiny", "--tokens", str(TOKENS), "--repeats", "1", "--out", str(tmp_path)]) == 0
    md, js = tmp_path / "decode_e2e.md", tmp_path / "decode_e2e.json"
    assert md.is_file() and js.is_file()
    data = json.loads(js.read_text())
    assert {"card", "jax", "commit"} <= data["env"].keys()
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"bf16", "w4a16"}
    for r in rows.values():
        assert r["tokens"] == TOKENS and len(r["generated"]) == TOKENS
        assert r["logits_finite"] and np.isfinite(r["logits_max_abs"])
        assert r["decode_tok_s"] > 0 and r["prefill_ms"] > 0
    assert rows["bf16"]["ratio_vs_bf16"] == pytest.approx(1.0)
    w4 = rows["w4a16"]
    from kernels_cpu.build import compiler_path

    want = "cpu_qmatmul" if compiler_path() else "xla_cpu_chunked"  # the CPU dispatcher's pick for 4-bit g128
    assert w4["backend"] == want
    assert w4["lowered_decode_backends"] == [want]
    assert w4["weight_bytes"] < rows["bf16"]["weight_bytes"]
    text = md.read_text()
    assert "| variant | backend | decode tok/s | ms/token | prefill ms | ratio vs bf16 |" in text
    assert f"| w4a16 | {want} |" in text
    assert "ratio vs bf16" in capsys.readouterr().out.splitlines()[-4]  # the table is printed last


def test_forced_backend_row(tmp_path):
    result = decode_e2e.run("tiny", tokens=2, prompt_len=3, backends=["xla_reference"], repeats=1)
    (w4,) = [r for r in result["rows"] if r["variant"] == "w4a16"]
    assert w4["backend"] == "xla_reference" and w4["lowered_decode_backends"] == ["xla_reference"]
    assert not w4["note"]


def test_fp8_dynamic_weights_carry_their_activation_recipe():
    cfg = decode_e2e.make_config("tiny", layers=1)
    f = decode_e2e.RandomWeights(cfg, "fp8_dynamic")
    assert len(f) == 2 + 2 + 7 + 1 + 7  # as w4a16, plus one input_quant per block linear
    w = f["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(w, QArray) and w.qtype.name == "fp8_e4m3" and w.block == (1, cfg.intermediate_size)
    assert w.shape == (cfg.hidden_size, cfg.intermediate_size) and w.scale.dtype == jnp.float32
    act = f["model.layers.0.mlp.down_proj.input_quant"]
    assert act.qtype.name == "fp8_e4m3" and act.dynamic and act.granularity == "token"
    assert f["lm_head.weight"].dtype == jnp.bfloat16


def test_tiny_end_to_end_fp8_dynamic(tmp_path, capsys):
    argv = ["--preset", "tiny", "--tokens", str(TOKENS), "--repeats", "1", "--variants", "fp8_dynamic"]
    assert decode_e2e.main([*argv, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "decode_e2e.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"bf16", "fp8_dynamic"}  # bf16 always runs: the ratio's baseline
    fp8 = rows["fp8_dynamic"]
    assert fp8["tokens"] == TOKENS and fp8["logits_finite"] and fp8["decode_tok_s"] > 0
    assert fp8["ratio_vs_bf16"] > 0 and fp8["weight_bytes"] < rows["bf16"]["weight_bytes"]
    assert set(fp8["decode_backends"]) == set(decode_e2e.linear_shapes(decode_e2e.make_config("tiny")))
    assert fp8["lowered_decode_backends"] == sorted(set(fp8["decode_backends"].values()))
    assert not fp8["note"]
    assert "ActQuant" not in data["explain_decode"] and "fp8_e4m3" in data["explain_decode"]
    text = (tmp_path / "decode_e2e.md").read_text()
    assert f"| fp8_dynamic | {fp8['backend']} |" in text and "fp8_dynamic vs bf16" in text.splitlines()[0]
    assert "ratio vs bf16" in capsys.readouterr().out.splitlines()[-4]  # the table is printed last
