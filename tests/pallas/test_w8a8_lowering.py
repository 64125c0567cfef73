"""The W8A8 kernel lowered for CUDA on the CPU host (Pallas -> Triton IR), for every heuristic config.

Interpret mode accepts what the Triton lowering rejects (masked float8 loads with an integer fill,
unsigned dot operands, non-power-of-two blocks); ``lowering_platforms=("cuda",)`` catches those
without a GPU. Covers the configs `config_for` picks for every BENCH.md shape and M, for fp8 and
int8 / uint8b128 codes and every scale geometry the converters produce.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bench.shapes import M_VALUES, SHAPES
from jquant.pallas.w8a8 import config_for
from jquant.pallas.w8a8_triton import W8A8Config, W8A8Layout, w8a8_matmul

# (codes, activation K block, weight scale block) as (a_bk, w_bn, w_bk); None = the full extent.
GEOMETRIES = {
    "fp8-tensor": ("fp8", None, None, None),
    "fp8-channel": ("fp8", None, 1, None),
    "fp8-block128-group128": ("fp8", 128, 128, 128),
    "fp8-block128-token": ("fp8", None, 128, 128),
    "int8-channel": ("int8", None, 1, None),
    "int8-group128": ("int8", None, 1, 128),
    "uint8b128-channel": ("uint8b128", None, 1, None),
}


def _layout(geo: str, n: int, k: int) -> W8A8Layout:
    codes, a_bk, w_bn, w_bk = GEOMETRIES[geo]
    return W8A8Layout(n=n, k=k, codes=codes, a_bk=a_bk or k, w_bn=w_bn or n, w_bk=w_bk or k)


def lower(m: int, lay: W8A8Layout, cfg: W8A8Config, *, out_dtype=jnp.bfloat16, poison=False) -> str:
    code_dt = {"fp8": jnp.float8_e4m3fn, "int8": jnp.int8, "uint8b128": jnp.uint8}[lay.codes]
    av = [
        jax.ShapeDtypeStruct((m, lay.k), jnp.int8 if lay.is_int else jnp.float8_e4m3fn),
        jax.ShapeDtypeStruct((m, lay.a_units), jnp.float32),
        jax.ShapeDtypeStruct((lay.n, lay.k), code_dt),
        jax.ShapeDtypeStruct(lay.w_scale_shape, jnp.float32),
    ]
    fn = jax.jit(
        lambda *a: w8a8_matmul(*a, lay=lay, cfg=cfg, out_dtype=out_dtype, name="jquant_w8a8_test", poison=poison)
    )
    text = fn.trace(*av).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and "jquant_w8a8_test" in text
    return text


@pytest.mark.parametrize("geo", sorted(GEOMETRIES))
def test_heuristic_configs_lower_for_every_bench_shape(geo):
    seen = set()
    for s in SHAPES:
        for m in M_VALUES:
            lay = _layout(geo, s.n, s.k)
            cfg = config_for(m, lay, num_sms=132)
            # The lowering depends on the config, the layout kind and K's edges, not on N or M.
            key = (cfg, lay.k % cfg.bk == 0, lay.k % lay.kblk == 0)
            if key in seen:
                continue
            seen.add(key)
            lower(m, lay, cfg)
    assert len({c for c, *_ in seen}) >= 3  # decode (split and not), prefill 64 and 128 tiles


@pytest.mark.parametrize("geo", ["fp8-block128-group128", "int8-channel", "uint8b128-channel", "fp8-tensor"])
def test_edges_f16_poison_and_split_lower(geo):
    """Odd N, K off the tiles (partial last block), f16 output, poisoned output, split-K partials."""
    n, k = 1000, 4224  # K = 33 blocks of 128: a partial 256-column decode step
    lay = _layout(geo, n, k)
    for m in (1, 16, 129, 1024):
        lower(m, lay, config_for(m, lay, num_sms=132), out_dtype=jnp.float16, poison=True)
    lower(3, lay, W8A8Config(bm=16, bn=32, bk=64, split_k=5))


@pytest.mark.parametrize("acc", [0, 128, 2**30])
def test_fp8_dots_carry_the_configured_promotion_interval(acc):
    """Pallas builds ``tt.dot`` without ``maxNumImpreciseAcc``; the W8A8 kernel's fp8 dots get the
    config's value (`jquant.pallas.fp8_accumulation`), int8 dots and other kernels nothing."""
    from jquant.pallas import fp8_accumulation

    lay = _layout("fp8-block128-group128", 256, 512)
    before = fp8_accumulation.applied(f"jquant_w8a8_test_acc{acc}")
    lower(128, lay, W8A8Config(bm=64, bn=64, bk=64, imprecise_acc=acc))
    assert fp8_accumulation.applied(f"jquant_w8a8_test_acc{acc}") > before
    lower(128, _layout("int8-channel", 256, 512), W8A8Config(bm=64, bn=64, bk=64))
    assert not any(k.startswith("jquant_w8a8_test") and "int8" in k for k in fp8_accumulation._APPLIED)
    with pytest.raises(ValueError, match="imprecise_acc"):
        W8A8Config(imprecise_acc=-1)
