"""`QuantLinear`, the ``jquant::qmatmul`` custom op (fake kernel, torch.compile), and the no-JAX rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torch_bridge as tb
from jquant.core import dequantize
from jquant.core import qtypes as qt
from tests.torch_bridge.cases import Case, make_weight

ROOT = Path(__file__).resolve().parents[2]


def _case(q=qt.uint4, n=64, k=256, block=(1, 64), **kw):
    return Case("lin", q, n, k, block, 1, "float32", **kw)


@pytest.mark.parametrize(
    "case",
    [_case(zero="int"), _case(qt.int8, block=(1, 256)), _case(qt.fp8_e4m3, block=(128, 128))],
    ids=["int4pack", "int8pack", "dequant"],
)
def test_quant_linear_matches_dense(case):
    w = make_weight(case)
    bias = torch.randn(case.n)
    lin = tb.QuantLinear(w, bias)
    x = torch.randn(2, 2, case.k)  # 4 rows: the CPU int4 kernel's decode range
    ref = torch.nn.functional.linear(x.double(), torch.from_numpy(dequantize(w)).double(), bias.double())
    y = lin(x)
    assert y.shape == (2, 2, case.n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    # the layer's plan: jquant's C++ kernel for decode sizes, then torch's int8 pack kernel / the reference
    assert lin.backend in (
        "torch_cpu_qmatmul, torch_dequant_matmul",
        "torch_cpu_qmatmul, torch_cpu_int8pack",
        "torch_dequant_matmul",
    )
    assert "qtype=" in repr(lin)


def test_dtype_casts_never_touch_the_checkpoint():
    w = make_weight(_case(qt.fp8_e4m3, block=(128, 128)))
    lin = tb.QuantLinear(w, torch.randn(64))
    before = {k: v.clone() for k, v in lin.state_dict().items() if k.startswith("weight_")}
    lin.to(torch.bfloat16)  # what model.to(bfloat16) does to every submodule
    assert lin.weight_data.dtype == torch.float8_e4m3fn and lin.weight_scale.dtype == torch.float32
    for k, v in before.items():
        assert torch.equal(getattr(lin, k).view(torch.uint8), v.view(torch.uint8)), k
    assert lin.bias.dtype == torch.bfloat16
    y = lin(torch.randn(4, 256, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_prepared_per_dtype():
    lin = tb.QuantLinear(make_weight(_case(zero="int")))
    lin(torch.randn(1, 256))
    lin(torch.randn(1, 256, dtype=torch.bfloat16))
    assert len(lin._prepared) == 2


def test_custom_op_opcheck():
    w = tb.to_torch(make_weight(_case(zero="int", perm=True)))
    for impl in ("torch_cpu_int4pack", "torch_dequant_matmul"):
        from torch_bridge.ops import prepare

        spec, tensors = prepare(w, "cpu", torch.float32, implementation=impl)
        torch.library.opcheck(torch.ops.jquant.qmatmul.default, (torch.randn(3, 256), tensors, spec))


def test_torch_compile_fullgraph():
    w = make_weight(_case(zero="int"))
    lin = tb.QuantLinear(w, torch.randn(64))
    x = torch.randn(5, 256)
    eager = lin(x)  # prepares the backend tensors outside of tracing
    compiled = torch.compile(lin, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), eager)
    torch._dynamo.reset()


def test_torch_bridge_never_imports_jax():
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "import numpy as np, torch, torch_bridge as tb\n"
        "from tests.torch_bridge.cases import Case, make_weight\n"
        "from jquant.core import qtypes as qt\n"
        "w = make_weight(Case('x', qt.uint4b8, 32, 128, (1, 32), 2, 'float32'))\n"
        "lin = tb.QuantLinear(w); y = lin(torch.randn(2, 128))\n"
        "m = torch.nn.Sequential(torch.nn.Linear(128, 32)); tb.patch_model(m, {'0.weight': w})\n"
        "assert m(torch.randn(1, 128)).shape == (1, 32)\n"
        "assert sys.modules.get('jax') is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
    for p in (ROOT / "torch_bridge").rglob("*.py"):
        for line in p.read_text().splitlines():
            assert not line.strip().startswith(("import jax", "from jax")), f"{p}: {line}"


def test_patch_model_errors_name_the_tensor():
    from jquant import ConfigError

    w = make_weight(Case("x", qt.uint4b8, 32, 128, (1, 32), 2, "float32"))
    m = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with pytest.raises(ConfigError, match=r"'0.weight'.*\(32, 128\)"):
        tb.patch_model(m, {"0.weight": w})
    m = torch.nn.Sequential(torch.nn.Linear(128, 32))
    with pytest.raises(ConfigError, match="'1.weight'"):
        tb.patch_model(m, {"1.weight": w})
    rep = tb.patch_model(m, {"0.weight": w, "0.bias": np.ones(32, np.float32)})
    assert rep["quantized"] == ["0.weight"] and rep["dense"] == ["0.bias"]
    assert isinstance(m[0], tb.QuantLinear) and torch.equal(m[0].bias, torch.ones(32))


def test_bias_follows_the_weight_device():
    w = make_weight(_case(zero="int"))
    lin = tb.QuantLinear(w, torch.randn(64), device="meta")
    assert lin.bias.device.type == "meta" and lin.weight_data.device.type == "meta"


def test_the_op_routes_each_call_by_m(monkeypatch):
    """One prepared layer, two backends by M range: the op picks per call, eager and compiled (dynamic M)."""
    import dataclasses

    from torch_bridge.backend import REGISTRY
    from torch_bridge.cpu import DequantMatmul

    calls = []

    class SmallM(DequantMatmul):  # the reference's twin for M <= 4 (same prepare: shared tensors)
        name = "torch_test_small_m"
        caps = dataclasses.replace(DequantMatmul.caps, m_max=4)

        def run(self, x, tensors, spec):
            calls.append(x.shape[0])
            return super().run(x, tensors, spec)

    monkeypatch.setitem(REGISTRY.backends, SmallM.name, SmallM())
    monkeypatch.setitem(REGISTRY.tables, "cpu", (SmallM.name, DequantMatmul.name))
    w = make_weight(_case(zero="int"))
    lin = tb.QuantLinear(w)
    assert lin.prepare("cpu", torch.float32) == "torch_test_small_m, torch_dequant_matmul"
    assert len(lin._prepared[torch.device("cpu"), torch.float32][1]) == 3  # data, scale, zero: one set for both
    dense = torch.from_numpy(dequantize(w))
    compiled = torch.compile(lin, fullgraph=True, backend="aot_eager", dynamic=True)
    for run in (lin, compiled):
        for m in (1, 4, 5, 37):
            x = torch.randn(m, 256)
            torch.testing.assert_close(run(x), x @ dense.T, rtol=1e-5, atol=1e-4)
    assert calls == [1, 4, 1, 4]
    torch._dynamo.reset()
