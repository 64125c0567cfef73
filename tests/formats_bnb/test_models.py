"""Model level: the bitsandbytes checkpoints through jquant's JAX path and the Torch bridge vs transformers + bitsandbytes.

Legs, on the same random tokens and greedy continuation (`torch_bridge.parity.run_parity`):

* ``bnb_f32`` (reference): transformers loading the folder itself, bitsandbytes' own modules, with
  bitsandbytes' CPU shortcuts off so that it computes in float32: ``Linear4bit``'s AVX512-BF16 path
  (``nn/modules.py Linear4bit.forward`` repacks the weight and runs ``gemv_4bit`` in bf16 on CPUs
  that have AVX512-BF16) is disabled (``support_avx512bf16_for_cpu = False``: ``matmul_4bit`` then
  runs ``dequantize_4bit`` + ``F.linear``), and LLM.int8's threshold is set to 1e-30 so that every
  input column is an "outlier" (``MatMul8bitLt.forward`` -> ``int8_mixed_scaled_mm``: the whole
  product is ``x @ int8_vectorwise_dequant(CB, SCB).T`` in float32, no int8 activations);
* ``producer``: transformers with dense weights = bitsandbytes' own float32 dequantization;
* ``jax``: ``jquant.models.from_checkpoint``; ``torch_bridge``: transformers patched with `QuantLinear`;
* ``bnb``: transformers + bitsandbytes exactly as loaded. Not float32: 4-bit layers run in bf16 on
  AVX512-BF16 CPUs; LLM.int8 quantizes the non-outlier activation columns (|x| < 6) per token to
  int8. Held to a loose bound and reported (max |diff| / std about 0.03 for 4-bit, 0.06 for int8
  on the dev machine).

The float32 legs must agree within 1e-4 (max |diff| / std), on every top-1 and on the greedy tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

import jquant
from tests.fixtures.producers_bnb import bnb_oracle

TOL = 1e-4
LOOSE_TOL, LOOSE_TOP1 = 0.2, 0.9


def _transformers_bnb(folder, f32: bool):
    def leg(ckpt):
        import bitsandbytes as bnb
        import torch
        from transformers import AutoModelForCausalLM

        from torch_bridge.parity import _torch_logits_fn

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu").eval()
        if f32:
            for m in model.modules():
                if isinstance(m, bnb.nn.Linear4bit):
                    m.support_avx512bf16_for_cpu = False
                elif isinstance(m, bnb.nn.Linear8bitLt):
                    m.state.threshold = 1e-30
        return _torch_logits_fn(model)

    return leg


@pytest.mark.parametrize("variant", ["nf4-dq", "fp4", "int8", "nf4-dq-f32storage-bf16"])
def test_model_parity(bnb_root, variant):
    from jquant.cli.parity_torch import jax_leg
    from torch_bridge.parity import run_parity, torch_bridge_leg

    folder = bnb_root / variant
    ckpt = jquant.convert(folder)
    oracle = bnb_oracle(folder)["f32"]
    legs = {"bnb_f32": _transformers_bnb(folder, f32=True)}
    # quantized from bf16: bitsandbytes dequantizes to bf16 before its matmul, jquant keeps float32 weights,
    # so there the reference is transformers over bitsandbytes' float32 dequantization
    bf16 = variant.endswith("bf16")
    if bf16:
        legs = {}
    legs.update(jax=jax_leg, torch_bridge=torch_bridge_leg, bnb=_transformers_bnb(folder, f32=False))
    rep = run_parity(ckpt, legs=legs, oracle=oracle, reference="producer" if bf16 else "bnb_f32", new_tokens=4)
    text = str(rep)
    print(f"\n{text}")
    assert not rep.errors, rep.errors
    assert all(r.bit_exact for r in rep.weights) and len(rep.weights) == 14, text  # vs bitsandbytes' f32 dequant
    bad = []
    for c in rep.comparisons:
        if c.leg == "bnb":
            ok = c.max_over_std < LOOSE_TOL and c.top1 >= LOOSE_TOP1
        else:
            ok = c.max_over_std < TOL and c.top1 == 1.0 and c.greedy_equal
        if not ok:
            bad.append(c)
    assert not bad, text


def test_torch_bridge_patch_model_matches_jax(bnb_root):
    """`torch_bridge.patch_model` on a transformers model built from the config runs the converted NF4 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from jquant.cli.parity_torch import jax_leg
    from torch_bridge import QuantLinear, patch_model

    ckpt = jquant.convert(bnb_root / "nf4-dq")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(bnb_root / "nf4-dq"), dtype=torch.float32)
    patch_model(model, ckpt)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 14
    ids = np.random.default_rng(1).integers(3, 512, (2, 9))
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).logits.numpy()
    ref = jax_leg(ckpt)(ids)
    assert np.abs(got - ref).max() / ref.std() < TOL
