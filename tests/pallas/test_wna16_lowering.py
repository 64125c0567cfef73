"""Every kernel configuration lowered for CUDA on the CPU host (Pallas -> Triton IR).

Interpret mode accepts what the Triton lowering rejects (non-power-of-two blocks, mixed-dtype
dots, slices of loaded values); lowering with ``lowering_platforms=("cuda",)`` catches those
without a GPU. Covers the heuristic configs for every BENCH.md shape and M, and the bench sweep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bench.qmatmul import sweep_configs
from bench.shapes import GROUPS, M_VALUES, SHAPES
from jquant.pallas import WNA16Layout, decode_config, prefill_config, wna16_matmul
from jquant.pallas.wna16_config import DECODE_MAX_M


def lower(m, lay: WNA16Layout, cfg, dt=jnp.bfloat16, scale_dt=jnp.float16):
    ng = lay.n_groups
    codes_dt = jnp.uint8
    av = [
        jax.ShapeDtypeStruct((m, lay.k), dt),
        jax.ShapeDtypeStruct((lay.n, lay.k * lay.bits // 8), codes_dt),
        jax.ShapeDtypeStruct((lay.n, ng), scale_dt),
    ]
    if lay.has_zero:
        av.append(jax.ShapeDtypeStruct((lay.n, ng), jnp.uint8))
    fn = jax.jit(lambda *a: wna16_matmul(*a, lay=lay, cfg=cfg, name="jquant_wna16_test"))
    text = fn.trace(*av).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text and "jquant_wna16_test" in text


def _cfg(m, n, k, bits):
    pick = decode_config if m <= DECODE_MAX_M else prefill_config
    return pick(m, n, k, bits=bits)


@pytest.mark.parametrize("bits", [4, 8])
def test_heuristic_configs_lower_for_every_bench_shape(bits):
    seen = set()
    for s in SHAPES:
        for m in M_VALUES:
            cfg = _cfg(m, s.n, s.k, bits)
            lay = WNA16Layout(n=s.n, k=s.k, bits=bits, bias=1 << (bits - 1), group=128, has_zero=False)
            key = (cfg, lay.k % cfg.bk == 0)
            if key in seen:  # the lowering depends on the config and on K edges, not on N or M
                continue
            seen.add(key)
            lower(m, lay, cfg)
    assert len(seen) >= 3


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_every_group_zero_dtype_lowers(group, zero, dt):
    n, k = 1000, 4160  # odd-ish N, K not a multiple of 128 or 256
    for bits in (4, 8):
        g = k if group == -1 else group
        lay = WNA16Layout(n=n, k=k, bits=bits, bias=0 if zero else 1 << (bits - 1), group=g, has_zero=zero)
        for m in (1, 16, 129):
            lower(m, lay, _cfg(m, n, k, bits), dt=dt, scale_dt=jnp.bfloat16 if dt == jnp.bfloat16 else jnp.float16)


@pytest.mark.parametrize("m", [1, 16, 128])
def test_bench_sweep_configs_lower(m):
    lay = WNA16Layout(n=8192, k=8192, bits=4, bias=8, group=128, has_zero=False)
    for cfg in sweep_configs(m):
        lower(m, lay, cfg)


def test_f32_scales_and_poison_lower():
    lay = WNA16Layout(n=256, k=512, bits=4, bias=8, group=64, has_zero=False)
    lower(3, lay, decode_config(3, 256, 512, bits=4), scale_dt=jnp.float32)
    av = [
        jax.ShapeDtypeStruct((3, 512), jnp.bfloat16),
        jax.ShapeDtypeStruct((256, 256), jnp.uint8),
        jax.ShapeDtypeStruct((256, 8), jnp.float16),
    ]
    cfg = decode_config(3, 256, 512, bits=4)
    jax.jit(lambda *a: wna16_matmul(*a, lay=lay, cfg=cfg, poison=True)).trace(*av).lower(lowering_platforms=("cuda",))
