"""`bench.qmatmul_w8a8` on CPU: case construction, every column's correctness check, the report.

No timing: the GPU timers are replaced by stand-ins that run the timed callables once (so the
weight / x rotation and the torch closures are exercised) and return fixed times.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import qmatmul_w8a8 as w8a8
from bench.timing import REL_ERR_OK
from jquant.core.qarray import QArray

SHAPE = "1024x256"  # K x N: 8 K-blocks of 128, 2 N-blocks


@pytest.mark.parametrize("scheme", w8a8.SCHEMES, ids=lambda s: s.name)
def test_weights_and_recipes(scheme):
    sh = w8a8.parse_shape(SHAPE)
    w = w8a8.make_weight(jax.random.key(0), sh.n, sh.k, scheme)
    assert isinstance(w, QArray) and w.shape == (sh.n, sh.k) and w.scale.dtype == jnp.float32
    assert w.qtype.name == ("int8" if scheme.wtype == "int8" else "fp8_e4m3")
    assert w.block == {"channel": (1, sh.k), "tensor": (sh.n, sh.k), "block": (128, 128)}[scheme.wgran]
    assert not bool(jnp.any(w.data.astype(jnp.float32) == 0))  # never zero codes
    x = jax.random.normal(jax.random.key(1), (3, sh.k), jnp.float32).astype(jnp.bfloat16)
    act = w8a8.make_act(scheme, x)
    if scheme.act is None:
        assert act is None
        return
    assert act.qtype.name == w.qtype.name
    assert act.dynamic == (scheme.act != "tensor_static")
    assert act.granularity == {"token": "token", "group": "group", "tensor_static": "tensor"}[scheme.act]
    if not act.dynamic:  # calibrated: the largest |x| maps to the largest fp8 code
        assert float(act.scale[0]) == pytest.approx(float(jnp.abs(x.astype(jnp.float32)).max()) / 448.0)


@pytest.mark.parametrize("scheme", [s for s in w8a8.SCHEMES if s.act], ids=lambda s: s.name)
def test_torch_and_xla_quantizers_match_the_spec(scheme):
    """codes x scales of both peers' quantizers == `fake_quantize` (up to one code at a rounding tie)."""
    import torch

    from jquant.ops.act_quant import fake_quantize

    x = jax.random.normal(jax.random.key(2), (5, 1024), jnp.float32).astype(jnp.bfloat16)
    act = w8a8.make_act(scheme, x)
    want = np.asarray(fake_quantize(x.astype(jnp.float32), act))
    static = None if act.dynamic else torch.from_dlpack(act.scale).view(())
    for q, s in (w8a8.xla_quantize(x, act), w8a8.torch_quantize(torch.from_dlpack(x), act, static)):
        q, s = np.asarray(q.astype(jnp.float32)) if hasattr(q, "astype") else q.float().numpy(), np.asarray(s)
        if act.granularity == "group":
            got = (q.reshape(5, -1, 128) * s[..., None]).reshape(5, -1)
        else:
            got = q * s
        close = np.isclose(got, want, rtol=1e-6, atol=0)
        assert close.mean() > 0.995, f"{(~close).sum()} of {close.size} values differ"


def _fake_timers(monkeypatch):
    """Stand-ins for the CUPTI / do_bench timers: run the callable once, return a fixed time."""
    calls = {"jax": 0, "torch": 0}

    def jax_time_us(fn, x, copies, *, iterations=20):
        jax.block_until_ready(jax.jit(lambda x, ws: [fn(x, w) for w in ws])(x, copies))
        calls["jax"] += 1
        return 10.0

    def torch_time_us(fn, **kw):
        fn()
        calls["torch"] += 1
        return 20.0

    monkeypatch.setattr(w8a8, "jax_time_us", jax_time_us)
    monkeypatch.setattr(w8a8, "torch_time_us", torch_time_us)
    return calls


def test_every_column_passes_its_check_on_cpu(monkeypatch):
    """One tiny shape, decode and prefill M: each column matches the spec before it would be timed."""
    calls = _fake_timers(monkeypatch)
    sh = w8a8.parse_shape(SHAPE)
    for m in (1, 20):  # M = 20 > 16: the check runs on sampled rows
        results = w8a8.run_group(sh, m, w8a8.SCHEMES, w8a8.METHODS, iters=1)
        assert [r["scheme"] for r in results] == [s.name for s in w8a8.SCHEMES]
        for r in results:
            scheme = w8a8.SCHEMES_BY_NAME[r["scheme"]]
            assert r["case"] == f"{SHAPE} M={m}" and r["copies"] >= 2
            for col in scheme.cols:
                if col == "torch_scaled_mm" and scheme.wgran == "block" and r[col] == "n/a":
                    assert "block-wise" in r["torch_scaled_mm_note"]  # CPU torch: no block-wise scaled_mm
                    continue
                if col == "scaled_mm_gemm" and r.get("torch_scaled_mm") == "n/a":
                    continue
                assert r[col] in (10.0, 20.0), (r["scheme"], col, r[col], r.get(f"{col}_err"))
                # spec-exact quantizers: bf16 output rounding only; XLA's own x * (1/s) may flip a tie
                limit = REL_ERR_OK if col == scheme.xla_col else 4e-3
                assert r[f"{col}_err"] <= limit, (r["scheme"], col, r[f"{col}_err"])
            assert r["jquant_backend"] and r["jquant_explain"].startswith("qmatmul")
            q = w8a8.ratios(r)
            assert q["x_bf16"] == pytest.approx(1.0)  # xla_bf16 10 us is the faster bf16
            if isinstance(r.get(scheme.peer), float):
                assert q["x_peer"] == pytest.approx(2.0)
    assert calls["jax"] > 0 and calls["torch"] > 0


def test_wrong_column_is_reported_and_not_timed(monkeypatch):
    calls = _fake_timers(monkeypatch)
    monkeypatch.setattr(w8a8, "xla_q8_matmul", lambda x, w, act: jnp.zeros((x.shape[0], w.shape[0]), x.dtype))
    (r,) = w8a8.run_group(w8a8.parse_shape(SHAPE), 1, [w8a8.SCHEMES_BY_NAME["fp8_pc"]], ["xla"], iters=1)
    assert r["xla_fp8_dot"] == "WRONG" and r["xla_fp8_dot_err"] == pytest.approx(1.0)
    assert calls["jax"] == 0


def test_check_only_main_writes_the_report(tmp_path, capsys):
    argv = ["--check-only", "--shapes", SHAPE, "--ms", "1", "--schemes", "fp8_pc,int8_pc", "--out", str(tmp_path)]
    assert w8a8.main(argv) == 0
    md = (tmp_path / "qmatmul_w8a8.md").read_text()
    assert "## fp8_pc:" in md and "## int8_pc:" in md and "## Targets (BENCH.md)" in md
    data = json.loads((tmp_path / "qmatmul_w8a8.json").read_text())
    assert {"card", "jax", "torch", "commit"} <= data["env"].keys()
    assert all(t["status"] == "not measured" for t in data["targets"])  # nothing was timed
    for r in data["results"]:
        assert math.isnan(r["jquant"]) and r["jquant_err"] <= REL_ERR_OK
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("int8_pc") and "1024x256 M=1" in out[-1]  # the short table is printed last


def test_targets_marking():
    def row(scheme, m, **cols):
        return {"scheme": scheme, "shape": "70b_o", "case": f"70b_o M={m}", "m": m, **cols}

    results = [
        row("fp8_pc", 1, jquant=10.0, torch_bf16=20.0, xla_bf16=19.0),  # 1.9x bf16: met
        row("fp8_pc", 4096, jquant=100.0, torch_scaled_mm=96.0, xla_fp8_dot=150.0),  # 0.96x: met
        row("fp8_b128", 4096, jquant=120.0, torch_scaled_mm="n/a", xla_fp8_dot=110.0),  # 1.2x pc: not met
        row("int8_pc", 16, jquant=10.0, torch_bf16=17.0, xla_bf16=30.0),  # 1.7x: not met
    ]
    peer, bf16, block, xla8 = w8a8.targets(results)
    assert peer["status"] == "met" and peer["worst"] == {"row": "fp8_pc 70b_o M=4096", "value": 0.96}
    assert bf16["status"] == "not met" and bf16["worst"] == {"row": "int8_pc 70b_o M=16", "value": 1.7}
    assert [r["ok"] for r in bf16["rows"]] == [True, False]
    assert block["status"] == "not met" and block["worst"]["value"] == pytest.approx(1.2)
    assert xla8["status"] == "not met" and xla8["worst"]["row"] == "fp8_b128 70b_o M=4096"
    assert w8a8.targets([])[0]["status"] == "not measured"
