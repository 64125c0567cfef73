"""The CUDA kernels on a CPU host: they compile for sm_80/sm_90 with no spills, the SASS holds the
instructions the design relies on, the FFI targets register, the op lowers for CUDA with the right
custom call, and the backend's static checks and launch heuristic hold. Needs nvcc (skipped, with
the reason, where there is none); the numerics run in test_w4a16_gpu.py on the device.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.shapes import SHAPES
from kernels_cuda import build
from kernels_cuda.w4a16 import (
    MAX_SPLIT_BYTES,
    STEP_K,
    DecodeConfig,
    decode_config,
    smem_bytes,
    tile_codes,
    untile_codes,
    w4a16_decode,
    why_not,
)
from kernels_cuda.w4a16_gemm import TILES, GemmConfig, w4a16_gemm
from kernels_cuda.w4a16_wgmma import STAGES as WGMMA_STAGES
from kernels_cuda.w4a16_wgmma import WgmmaConfig, w4a16_wgmma, wgmma_config
from tests.pallas.helpers import make_weight

needs_nvcc = pytest.mark.skipif(build.nvcc_path() is None, reason="nvcc not installed on this host")


def _cuobjdump() -> str | None:
    try:
        import triton

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(p) if p.is_file() else None
    except ImportError:
        return None


@pytest.fixture(scope="module")
def sm90_cubins(tmp_path_factory):
    """{source stem: (cubin path, ptxas -v log)} for sm_90 (sm_90a where the source is built for it
    alone), one cubin per translation unit."""
    out = {}
    for src in build.sources():
        cubin = tmp_path_factory.mktemp("cubin") / f"{src.stem}.cubin"
        arch = "90a" if any("sm_90a" in f for f in build.source_arch_flags(src)) else "90"
        flags = (f"-gencode=arch=compute_{arch},code=sm_{arch}",)
        cmd = build.nvcc_command(cubin, arch_flags=flags, extra=("-cubin", "-Xptxas=-v"), srcs=[src])
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        out[src.stem] = (cubin, res.stderr)
    return out


def _ptxas_entries(log: str) -> list[tuple[str, tuple[str, str, str], int]]:
    kernels = re.findall(r"Compiling entry function '(\w+)'", log)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
    assert len(kernels) == len(frames) == len(regs), log[-2000:]
    return list(zip(kernels, frames, regs))


@needs_nvcc
def test_no_spills_or_stack(sm90_cubins):
    decode = _ptxas_entries(sm90_cubins["w4a16_decode"][1])
    float_zero = _ptxas_entries(sm90_cubins["decode_float_zero"][1])
    codebook = _ptxas_entries(sm90_cubins["decode_codebook"][1])
    gemm = _ptxas_entries(sm90_cubins["w4a16_gemm"][1])
    # decode, integer codes: 2 activation dtypes x 3 scale dtypes x 2 n8 tiles x 2 ring depths x 3
    # scale placements (on the sums, one group per chunk, two); float zeros: one ring depth;
    # codebooks: also fp8 e4m3 / e8m0 scales
    assert len(decode) == 2 * 3 * 2 * 2 * 3
    assert len(float_zero) == 2 * 3 * 2 * 3
    assert len(codebook) == 2 * 5 * 2 * 3
    for name, _, regs in decode + float_zero + codebook:  # two 256-thread blocks per SM fit
        assert regs <= 128, (name, regs)
    decode += float_zero + codebook
    # gemm: 2 activation dtypes x 3 scale dtypes x 2 output dtypes x 4 block shapes x 2 ring depths
    assert len(gemm) == 2 * 3 * 2 * len(TILES) * 2
    for name, frame, regs in decode + gemm:
        assert frame == ("0", "0", "0"), (name, frame)
        assert regs <= 255
    # the block shapes built for two blocks per SM fit their 128 registers without spilling
    for name, _, regs in gemm:
        bm, wm, _stages = map(int, re.search(r"Li(\d+)ELi(\d+)ELi(\d+)EEEv", name).groups())
        assert regs * 256 * TILES[bm, wm] <= 65536, (name, regs)


@needs_nvcc
def test_wgmma_kernel_compiles_for_sm90a_without_spills_or_serialization(sm90_cubins):
    _, log = sm90_cubins["w4a16_wgmma"]
    entries = _ptxas_entries(log)
    # 2 variants (x by cp.async / by TMA) x 2 activation dtypes x 3 scale dtypes x 2 output dtypes
    # x 3 block heights
    assert len(entries) == 2 * 2 * 3 * 2 * len(WGMMA_STAGES)
    for name, frame, regs in entries:
        assert frame == ("0", "0", "0") and regs <= 255, (name, frame, regs)
    # ptxas serializes wgmmas whose inputs it cannot prove stable while they run (C7513 / C7515):
    # correct but without the asynchrony the kernel is built on
    assert "C751" not in log and "serialized" not in log, [ln for ln in log.splitlines() if "serialized" in ln][:2]
    assert build.source_arch_flags(build.CSRC / "w4a16_wgmma.cu") == ("-gencode=arch=compute_90a,code=sm_90a",)


@needs_nvcc
def test_wgmma_kinds_compile_for_sm90a_without_spills_or_serialization(sm90_cubins):
    _, log = sm90_cubins["wgmma_kinds"]
    entries = _ptxas_entries(log)
    # TMA variant only, 2 activation dtypes x 2 output dtypes x 3 block heights x (float zeros: 3
    # scale dtypes; codebooks: 5 scale storages with one group per chunk + NVFP4's e4m3 groups of 16)
    assert len(entries) == 2 * 2 * len(WGMMA_STAGES) * (3 + 5 + 1)
    for name, frame, regs in entries:
        assert frame == ("0", "0", "0") and regs <= 255, (name, frame, regs)
    assert "C751" not in log and "serialized" not in log
    assert build.source_arch_flags(build.CSRC / "wgmma_kinds.cu") == ("-gencode=arch=compute_90a,code=sm_90a",)


def test_wgmma_header_is_the_generators_output():
    from kernels_cuda import gen_wgmma

    assert gen_wgmma.HEADER.read_text() == gen_wgmma.render(), "run python -m kernels_cuda.gen_wgmma"


@needs_nvcc
@pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump (triton's) to read SASS")
@pytest.mark.parametrize(
    "stem", ["w4a16_decode", "decode_float_zero", "decode_codebook", "w4a16_gemm", "w4a16_wgmma", "wgmma_kinds"]
)
def test_sass_uses_tensor_cores_and_wide_loads(sm90_cubins, stem):
    cubin, _ = sm90_cubins[stem]
    sass = subprocess.run([_cuobjdump(), "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    if stem in ("w4a16_wgmma", "wgmma_kinds"):  # Hopper warpgroup MMA, register A, both 16-bit types, every N
        for n in WGMMA_STAGES:
            assert f"HGMMA.64x{n}x16.F32.BF16" in sass and f"HGMMA.64x{n}x16.F32 " in sass, n
        assert "HMMA" not in sass
        # TMA loads, mbarrier waits, register reallocation between the warpgroups
        for op in ("UTMALDG.2D", "SYNCS.PHASECHK.TRANS64.TRYWAIT", "USETMAXREG.DEALLOC", "USETMAXREG.TRY"):
            assert op in sass, op
    else:
        assert "HMMA.16816.F32.BF16" in sass and "HMMA.16816.F32 " in sass  # bf16 and f16 mma.sync
    assert "LDGSTS.E.BYPASS.LTC256B.128" in sass, "16-byte cp.async weight copies missing"
    if stem in ("decode_codebook", "wgmma_kinds"):  # table lookups by byte permutes, no shared-memory tables
        assert "PRMT" in sass
    else:
        assert "LOP3.LUT" in sass
    assert not re.search(r"\b(LDL|STL)\b", sass), "local memory traffic"
    if stem == "w4a16_gemm":
        assert "LDSM.16.M88.4" in sass, "ldmatrix.x4 B fragments missing"


@needs_nvcc
def test_builds_and_registers_targets():
    lib = build.build()
    assert lib.is_file() and lib.stat().st_size > 0
    names = [f"jquant_w4a16_{k}{p}" for k in ("decode", "gemm", "wgmma") for p in ("", "_poisoned")]
    assert set(build.register()) == set(names) == set(build.TARGETS)
    for symbol in build.TARGETS.values():
        assert hasattr(build.load_library(), symbol)


@needs_nvcc
@pytest.mark.parametrize("m, zero, perm", [(1, False, False), (16, True, True)])
def test_lowers_for_cuda(m, zero, perm):
    rng = np.random.default_rng(m)
    w = make_weight(rng, 512, 1024, bits=4, group=64, zero=zero, perm=perm)
    wd = jax.tree_util.tree_map(jnp.asarray, w)
    x = jnp.zeros((m, 1024), jnp.bfloat16)
    cfg = DecodeConfig(k_split=256)
    text = jax.jit(lambda x, w: w4a16_decode(x, w, cfg)).trace(x, wd).lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_decode" in line)
    assert f"tensor<{m}x1024xbf16>, tensor<512x512xui8>, tensor<512x16xf16>" in call
    assert f"-> tensor<4x{m}x512xf32>" in call
    for attr in ("group = 64", "k_split = 256", f"has_zero = {int(zero)}", f"bias = {0 if zero else 8}"):
        assert attr in call, (attr, call)
    assert ("stablehlo.gather" in text or "dynamic_gather" in text or "gather" in text) == perm


@needs_nvcc
@pytest.mark.parametrize("k_split, kslices", [(1024, 4), (512, 8)])
def test_decode_lowers_with_in_block_k_slices(k_split, kslices):
    w = jax.tree_util.tree_map(jnp.asarray, make_weight(np.random.default_rng(0), 512, 1024, bits=4, group=128))
    x = jnp.zeros((3, 1024), jnp.bfloat16)
    cfg = DecodeConfig(k_split=k_split, kslices=kslices, direct=True)
    text = jax.jit(lambda x, w: w4a16_decode(x, w, cfg)).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_decode" in line)
    splits = 1024 // k_split
    # one split and `direct`: the kernel writes bf16 itself; several: f32 partial slabs summed by XLA
    assert f"-> tensor<{splits}x3x512x{'bf16' if splits == 1 else 'f32'}>" in call, call
    assert f"kslices = {kslices}" in call and f"k_split = {k_split}" in call, call
    assert ("reduce" in text) == (splits > 1)


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_decode_config_defaults_to_one_slice_and_f32_slabs(shape, m):
    # Slices > 1 and the direct store are not timed on a GPU yet: the default choice is unchanged.
    cfg = decode_config(m, shape.n, shape.k, num_sms=132, blocks_per_sm=lambda ks: 2)
    assert (cfg.kslices, cfg.direct) == (1, False)
    wide = decode_config(
        m, shape.n, shape.k, num_sms=132, blocks_per_sm=lambda ks: 2, kslice_choices=(1, 2, 4, 8), direct=True
    )
    assert cfg.warps % wide.kslices == 0 and wide.direct == (wide.splits(shape.k) == 1)
    assert wide.splits(shape.k) <= cfg.splits(shape.k)  # slices replace grid splits, never add some
    if shape.name == "8b_o" and m == 1:  # 16 row blocks of 8 warps: slices cut the f32 slabs 8 -> 2
        assert (wide.kslices, wide.splits(shape.k)) == (4, 2), wide


@needs_nvcc
@pytest.mark.parametrize("m, zero, perm, k_split", [(40, False, False, 1024), (130, True, True, 256)])
def test_gemm_lowers_for_cuda(m, zero, perm, k_split):
    w = make_weight(np.random.default_rng(m), 512, 1024, bits=4, group=64, zero=zero, perm=perm)
    wd = jax.tree_util.tree_map(jnp.asarray, w)
    x = jnp.zeros((m, 1024), jnp.bfloat16)
    cfg = GemmConfig(bm=64, wm=2, k_split=k_split, stages=3)
    text = jax.jit(lambda x, w: w4a16_gemm(x, w, cfg)).trace(x, wd).lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_gemm" in line)
    assert f"tensor<{m}x1024xbf16>, tensor<512x512xui8>, tensor<512x16xf16>" in call
    splits = 1024 // k_split
    # one split: the kernel writes bf16 itself; several: f32 partial slabs summed by XLA
    assert f"-> tensor<{splits}x{m}x512x{'bf16' if splits == 1 else 'f32'}>" in call
    for attr in ("bm = 64", "wm = 2", "stages = 3", f"k_split = {k_split}", f"has_zero = {int(zero)}"):
        assert attr in call, (attr, call)
    assert "gather" in text  # fragment order (fused with act-order when present): always one gather


@needs_nvcc
@pytest.mark.parametrize("m, zero, perm, bm, k_split", [(300, False, False, 256, 1024), (130, True, True, 64, 256)])
def test_wgmma_lowers_for_cuda(m, zero, perm, bm, k_split):
    w = make_weight(np.random.default_rng(m), 512, 1024, bits=4, group=64, zero=zero, perm=perm)
    wd = jax.tree_util.tree_map(jnp.asarray, w)
    x = jnp.zeros((m, 1024), jnp.float16)
    cfg = WgmmaConfig(bm=bm, k_split=k_split)
    text = jax.jit(lambda x, w: w4a16_wgmma(x, w, cfg)).trace(x, wd).lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if "custom_call @jquant_w4a16_wgmma" in line)
    assert f"tensor<{m}x1024xf16>, tensor<512x512xui8>, tensor<512x16xf16>" in call
    splits = 1024 // k_split
    assert f"-> tensor<{splits}x{m}x512x{'f16' if splits == 1 else 'f32'}>" in call
    attrs = (f"bm = {bm}", f"stages = {WGMMA_STAGES[bm]}", f"k_split = {k_split}", f"has_zero = {int(zero)}")
    for attr in (*attrs, "variant = 1"):
        assert attr in call, (attr, call)
    assert "gather" in text


@pytest.mark.parametrize("m", [129, 512, 4096])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_wgmma_config_fills_the_sms_without_empty_splits(shape, m):
    cfg = wgmma_config(m, shape.n, shape.k, num_sms=132)
    assert cfg.k_split % STEP_K == 0 and (cfg.splits(shape.k) - 1) * cfg.k_split < shape.k
    blocks = -(-shape.n // 128) * -(-m // cfg.bm) * cfg.splits(shape.k)
    assert blocks >= 132 * 0.5, (cfg, blocks)  # at least half the SMs get a block


@needs_nvcc
@pytest.mark.parametrize("kernel", ["decode", "gemm", "wgmma"])
def test_poisoned_call_aliases_a_nan_buffer_to_the_output(kernel):
    w = jax.tree_util.tree_map(jnp.asarray, make_weight(np.random.default_rng(0), 256, 512, bits=4, group=128))
    m = {"decode": 4, "gemm": 40, "wgmma": 200}[kernel]
    x = jnp.zeros((m, 512), jnp.bfloat16)
    f = {"decode": w4a16_decode, "gemm": w4a16_gemm, "wgmma": w4a16_wgmma}[kernel]
    text = jax.jit(lambda x, w: f(x, w, poison=True)).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    call = next(line for line in text.splitlines() if f"custom_call @jquant_w4a16_{kernel}_poisoned" in line)
    assert "output_operand_aliases" in call and "operand_index = 4" in call, call
    assert re.search(r"dense<0x7FC0+>", text, re.IGNORECASE), "no NaN fill"


@pytest.mark.parametrize(
    "kw, m, k, dt, expect",
    [
        (dict(bits=8, group=128), 1, 1024, jnp.bfloat16, "(uint8 codes): the kernel reads"),
        (dict(bits=4, group=16), 1, 1024, jnp.bfloat16, ""),
        (dict(bits=4, group=48), 1, 1536, jnp.bfloat16, "groups of 16 or multiples of 32"),
        (dict(bits=4, group=128), 1, 1000, jnp.bfloat16, "not a multiple of 128"),
        (dict(bits=4, group=128), 17, 1024, jnp.bfloat16, "M=17"),
        (dict(bits=4, group=128), 1, 1024, jnp.float32, "activation dtype float32"),
        (dict(bits=4, group=128), 4, 1024, jnp.float16, ""),
        (dict(bits=4, group=-1, zero=True), 16, 1024, jnp.bfloat16, ""),
    ],
)
def test_why_not(kw, m, k, dt, expect):
    w = make_weight(np.random.default_rng(0), 64, k, **kw)
    why = why_not(jnp.zeros((m, k), dt), w)
    assert (expect in why) if expect else why == "", why


@pytest.mark.parametrize("m", [1, 9, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_decode_config_balances_the_sms_within_shared_memory(shape, m):
    cfg = decode_config(m, shape.n, shape.k, num_sms=132, blocks_per_sm=lambda ks: 2)
    assert cfg.k_split % STEP_K == 0 and smem_bytes(cfg.k_split, m) <= MAX_SPLIT_BYTES
    assert (cfg.splits(shape.k) - 1) * cfg.k_split < shape.k  # no empty split
    blocks = -(-shape.n // (32 * cfg.warps)) * cfg.splits(shape.k)
    busiest = -(-blocks // 132) * (cfg.k_split // STEP_K)  # steps on the busiest SM
    ideal = (shape.n / (32 * cfg.warps)) * (shape.k / STEP_K) / 132
    assert ideal / busiest >= 0.8, (cfg, busiest, ideal)


@pytest.mark.parametrize("n, k", [(64, 256), (1003, 2176)])
def test_tile_codes_is_a_lossless_byte_permutation(n, k):
    data = np.random.default_rng(n).integers(0, 256, (n, k // 2), dtype=np.uint8)
    t = tile_codes(data, n, k)
    assert t.shape == (-(-n // 32), 16 * k)
    np.testing.assert_array_equal(untile_codes(t, n, k), data)
    np.testing.assert_array_equal(np.asarray(tile_codes(jnp.asarray(data), n, k)), t)  # jnp twin
    # lane 4r+q of piece j in step t holds row 8j+r, bytes 16q.. of that step
    rb, tt, j, r, q = 0, k // 128 - 1, 2, 5, 3
    tile = t[rb].reshape(k // 128, 4, 32, 16)[tt, j, 4 * r + q]
    np.testing.assert_array_equal(tile, data[32 * rb + 8 * j + r, 64 * tt + 16 * q : 64 * tt + 16 * q + 16])


@needs_nvcc
@pytest.mark.parametrize("cc", ["9.0", "8.0"])
@pytest.mark.parametrize("m, bits, expect", [(1, 4, "cuda_w4a16_decode"), (16, 4, "cuda_w4a16_decode"),
                                             (17, 4, "cuda_w4a16_gemm"), (39, 4, "cuda_w4a16_gemm"),
                                             (40, 4, "cuda_w4a16_wgmma"), (128, 4, "cuda_w4a16_wgmma"),
                                             (129, 4, "cuda_w4a16_wgmma"), (4096, 4, "cuda_w4a16_wgmma"),
                                             (1, 8, "pallas_triton_wna16_decode")])  # fmt: skip
def test_dispatcher_prefers_the_cuda_kernel_where_it_applies(m, bits, expect, cc):
    from jquant.core.routing import Device
    from jquant.ops.qmatmul import select

    if expect == "cuda_w4a16_wgmma" and cc != "9.0":  # elsewhere: the mma.sync GEMM up to 128
        expect = "cuda_w4a16_gemm" if m <= 128 else "xla_dequant_dot"
    w = make_weight(np.random.default_rng(0), 64, 256, bits=bits, group=128)
    gpu = Device("gpu", cc=tuple(map(int, cc.split("."))))  # the GPU the dispatcher would see (this host has none)
    r = select(jax.ShapeDtypeStruct((m, 256), jnp.bfloat16), w, device=gpu)
    assert r.backend.name == expect, r.skipped
