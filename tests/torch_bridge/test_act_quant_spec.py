"""The torch activation quantizer (`torch_bridge.act_quant`) against the numpy spec, bit for bit.

One spec (`jquant.core.activation.fake_quantize`); the jnp twin is checked in
tests/ops/test_act_quant.py, this is the torch one: every recipe the Triton / vendor W8A8 kernels
run natively, on random activations with all-zero rows, ties and extreme magnitudes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jquant.core.activation import fake_quantize, fp8_act, int8_act
from torch_bridge import act_quant as aq

RECIPES = {
    "int8:0": int8_act(dynamic=True),
    "fp8:0": fp8_act(dynamic=True),
    "fp8:128": fp8_act(dynamic=True, granularity="group", group_size=128),
}


def _x(rng, dtype) -> np.ndarray:
    x = rng.standard_normal((33, 512)).astype(np.float32) * np.exp(rng.uniform(-8, 8, (33, 1)))
    x[3] = 0.0  # an all-zero token: codes 0, no 0 / 0
    x[5, :128] = 0.0  # an all-zero group
    x[7] = np.round(x[7] * 4) / 4  # many exact ties after scaling
    return torch.from_numpy(x).to(dtype).float().numpy()  # values representable in the model dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("desc", sorted(RECIPES))
def test_torch_fake_quant_is_the_numpy_spec(desc, dtype):
    x = _x(np.random.default_rng(len(desc)), dtype)
    assert aq.resolve(RECIPES[desc], x.shape[1], x.shape[1]) == desc  # the native descriptor of the recipe
    got = aq.fake_quant(torch.from_numpy(x).to(dtype), desc).numpy()
    want = fake_quantize(x, RECIPES[desc])
    # equal values; the sign of zero may differ (int8 codes have no -0: round(-0.3) is -0.0 in the spec)
    np.testing.assert_array_equal(got, want)
    assert not np.any((got != 0) & (np.signbit(got) != np.signbit(want)))
