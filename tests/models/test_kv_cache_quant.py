"""Quantized KV cache (``kv_cache_dtype``): codes vs a numpy spec, scales from checkpoints, and the
model's logits / greedy continuations vs transformers running the same quantized-KV semantics.

transformers has no fp8 / int8 per-head-scale KV cache (its ``QuantizedCache`` is quanto / HQQ
group quantization), so the oracle is transformers' own Llama with its attention wrapped
(``AttentionInterface.register``): the keys / values it attends over (after RoPE and the cache
update) are quantized with the scale and dequantized, exactly what reading codes from a cache does.
Scales are computed on the first call of each layer (the prefill), like vLLM's ``calc_kv_scales``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

import jquant
from jquant.core.errors import ConfigError
from jquant.models import Generator, from_checkpoint
from jquant.models.kv_quant import kv_quant_from_metadata, quantize_kv
from tests.models.hf_tiny import hf_dir

DTYPES = ("fp8_e4m3", "fp8_e5m2", "int8")
NP_CODE = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2, "int8": np.int8}
RANGES = {"fp8_e4m3": (200.0, 100.0), "fp8_e5m2": (200.0, 100.0), "int8": (127.0, 127.0)}  # (k, v)


def np_codes(x: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """The spec: f32 ``x / scale`` per head (axis -2), saturated, rounded to nearest even."""
    y = x.astype(np.float32) / scale.astype(np.float32)[:, None]
    if dtype == "int8":
        return np.clip(np.rint(y), -128, 127).astype(np.int8)
    m = float(ml_dtypes.finfo(NP_CODE[dtype]).max)
    return np.clip(y, -m, m).astype(NP_CODE[dtype])


def _code_rank(c: np.ndarray) -> np.ndarray:
    """Codes as integers in value order (fp8: sign-magnitude bits; neighbours differ by 1)."""
    if c.dtype == np.int8:
        return c.astype(np.int32)
    u = c.view(np.uint8).astype(np.int32)
    return np.where(u & 0x80, -(u & 0x7F), u & 0x7F)


@pytest.mark.parametrize("dtype", DTYPES)
def test_codes_match_numpy_spec(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2, 5, 3, 16)) * rng.choice([0.01, 1.0, 300.0], (2, 5, 3, 16))).astype(np.float32)
    scale = np.array([0.01, 0.5, 3.0], np.float32)  # saturates head 0 heavily, rounds the others
    got = np.asarray(jax.jit(quantize_kv, static_argnums=2)(jnp.asarray(x), jnp.asarray(scale), NP_CODE[dtype]))
    want = np_codes(x, scale, dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    top = 127.0 if dtype == "int8" else float(ml_dtypes.finfo(NP_CODE[dtype]).max)
    assert np.abs(want.astype(np.float32)).max() >= top  # the saturating branch ran


def test_scales_from_metadata_broadcast_and_errors():
    meta = {
        "dtype": "fp8_e4m3",
        "layers": {
            "model.layers.0.self_attn": {"k_scale": [0.5], "v_scale": [0.25, 0.125]},
            "model.layers.1.self_attn": {"k_scale": [2.0], "v_scale": [1.0]},
        },
    }
    q = kv_quant_from_metadata("fp8_e4m3", meta, 2, 2)
    assert q.source == "checkpoint" and q.k_scales == ((0.5, 0.5), (2.0, 2.0)) and q.v_scales[0] == (0.25, 0.125)
    assert kv_quant_from_metadata("auto", meta, 2, 2) is None
    assert kv_quant_from_metadata("fp8_e4m3", meta, 2, 2, scales="prefill").k_scales is None
    assert kv_quant_from_metadata("int8", None, 2, 2, scales=1.0).k_scales == ((1.0, 1.0),) * 2
    with pytest.warns(UserWarning, match="for fp8_e4m3, not kv_cache_dtype='int8'"):
        assert kv_quant_from_metadata("int8", meta, 2, 2).source == "prefill"
    with pytest.raises(ConfigError, match="for fp8_e4m3"):
        kv_quant_from_metadata("int8", meta, 2, 2, scales="checkpoint")
    with pytest.raises(ConfigError, match="model.layers.0.self_attn.v_scale has 2 values"):
        kv_quant_from_metadata("fp8_e4m3", meta, 2, 3)
    with pytest.raises(ConfigError, match="lack model.layers.2.self_attn"):
        kv_quant_from_metadata("fp8_e4m3", meta, 3, 2)
    bad = {"dtype": "fp8_e4m3", "layers": {"model.layers.0.self_attn": {"k_scale": [0.0], "v_scale": [1.0]}}}
    with pytest.raises(ConfigError, match=r"model.layers.0.self_attn.k_scale must be finite and > 0"):
        kv_quant_from_metadata("fp8_e4m3", bad, 1, 2)
    with pytest.raises(ConfigError, match="kv_cache_dtype must be one of"):
        kv_quant_from_metadata("fp4", meta, 2, 2)


# ---- model level vs transformers ---------------------------------------------------------------
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _fake_quant(t, scale, dtype):
    s = scale.view(1, -1, 1, 1)  # [B, H_kv, S, D] layout inside transformers' attention
    y = t.float() / s
    if dtype == "int8":
        y = torch.round(y).clamp(-128, 127)
    else:
        td = torch.float8_e4m3fn if dtype == "fp8_e4m3" else torch.float8_e5m2
        m = torch.finfo(td).max
        y = y.clamp(-m, m).to(td).float()
    return (y * s).to(t.dtype)


def hf_kvq_model(folder, dtype: str):
    """transformers' model whose attention reads keys / values through the quantized-cache round trip."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    scales: dict[int, tuple] = {}  # layer -> (k_scale, v_scale), set by the layer's first call (prefill)
    k_rng, v_rng = RANGES[dtype]

    def attn(module, query, key, value, attention_mask, **kw):
        if module.layer_idx not in scales:
            h = key.shape[1]
            scales[module.layer_idx] = tuple(
                (x.abs().max().float() / r).expand(h) for x, r in ((key, k_rng), (value, v_rng))
            )
        ks, vs = scales[module.layer_idx]
        return sdpa(module, query, _fake_quant(key, ks, dtype), _fake_quant(value, vs, dtype), attention_mask, **kw)

    name = f"jquant_kvq_{dtype}"
    AttentionInterface.register(name, attn)
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=name)
    return m.eval(), scales


PROMPT = np.random.default_rng(3).integers(0, 512, size=(2, 32)).astype(np.int32)  # = PROMPT_BUCKET: no padding


@pytest.fixture(scope="module")
def llama_folder():
    return hf_dir("llama3")


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_decode_logits_match_transformers(llama_folder, dtype):
    model = from_checkpoint(jquant.convert(llama_folder), dtype=jnp.float32, kv_cache_dtype=dtype)
    assert model.kv_quant.dtype == dtype and model.kv_quant.source == "prefill"
    step = nnx.jit(lambda m, ids, c: m(ids, c))
    cache = model.init_cache(2, 64)
    pre, cache = step(model, jnp.asarray(PROMPT[:, :20]), cache)
    ours = [np.asarray(pre)]
    for t in range(20, 32):
        lg, cache = step(model, jnp.asarray(PROMPT[:, t : t + 1]), cache)
        ours.append(np.asarray(lg))
    ours = np.concatenate(ours, axis=1)
    assert cache.k[0].dtype == jnp.dtype(NP_CODE[dtype]) and cache.k_scale[0].shape == (2,)

    hf, scales = hf_kvq_model(llama_folder, dtype)
    with torch.no_grad():
        out = hf(torch.from_numpy(PROMPT[:, :20]).long(), use_cache=True)
        ref, past = [out.logits.numpy()], out.past_key_values
        for t in range(20, 32):
            out = hf(torch.from_numpy(PROMPT[:, t : t + 1]).long(), past_key_values=past, use_cache=True)
            ref.append(out.logits.numpy())
            past = out.past_key_values
    ref = np.concatenate(ref, axis=1)
    for i, (ks, vs) in scales.items():  # the scales each side computed on its prefill agree
        np.testing.assert_allclose(np.asarray(cache.k_scale[i]), ks.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(cache.v_scale[i]), vs.numpy(), rtol=1e-6)
    # The cache holds the codes transformers' keys / values round to. A code can differ where the
    # f32 value sits within an ulp of a rounding boundary (torch and XLA differ in the last bit of
    # the projections / RoPE, and layer 0's flips perturb layer 1's inputs): under 1% of the codes,
    # each off by at most about one code step at the top of the range (bounded on the codes' values).
    for i in scales:
        pairs = (
            (cache.k[i], past.layers[i].keys, cache.k_scale[i]),
            (cache.v[i], past.layers[i].values, cache.v_scale[i]),
        )
        for ours_c, hf_t, sc in pairs:
            want = np_codes(hf_t.numpy().transpose(0, 2, 1, 3), np.asarray(sc), dtype)  # -> [B, S, H, D]
            got = np.asarray(ours_c)[:, :32]
            differ = (_code_rank(got) != _code_rank(want)).mean()
            assert differ < 0.01, f"{dtype} layer {i}: {differ:.2%} of the codes differ"
            gap = np.abs(got.astype(np.float32) - want.astype(np.float32)).max()
            assert gap <= 0.125 * np.abs(want.astype(np.float32)).max(), (dtype, i, gap)  # <= one e4m3 step at the top
    # the quantization is visible: the float cache's logits differ from the quantized ones by far
    # more than the quantized ones differ from transformers'
    plain = np.asarray(from_checkpoint(jquant.convert(llama_folder), dtype=jnp.float32)(jnp.asarray(PROMPT)))
    err, effect = np.abs(ours - ref).max(), np.abs(plain - ref).max()
    print(
        f"{dtype}: max|jquant - transformers| = {err / ref.std():.2e} std, quantization effect {effect / ref.std():.2e} std"
    )
    assert err < 0.1 * effect, (err, effect)  # measured: 0.045 for fp8_e4m3 (rounding-boundary flips)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() == 1.0


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "int8"])
def test_greedy_continuation_matches_transformers(llama_folder, dtype):
    model = from_checkpoint(jquant.convert(llama_folder), dtype=jnp.float32, kv_cache_dtype=dtype)
    got = Generator(model)(PROMPT[:1], max_new_tokens=10)
    hf, _ = hf_kvq_model(llama_folder, dtype)
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(PROMPT[:1]).long(), max_new_tokens=10, do_sample=False, eos_token_id=None)
    assert got[0].tolist() == ref[0, 32:].tolist()


def test_cache_bytes_halve_and_sharding_kwarg_still_works(llama_folder):
    from jquant.models.kv_cache import cache_bytes

    ck = jquant.convert(llama_folder)
    bf16 = from_checkpoint(ck, dtype=jnp.bfloat16)
    fp8 = from_checkpoint(ck, dtype=jnp.bfloat16, kv_cache_dtype="fp8_e4m3")
    c_bf16, c_fp8 = bf16.init_cache(1, 128), fp8.init_cache(1, 128)
    scale_bytes = 2 * 2 * 2 * 4  # k + v, 2 layers, 2 KV heads, f32
    assert c_fp8.nbytes == c_bf16.nbytes // 2 + scale_bytes
    assert cache_bytes(fp8, 1, 128) == c_fp8.nbytes and cache_bytes(bf16, 1, 128) == c_bf16.nbytes
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    fp8.cache_sharding = sh
    c = fp8.init_cache(1, 16)
    assert c.k[0].sharding == sh and c.k[0].dtype == jnp.float8_e4m3fn and c.quantized


def test_checkpoint_scales_are_used_and_kept(llama_folder):
    """llm-compressor's FP8 folder (kv_cache_scheme, per-tensor k_scale / v_scale): the cache starts
    from the checkpoint's scales and the prefill does not recompute them."""
    from tests.fixtures.producers_ct import llmcompressor_dir

    ck = jquant.convert(llmcompressor_dir() / "FP8")
    layers = ck.metadata["kv_cache"]["layers"]
    model = from_checkpoint(ck, dtype=jnp.float32, kv_cache_dtype="fp8_e4m3")
    assert model.kv_quant.source == "checkpoint"
    cache = model.init_cache(1, 32)
    _, cache = nnx.jit(lambda m, ids, c: m(ids, c))(model, jnp.asarray(PROMPT[:1, :8]), cache)
    for i in range(2):
        want = layers[f"model.layers.{i}.self_attn"]
        np.testing.assert_array_equal(np.asarray(cache.k_scale[i]), np.float32(want["k_scale"] * 2))
        np.testing.assert_array_equal(np.asarray(cache.v_scale[i]), np.float32(want["v_scale"] * 2))
    recal = from_checkpoint(ck, dtype=jnp.float32, kv_cache_dtype="fp8_e4m3", kv_cache_scales="prefill")
    _, c2 = nnx.jit(lambda m, ids, c: m(ids, c))(recal, jnp.asarray(PROMPT[:1, :8]), recal.init_cache(1, 32))
    assert not np.array_equal(np.asarray(c2.k_scale[0]), np.asarray(cache.k_scale[0]))


def test_cli_generate_reports_quantized_cache(llama_folder, capsys):
    from jquant.cli import main

    sizes = {}
    for kv in ("auto", "fp8_e4m3"):
        rc = main([
            "generate", str(llama_folder), "--prompt", "t5 t6 t7", "--no-chat", "--max-new-tokens", "3",
            "--dtype", "bfloat16", "--kv-cache-dtype", kv,
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 0 and "3 tokens" in err
        line = next(s for s in err.splitlines() if s.startswith("KV cache:"))
        sizes[kv] = float(line.split("; ")[1].split("x")[0])
        assert ("fp8_e4m3 codes, scales from prefill" in line) == (kv == "fp8_e4m3"), line
    # 128 slots x 2 layers x 2 heads x 64 x (k + v): 131072 B in bf16, half in fp8 (+ 32 B of scales)
    assert sizes == {"auto": 1.0, "fp8_e4m3": 0.5}
