"""The decode kernel's other code kinds on a CPU host: float zeros and codebooks (csrc/decode.cuh).

What runs without a GPU: the codebook lookup's byte-permute algorithm, replayed on the attributes
`codebook_words` builds (a wrong table packing or selector would fail here, for every table and
both 16-bit types); the op lowering for CUDA with the kind, scale type and operand dtypes each
format needs; the backend's declared reach. The numerics on the device: test_decode_kinds_gpu.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.qtypes import bnb_fp4, fp4_e2m1, iq4nl, nf4
from kernels_cuda import build
from kernels_cuda.w4a16 import DecodeConfig, code_kind, codebook_words, w4a16_decode, why_not
from tests.kernels_cuda.decode_cases import WEIGHTS, K

needs_nvcc = pytest.mark.skipif(build.nvcc_path() is None, reason="nvcc not installed on this host")
TABLES = {q.name: q for q in (nf4, bnb_fp4, iq4nl, fp4_e2m1)}  # every 16-entry table


def _prmt(a: int, b: int, sel: int) -> int:
    """PTX ``prmt.b32`` (default mode) on ints: byte n of the result is byte sel[4n+3:4n] of b:a."""
    src = int(a).to_bytes(4, "little") + int(b).to_bytes(4, "little")
    out = 0
    for n in range(4):
        s = (sel >> (4 * n)) & 0xF
        assert s < 8, "a selector nibble with bit 3 set would replicate a sign instead of selecting"
        out |= src[s] << (8 * n)
    return out


def _codebook_pairs(w: int, t: list[int]) -> list[int]:
    """csrc/decode.cuh `codebook_pairs`, step for step."""
    sel, upper = w & 0x77777777, (w >> 1) & 0x44444444
    p = []
    for half in range(2):
        s = (sel >> 16 if half else sel) & 0xFFFF  # prmt reads the selector's low 16 bits
        mix = ((upper >> 16 if half else upper) | 0x3210) & 0xFFFF
        lo = _prmt(_prmt(t[0], t[1], s), _prmt(t[2], t[3], s), mix)
        hi = _prmt(_prmt(t[4], t[5], s), _prmt(t[6], t[7], s), mix)
        p += [_prmt(lo, hi, 0x5140), _prmt(lo, hi, 0x7362)]
    return p


@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_codebook_lookup_by_byte_permutes(name, dt):
    q = TABLES[name]
    words = [v & 0xFFFFFFFFFFFFFFFF for v in codebook_words(q, dt)]
    t = [half for v in words for half in (v & 0xFFFFFFFF, v >> 32)]  # the kernel's Codebook.t[8]
    want = np.asarray(q.codebook, np.float32).astype(dt).view(np.uint16)
    rng = np.random.default_rng(len(name))
    for w in [0, 0xFFFFFFFF, 0x76543210, 0xFEDCBA98, *map(int, rng.integers(0, 2**32, 300))]:
        codes = [(w >> (4 * i)) & 0xF for i in range(8)]
        got = [(p >> (16 * h)) & 0xFFFF for p in _codebook_pairs(w, t) for h in range(2)]
        assert got == [int(want[c]) for c in codes], (hex(w), codes)


@pytest.mark.parametrize("wid", sorted(WEIGHTS))
def test_declared_reach(wid):
    factory, kind = WEIGHTS[wid]
    w = factory()
    assert code_kind(w) == kind
    assert why_not(jnp.zeros((16, w.shape[1]), jnp.bfloat16), w) == ""
    assert "M=17" in why_not(jnp.zeros((17, w.shape[1]), jnp.bfloat16), w)


def test_declines_what_it_cannot_read():
    from tests.pallas.test_wxa16_interpret import gguf, synth

    x = jnp.zeros((1, 2304), jnp.bfloat16)
    assert "uint8" in why_not(x, gguf("Q6_K", 64, 2304))  # 6-bit codes in bytes
    assert "not a multiple of 128" in why_not(jnp.zeros((1, 2080), jnp.bfloat16), gguf("Q4_1", 64, 2080))
    w = synth(64, 2304, qtype="uint4", block=(1, 32), zero="float", scale_dtype="float32")
    w16 = type(w)(**{**w.__dict__, "zero": w.zero.astype(np.float16)})
    assert "float zeros of dtype float16 with float32 scales" in why_not(x, w16)
    assert "groups of 16 or multiples of 32" in why_not(
        jnp.zeros((1, 1536), jnp.bfloat16), synth(64, 1536, qtype="nf4", block=(1, 48), scale_dtype="float32")
    )


@needs_nvcc
@pytest.mark.parametrize("wid", ["Q4_1", "Q4_K", "Q3_K", "IQ4_XS", "MXFP4", "nvfp4-scale2", "nf4-g128-acc"])
def test_lowers_for_cuda(wid):
    factory, kind = WEIGHTS[wid]
    w = factory()
    wd = jax.tree_util.tree_map(jnp.asarray, w)
    k = w.shape[1]
    x = jnp.zeros((3, k), jnp.float16)
    text = jax.jit(lambda x, w: w4a16_decode(x, w, DecodeConfig(k_split=1024))).trace(x, wd)
    text = text.lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_decode" in line)
    sdt = np.dtype(w.scale.dtype).name
    st = {"float32": 0, "float16": 1, "bfloat16": 2, "float8_e4m3fn": 3, "float8_e8m0fnu": 4}[sdt]
    assert f"kind = {kind}" in call and f"scale_type = {st}" in call, call
    assert f"group = {w.block[1]}" in call
    ng = k // w.block[1]
    stype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(sdt, "ui8")  # fp8 scales as bytes
    assert f"tensor<{w.shape[0]}x{ng}x{stype}>" in call, call
    if kind == 2:  # the table travels in the attributes, rounded to the activation dtype
        cb = codebook_words(w.qtype, jnp.float16)
        assert all(f"cb{i} = {v}" in call for i, v in enumerate(cb)), call
    assert ("multiply" in text.split("custom_call @jquant_w4a16_decode")[1]) == (w.scale2 is not None)


@needs_nvcc
@pytest.mark.parametrize("wid", ["Q4_K", "nf4-g64", "nvfp4-scale2", "MXFP4"])
def test_wgmma_lowers_for_cuda(wid):
    """The prefill (wgmma) kernel takes the same kinds: attributes, fp8 scales as bytes, the
    codebook's natural fragment order of x, f32 sums when scale2 follows."""
    from kernels_cuda.w4a16_gemm import fragment_order
    from kernels_cuda.w4a16_wgmma import WgmmaConfig, w4a16_wgmma

    factory, kind = WEIGHTS[wid]
    w = factory()
    wd = jax.tree_util.tree_map(jnp.asarray, w)
    k = w.shape[1]
    x = jnp.zeros((200, k), jnp.bfloat16)
    cfg = WgmmaConfig(bm=128, k_split=k)  # one split: x's dtype out unless scale2
    low = jax.jit(lambda x, w: w4a16_wgmma(x, w, cfg)).trace(x, wd).lower(lowering_platforms=("cuda",))
    text = low.as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_wgmma" in line)
    assert f"kind = {kind}" in call and "variant = 1" in call, call
    out = "f32" if w.scale2 is not None else "bf16"
    assert f"-> tensor<1x200x{w.shape[0]}x{out}>" in call, call
    if np.dtype(w.scale.dtype).itemsize == 1:
        assert f"tensor<{w.shape[0]}x{k // w.block[1]}xui8>" in call
    # the gather of x uses the kind's fragment order (a constant of the program)
    assert not np.array_equal(fragment_order(256, True), fragment_order(256, False))


def test_wgmma_declines_what_it_does_not_build():
    from kernels_cuda.w4a16_wgmma import why_not as wgmma_why_not

    assert "NVFP4 (e4m3 scales) only" in wgmma_why_not(jnp.zeros((64, K), jnp.bfloat16), WEIGHTS["uint4b8-g16"][0]())
    assert wgmma_why_not(jnp.zeros((64, K), jnp.bfloat16), WEIGHTS["nvfp4-scale2"][0]()) == ""
