"""CPU decode speed and peak memory: jquant (JAX), the Torch bridge, llama.cpp and transformers on one GGUF.

Each engine runs in its own subprocess (so its peak RSS is its own): load the model, greedy-decode
``--tokens`` tokens after the chat-templated prompt ("Write a haiku about the sea.") once to compile /
warm up, then again timed. The steady decode rate is measured between the first and the last
generated token (prefill and compilation excluded); every engine is fed the same prompt token ids
and decodes exactly ``--tokens`` tokens (end tokens do not stop it). The rows run back to back,
round-robin over ``--repeats`` rounds, so that load from other users of a shared machine spreads
over all of them; the table gives the best and the median rate of each row. Writes
``bench/results/cpu/decode.md`` (``decode_1b_q4_0.md``, ... for the other models) with the machine,
versions and commit.

    python bench/decode_cpu.py [--model smollm2 | 1b-q4_0 | 1b-q4_k] [--tokens 64] [--repeats 3]
        [--runs jquant:auto@1t,jquant:auto@2t,torch:torch_cpu_qmatmul@2t,llamacpp@2t,transformers@2t]
        [--cli-cache] [--no-kernels]

``--runs``: one row per entry, ``engine[:kernels][@<n>t][@unrolled]``. Engines: ``jquant`` (kernels =
``JQUANT_KERNELS``, ``auto`` = the dispatcher's choice; ``@unrolled``: layers unrolled instead of
``lax.scan``), ``torch`` (the Torch bridge: `torch_bridge.from_checkpoint`, kernels = its backend,
``auto`` = its routing table; decoded by `torch_bridge.patch.Decoder`, ``@hf``: by transformers'
forward per token), ``llamacpp`` (llama-cpp-python; skipped with a message where it is not
installed: ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python`` builds it from source in
~10 min on 2 cores) and ``transformers`` (``gguf_file=``: dequantized to f32 dense weights). ``@<n>t``:
threads (``JQUANT_CPU_THREADS`` for jquant's kernel, ``torch.set_num_threads`` and the kernel's for
torch, ``n_threads`` for llama.cpp). Models: ``smollm2`` is the embedded SmolLM2-135M-Instruct Q4_1
GGUF (the README's main job); ``1b-q4_0`` / ``1b-q4_k`` are a Llama-3.2-1B-shaped model (hidden 2048,
16 layers, 32 / 8 heads, MLP 8192, SmolLM2's 49152-token vocabulary and tokenizer) with random
weights in Q4_0 / Q4_K blocks (the LM head Q8_0), written once to ``~/.cache/jquant-bench``.

Not a test: timings on a shared 2-core box are noisy (the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a haiku about the sea."
MODELS = ("smollm2", "1b-q4_0", "1b-q4_k")
# Llama-3.2-1B's decoder geometry (its vocabulary replaced by SmolLM2's, whose tokenizer the file carries).
ONE_B = dict(hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192, head_dim=64)


# ---- models ----------------------------------------------------------------------------------------------
def model_path(model: str) -> Path:
    """The GGUF file of ``model`` (the 1B-class files are written on first use)."""
    from jquant.convert.default_model import default_model_path

    if model == "smollm2":
        return default_model_path()
    kind = {"1b-q4_0": "Q4_0", "1b-q4_k": "Q4_K"}[model]
    path = Path(os.environ.get("JQUANT_BENCH_CACHE", Path.home() / ".cache" / "jquant-bench")) / f"llama-1b-{kind}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        _write_random_1b(tmp, kind, default_model_path())
        os.replace(tmp, path)
    return path


def _random_blocks(type_name: str, rows: int, k: int, rng) -> object:
    """Random valid GGML blocks [rows, row_bytes]: random codes, f16 scale fields ~0.01 (finite)."""
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    b = rng.integers(0, 256, (rows, k // block, nbytes), dtype=np.uint8)
    for off in {"Q4_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2)}[type_name]:  # d (and dmin) fields, f16
        d = (rng.uniform(0.5, 1.5, b.shape[:2]) * 0.01).astype("<f2")
        b[..., off : off + 2] = d.view(np.uint8).reshape(*b.shape[:2], 2)
    if type_name == "Q4_K":  # 6-bit sub-scales / mins: keep them moderate (bytes 4..15)
        b[..., 4:16] &= 0x9F
    return b.reshape(rows, -1)


def _write_random_1b(path: Path, kind: str, tokenizer_from: Path) -> None:
    """A Llama-3.2-1B-shaped GGUF with random ``kind`` blocks and ``tokenizer_from``'s tokenizer fields."""
    import gguf
    import numpy as np

    c = ONE_B
    src = gguf.GGUFReader(str(tokenizer_from))
    vocab = int(src.fields["llama.vocab_size"].contents())
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name(f"random-llama-1b-{kind}")
    for name, f in src.fields.items():
        if name.startswith("tokenizer."):
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    w.add_context_length(2048)
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["inter"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_rope_dimension_count(c["head_dim"])
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if kind == "Q4_0" else gguf.LlamaFileType.MOSTLY_Q4_K_M)
    rng = np.random.default_rng(0)
    h, hd = c["hidden"], c["head_dim"]

    def add(name, rows, k, t):
        w.add_tensor(name, _random_blocks(t, rows, k, rng), raw_dtype=gguf.GGMLQuantizationType[t])

    add("token_embd.weight", vocab, h, kind)
    for i in range(c["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(h, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(h, np.float32))
        add(p + "attn_q.weight", c["heads"] * hd, h, kind)
        add(p + "attn_k.weight", c["kv_heads"] * hd, h, kind)
        add(p + "attn_v.weight", c["kv_heads"] * hd, h, kind)
        add(p + "attn_output.weight", h, c["heads"] * hd, kind)
        add(p + "ffn_gate.weight", c["inter"], h, kind)
        add(p + "ffn_up.weight", c["inter"], h, kind)
        add(p + "ffn_down.weight", h, c["inter"], kind)
    w.add_tensor("output_norm.weight", np.ones(h, np.float32))
    add("output.weight", vocab, h, "Q8_0")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _prompt_ids(path: Path) -> list[int]:
    from jquant.models.tokenizer import load_tokenizer, prompt_ids

    return prompt_ids(load_tokenizer(path), PROMPT)[0].tolist()


def _decode(path: Path, ids: list[int]) -> str:
    from jquant.models.tokenizer import load_tokenizer

    return load_tokenizer(path).decode(ids)


def _rates(stamps: list[float], t0: float) -> dict:
    return dict(first_token_s=stamps[0] - t0, tok_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]))


# ---- engines (each runs in a child process) ------------------------------------------------------------
def _jquant(path: Path, tokens: int, threads: int | None, kernels: str, unrolled: bool) -> dict:
    import jax.numpy as jnp
    import numpy as np

    import jquant
    from jquant.models import Generator, from_checkpoint
    from jquant.models.generate import model_bytes

    t0 = time.perf_counter()
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32, scan_layers=False if unrolled else None)
    load_s = time.perf_counter() - t0
    ids = np.asarray([_prompt_ids(path)], np.int32)
    gen = Generator(model)
    t0 = time.perf_counter()
    gen(ids, max_new_tokens=tokens)  # compiles prefill + step
    compile_s = time.perf_counter() - t0
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = gen(ids, max_new_tokens=tokens, on_token=lambda t: stamps.append(time.perf_counter()))
    held, bf16 = model_bytes(model)
    name = _jquant_backend(model)
    how = []
    if name == "cpu_qmatmul":
        from kernels_cpu import get_act_quant, get_isa

        how.append(f"{get_isa()}")
        how.append("int8 activations (opt-in)" if get_act_quant() == "int8" else "f32 activations")
    how.append("layers unrolled" if model.stacked_layers is None else "layers scanned")
    return dict(
        engine=f"jquant ({name}; {', '.join(how)})",
        **_rates(stamps, t0),
        load_s=load_s,
        compile_s=compile_s,
        weights_mb=held / 1e6,
        text=_decode(path, out[0].tolist()),
    )


def _jquant_backend(model) -> str:
    """The qmatmul backend of the model's first decoder matmul at M = 1 (what `jquant.ops.explain` reports)."""
    import jax
    import jax.numpy as jnp

    from jquant.core import QArray
    from jquant.ops import select

    layer = model.layers[0] if model.stacked_layers is None else model.stacked_layers
    w = layer.mlp.down_proj.weight.get_value()
    if not isinstance(w, QArray):
        return "dense"
    if model.stacked_layers is not None:
        from jquant.ops.qmatmul import layer_view

        w = layer_view(w)
    return select(jax.ShapeDtypeStruct((1, w.shape[1]), jnp.float32), w).backend.name


def _torch_loop(model, ids: list[int], tokens: int) -> tuple[list[int], list[float], float]:
    """Greedy decode with a KV cache, one forward per token (no `generate` machinery); returns the
    tokens, the time stamp of each and the start time."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        x = torch.tensor([ids])
        out, stamps = [], []
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits[:, -1]
            t = int(logits.argmax(-1))
            stamps.append(time.perf_counter())
            out.append(t)
            x = torch.tensor([[t]])
    return out, stamps, t0


def _decoder_loop(model, ids: list[int], tokens: int) -> tuple[list[int], list[float], float]:
    """`_torch_loop` through `torch_bridge.patch.Decoder` (the prompt through the model's forward, then
    the lean step: fused q / k / v and gate / up, static cache, no per-token transformers machinery)."""
    from torch_bridge.patch import Decoder

    dec = Decoder(model, max_len=len(ids) + tokens + 1)
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = dec.generate(ids, tokens, on_token=lambda t: stamps.append(time.perf_counter()))
    return out, stamps, t0


def _torch(path: Path, tokens: int, threads: int | None, kernels: str, unrolled: bool, hf: bool = False) -> dict:
    import torch

    import jquant
    import torch_bridge
    from jquant.core import QArray

    if kernels == "torch_cpu_qmatmul":
        # The kernel splits its rows over its own pool (JQUANT_CPU_THREADS); torch's remaining ops are small
        # at decode, and its OpenMP pool contending with the kernel's for 2 cores cost 25 vs 20 ms/token.
        torch.set_num_threads(1)
    elif threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ckpt = jquant.convert(path)
    w = ckpt.weights
    if ckpt.config.get("tie_word_embeddings") and "lm_head.weight" not in w:
        # Tied head: give the patched model the quantized table as its LM head (a QuantLinear on the
        # same canonical QArray); otherwise the head would be the dequantized f32 embedding matrix.
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    impl = None if kernels in ("", "auto") else kernels
    model = torch_bridge.from_checkpoint(ckpt, dtype=torch.float32, implementation=impl)
    load_s = time.perf_counter() - t0
    ids = _prompt_ids(path)
    loop = _torch_loop if hf else _decoder_loop
    t0 = time.perf_counter()
    loop(model, ids, tokens)
    compile_s = time.perf_counter() - t0
    out, stamps, t0 = loop(model, ids, tokens)
    name = impl or torch_bridge.select(_first_q(ckpt), "cpu", torch.float32).backend.name
    held = sum(q.nbytes for n, q in w.items() if isinstance(q, QArray) and n != "lm_head.weight")
    how = "transformers forward per token" if hf else "Decoder: fused q/k/v, gate/up, static cache"
    return dict(
        engine=f"Torch bridge ({name}; {how}; torch {torch.__version__}, {torch.get_num_threads()} torch thread(s))",
        **_rates(stamps, t0),
        load_s=load_s,
        compile_s=compile_s,
        weights_mb=held / 1e6,
        text=_decode(path, out),
    )


def _first_q(ckpt):
    """The first decoder layer's down projection as a torch QArray (what the row's routing reports)."""
    import torch_bridge
    from jquant.core import QArray

    name = next(n for n, q in ckpt.weights.items() if isinstance(q, QArray) and ".layers.0.mlp.down" in n)
    return torch_bridge.to_torch(ckpt.weights[name])


def _llamacpp(path: Path, tokens: int, threads: int | None, kernels: str, unrolled: bool) -> dict:
    import llama_cpp

    t = threads or os.cpu_count()
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_batch=64, n_threads=t, n_threads_batch=t, seed=0, verbose=False
    )
    load_s = time.perf_counter() - t0
    ids = _prompt_ids(path)

    def run():
        llm.reset()  # no prompt reuse from the previous run
        out, stamps = [], []
        t0 = time.perf_counter()
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            stamps.append(time.perf_counter())
            out.append(tok)
            if len(out) == tokens:
                break
        return out, stamps, t0

    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    out, stamps, t0 = run()
    return dict(
        engine=f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, {t} threads)",
        **_rates(stamps, t0),
        load_s=load_s,
        compile_s=0.0,
        weights_mb=path.stat().st_size / 1e6,
        text=_decode(path, out),
        warmup_s=compile_s,
    )


def _transformers(path: Path, tokens: int, threads: int | None, kernels: str, unrolled: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    ids = _prompt_ids(path)
    _torch_loop(model, ids, tokens)
    out, stamps, t0 = _torch_loop(model, ids, tokens)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(
        engine=f"transformers (gguf_file=, dequantized to f32; torch {torch.__version__}, {torch.get_num_threads()} threads)",
        **_rates(stamps, t0),
        load_s=load_s,
        compile_s=0.0,
        weights_mb=weights / 1e6,
        text=_decode(path, out),
    )


ENGINES = {"jquant": _jquant, "torch": _torch, "llamacpp": _llamacpp, "transformers": _transformers}


def _child(spec: str, model: str, tokens: int) -> None:
    if spec == "kernels":
        print("RESULT " + json.dumps(_kernel_rows()))
        return
    if spec == "prefill":
        print("RESULT " + json.dumps(_prefill_rows()))
        return
    engine, kernels, threads, unrolled = parse_spec(spec)
    if engine == "llamacpp":
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            print("RESULT " + json.dumps({"skipped": f"llama-cpp-python is not installed here ({e})"}))
            return
    extra = {"hf": True} if "@hf" in spec else {}
    res = ENGINES[engine](model_path(model), tokens, threads, kernels, unrolled, **extra)
    res["peak_rss_mb"] = _peak_rss_kb() / 1024
    print("RESULT " + json.dumps(res))


def _peak_rss_kb() -> float:
    """This process's peak RSS in KiB: ``VmHWM`` of /proc/self/status (the high-water mark of this
    program's memory map, which starts anew at exec). ``ru_maxrss`` keeps the forking parent's mark
    across exec on Linux, so every child reported at least the parent's RSS (557 MiB after the
    512 MiB bandwidth probe; llama.cpp and the SmolLM2 jquant rows all showed exactly that)."""
    try:
        with open("/proc/self/status") as f:
            return float(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def parse_spec(spec: str) -> tuple[str, str, int | None, bool]:
    """``engine[:kernels][@<n>t][@unrolled][@int8][@hf]`` -> (engine, kernels, threads, unrolled); ``@int8``
    (opt-in int8 activations of kernels_cpu, ``JQUANT_CPU_ACT``) only changes the environment; ``@hf``
    (torch only) decodes through transformers' forward per token instead of `torch_bridge.patch.Decoder`."""
    head, *opts = spec.split("@")
    engine, _, kernels = head.partition(":")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} in {spec!r} (one of {sorted(ENGINES)})")
    threads, unrolled = None, False
    for o in opts:
        if o.endswith("t") and o[:-1].isdigit():
            threads = int(o[:-1])
        elif o == "unrolled":
            unrolled = True
        elif o == "int8" or (o == "hf" and engine == "torch"):
            pass
        else:
            raise ValueError(f"unknown option {o!r} in {spec!r}")
    return engine, kernels or "auto", threads, unrolled


def _env(spec: str) -> dict:
    engine, kernels, threads, unrolled = parse_spec(spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("JQUANT_KERNELS", "JQUANT_CPU_THREADS", "JQUANT_CPU_ACT"):
        env.pop(var, None)
    if "@int8" in spec:
        env["JQUANT_CPU_ACT"] = "int8"
    if threads:
        env["JQUANT_CPU_THREADS"] = str(threads)
    if engine == "jquant" and kernels != "auto":
        env["JQUANT_KERNELS"] = kernels
    return env


# ---- kernel table (SmolLM2's shapes and the 1B-class ones, M = 1) -------------------------------------
# Matmuls per token as the models run them (q/k/v and gate/up fused): (N, K, bits, calls).
KERNEL_SHAPES = {
    "smollm2": [(960, 576, 4, 30), (576, 576, 4, 30), (3072, 576, 4, 30), (576, 1536, 4, 30), (49152, 576, 8, 1)],
    "1b": [(3072, 2048, 4, 16), (2048, 2048, 4, 16), (16384, 2048, 4, 16), (2048, 8192, 4, 16), (49152, 2048, 8, 1)],
}


def _time_calls(fn, x, ws, k: int, reps: int = 10) -> float:
    """Seconds per ``fn(x[:, :k], w)`` call, chained over ``ws`` in one compiled loop (best of 3)."""
    import jax

    @jax.jit
    def f(x, ws):
        def body(i, x):
            for w in ws:
                x = x + fn(x[:, :k], w)[:, :1].sum() * 1e-9
            return x

        return jax.lax.fori_loop(0, reps, body, x)

    f(x, ws).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        f(x, ws).block_until_ready()
        best = min(best, (time.perf_counter() - t0) / (reps * len(ws)))
    return best


def _kernel_rows(threads=(1, 2)) -> list[dict]:
    """``cpu_qmatmul`` at M = 1 on the models' shapes (Q4_1 / Q8_0 layouts: groups of 32, f16 scales),
    each call in a compiled loop over distinct weights (as the layers are: nothing stays in cache)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jquant.core import QArray, get_qtype
    from kernels_cpu import cpu_qmatmul, set_act_quant, set_threads

    rng = np.random.default_rng(0)

    def weight(n, k, bits):
        g = k // 32
        if bits == 4:
            return QArray(
                data=rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
                scale=(rng.random((n, g)) * 0.01).astype(np.float16),
                zero=(rng.random((n, g)) * 0.01).astype(np.float16),
                qtype=get_qtype("uint4"),
                shape=(n, k),
                block=(1, 32),
            )
        return QArray(
            data=rng.integers(-128, 128, (n, k), dtype=np.int8),
            scale=(rng.random((n, g)) * 0.01).astype(np.float16),
            qtype=get_qtype("int8"),
            shape=(n, k),
            block=(1, 32),
        )

    rows = []
    for model, shapes in KERNEL_SHAPES.items():
        for n, k, bits, calls in shapes:
            count = max(2, min(calls, int(64e6 // (n * k * bits / 8))))  # >= 64 MB of distinct weights
            ws = [jax.device_put(weight(n, k, bits)) for _ in range(count)]
            x = jnp.asarray(rng.standard_normal((1, max(n, k))).astype(np.float32))
            row = dict(model=model, shape=f"{n} x {k}", kind="Q4_1" if bits == 4 else "Q8_0", calls=calls)
            row["mb"] = ws[0].nbytes / 1e6
            for t in threads:
                set_threads(t)
                for mode, key in (("none", "cpu"), ("int8", "int8")):
                    if set_act_quant(mode) == mode:
                        row[f"{key}_{t}t"] = _time_calls(cpu_qmatmul, x, ws, k, reps=3 if n * k > 1e7 else 10)
            set_threads(0)
            set_act_quant("none")
            rows.append(row)
            del ws
    return rows


PREFILL_M = (8, 16, 32, 37, 64)


def _prefill_rows(ms=PREFILL_M) -> list[dict]:
    """Where ``cpu_qmatmul`` stops beating ``xla_cpu_chunked`` (the routing's M limit, `kernels_cpu.caps.M_MAX`):
    ms per token position's worth of SmolLM2's matmuls (its four Q4_1 layer shapes x 30 layers) at M rows,
    each backend at the process's default threads, each call in a compiled loop over 4 distinct weights.
    M = 37 is the README prompt's length; `jquant.models.generate` pads prefills to 32k rows (M = 64)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jquant.core import QArray, get_qtype
    from jquant.ops.xla_cpu import chunked_qmatmul
    from kernels_cpu import cpu_qmatmul

    rng = np.random.default_rng(0)

    def q41(n, k):
        g = k // 32
        return QArray(
            data=rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
            scale=(rng.random((n, g)) * 0.01).astype(np.float16),
            zero=(rng.random((n, g)) * 0.01).astype(np.float16),
            qtype=get_qtype("uint4"),
            shape=(n, k),
            block=(1, 32),
        )

    shapes = [(n, k) for n, k, bits, _ in KERNEL_SHAPES["smollm2"] if bits == 4]
    ws = {s: [jax.device_put(q41(*s)) for _ in range(4)] for s in shapes}
    rows = []
    for m in ms:
        x = jnp.asarray(rng.standard_normal((m, 3072)).astype(np.float32))
        row = {"m": m}
        for key, fn in (("cpu_qmatmul", cpu_qmatmul), ("xla_cpu_chunked", chunked_qmatmul)):
            row[key] = sum(_time_calls(fn, x, ws[(n, k)], k, reps=3) * 30 for n, k in shapes)
        rows.append(row)
    return rows


# ---- the report ----------------------------------------------------------------------------------------
def _bandwidth() -> dict[int, float]:
    """Streaming-read bytes/s with 1 and 2 threads (empty when the CPU kernel library is unavailable)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from kernels_cpu.build import load_library

        lib = load_library(ffi=False)
        return {t: lib.jquant_cpu_read_bandwidth(1 << 29, t, 5) for t in (1, 2)}
    except Exception as e:  # no compiler: no probe
        print(f"bandwidth probe unavailable: {e}", file=sys.stderr)
        return {}


def _cli_first_token() -> tuple[float, float]:
    """``jquant generate``'s first-token time with an empty, then a warm compilation cache (default model)."""
    import re
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JQUANT_JAX_CACHE": d}
        for _ in range(2):
            cmd = [sys.executable, "-c", "import sys; from jquant.cli import main; sys.exit(main(sys.argv[1:]))"]
            cmd += ["generate", "--prompt", PROMPT, "--max-new-tokens", "64"]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            m = re.search(r"first token after ([0-9.]+) s", p.stderr)
            if m is None:
                raise RuntimeError(p.stderr[-2000:])
            out.append(float(m.group(1)))
    return out[0], out[1]


def _machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        have = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16") if f in have)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores ({flags}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("jax", "jaxlib", "flax", "torch", "transformers", "gguf", "llama-cpp-python"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} absent")
    return ", ".join(out)


def _run_child(spec: str, model: str, tokens: int) -> dict:
    p = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--model", model, "--tokens", str(tokens)],
        capture_output=True,
        text=True,
        env=_env(spec) if spec not in ("kernels", "prefill") else {**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{spec} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=MODELS)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="default: bench/results/cpu/decode[_<model>].md")
    ap.add_argument(
        "--runs",
        default="jquant:auto@1t,jquant:auto@2t,jquant:auto@2t@unrolled,jquant:xla_cpu_chunked,"
        "torch:torch_cpu_qmatmul@1t,torch:torch_cpu_qmatmul@2t,torch:torch_cpu_qmatmul@2t@hf,llamacpp@1t,llamacpp@2t,"
        "transformers@2t",
        help="rows: engine[:kernels][@<n>t][@unrolled][@int8][@hf], comma-separated",
    )
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all rows (round-robin)")
    ap.add_argument("--cli-cache", action="store_true", help="time jquant generate's first token, cold and warm cache")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-shape kernel table")
    ap.add_argument("--kernels-only", action="store_true", help="only the per-shape kernel table (printed)")
    ap.add_argument(
        "--prefill-only", action="store_true", help="only cpu_qmatmul vs xla_cpu_chunked at M = 8..64 (printed)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.model, args.tokens)
        return 0
    if args.kernels_only:
        print(json.dumps(_run_child("kernels", args.model, args.tokens), indent=1))
        return 0
    if args.prefill_only:
        print(f"load average {os.getloadavg()[0]:.1f}; ms of 30 layers' SmolLM2 Q4_1 matmuls at M rows")
        print("| M | cpu_qmatmul | xla_cpu_chunked | kernel speedup |\n|---|---|---|---|")
        for r in _run_child("prefill", args.model, args.tokens):
            c, x = r["cpu_qmatmul"] * 1e3, r["xla_cpu_chunked"] * 1e3
            print(f"| {r['m']} | {c:.1f} | {x:.1f} | {x / c:.2f}x |")
        return 0
    specs = [s.strip() for s in args.runs.split(",") if s.strip()]
    for s in specs:
        parse_spec(s)  # fail early on a typo
    model_path(args.model)  # write the 1B-class file before timing anything
    bandwidth = _bandwidth()
    results: dict[str, list[dict]] = {s: [] for s in specs}
    skipped: dict[str, str] = {}
    loads = []
    for r in range(args.repeats):
        for s in specs:
            if s in skipped:
                continue
            res = _run_child(s, args.model, args.tokens)
            loads.append(os.getloadavg()[0])
            if "skipped" in res:
                skipped[s] = res["skipped"]
                print(f"{s}: skipped: {res['skipped']}", flush=True)
                continue
            results[s].append(res)
            print(f"round {r + 1} {s}: {res['tok_per_s']:.1f} tok/s", flush=True)
    cli = _cli_first_token() if args.cli_cache and args.model == "smollm2" else None
    kern = None if args.no_kernels else _run_child("kernels", args.model, args.tokens)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    best_bw = max(bandwidth.values()) if bandwidth else float("nan")
    title = {
        "smollm2": "SmolLM2-135M-Instruct Q4_1 (GGUF)",
        "1b-q4_0": "Llama-3.2-1B-shaped model, random Q4_0 weights (Q8_0 head)",
        "1b-q4_k": "Llama-3.2-1B-shaped model, random Q4_K weights (Q8_0 head)",
    }[args.model]
    lines = [
        f"# CPU decode: {title}, batch 1, greedy",
        "",
        f"- machine: {_machine()}",
        f"- load average during the runs (1 min): min {min(loads):.1f}, max {max(loads):.1f} (shared box)"
        if loads
        else "- load average: n/a",
        f"- versions: {_versions()}",
        f"- commit: {commit.strip()} (+ working tree); date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- prompt: chat template around {PROMPT!r} (the same token ids for every engine); {args.tokens} new "
        f"tokens; steady rate = tokens 2..N; {args.repeats} round(s), rows run back to back round-robin",
        "- streaming-read bandwidth (kernels_cpu, 512 MiB): "
        + (", ".join(f"{v / 1e9:.1f} GB/s with {t} thread(s)" for t, v in bandwidth.items()) or "n/a")
        + "; 'of bandwidth' = weights MB per token x best tokens/s / the best of the two",
        "",
        "| engine | threads | decode tok/s best | median | all rounds | vs llama.cpp (same threads, median) | "
        "of bandwidth | first token (s) | warm-up / compile (s) | load (s) | weights MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    llama_med = {}
    for s in specs:
        if results[s] and parse_spec(s)[0] == "llamacpp":
            llama_med[parse_spec(s)[2]] = statistics.median(r["tok_per_s"] for r in results[s])
    for s in specs:
        rs = results[s]
        threads = parse_spec(s)[2] or os.cpu_count()
        if not rs:
            lines.append(f"| `{s}` | {threads} | skipped: {skipped.get(s, 'no result')} | | | | | | | | | |")
            continue
        rates = sorted(r["tok_per_s"] for r in rs)
        med, best = statistics.median(rates), rates[-1]
        r0 = max(rs, key=lambda r: r["tok_per_s"])
        ref = llama_med.get(parse_spec(s)[2])
        vs = f"{med / ref:.2f}x" if ref else "n/a"
        frac = r0["weights_mb"] * 1e6 * best / best_bw
        first = min(r["first_token_s"] for r in rs)
        warm = r0.get("warmup_s", r0["compile_s"])
        lines.append(
            f"| {r0['engine']} `{s}` | {threads} | {best:.1f} | {med:.1f} | {[round(x, 1) for x in rates]} | {vs} | "
            f"{frac:.0%} | {first:.2f} | {warm:.1f} | {r0['load_s']:.1f} | {r0['weights_mb']:.1f} | "
            f"{max(r['peak_rss_mb'] for r in rs):.0f} |"
        )
    if cli:
        lines += [
            "",
            f"`jquant generate` (default model, this prompt, {args.tokens} new tokens), persistent compilation cache "
            f"(`JQUANT_JAX_CACHE`): first token {cli[0]:.2f} s cold (empty cache: compile + prefill), "
            f"{cli[1]:.2f} s warm (second run).",
        ]
    if kern:
        bw1, bw2 = bandwidth.get(1, float("nan")), bandwidth.get(2, float("nan"))
        lines += [
            "",
            "Kernel alone (`cpu_qmatmul`, M = 1, f32 activations), each call in a compiled loop over distinct"
            " weights (GB/s = weight bytes / time; of bandwidth = vs the 1- / 2-thread streaming read):",
            "",
            "| model | weight | layout | MB | calls/token | 1 thread | 2 threads | speedup | of bandwidth (1t / 2t) |"
            " int8 activations (opt-in) 1t / 2t |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        tot: dict[str, list[float]] = {}
        for r in kern:
            t = tot.setdefault(r["model"], [0.0, 0.0, 0.0, 0.0])
            t[0] += r["cpu_1t"] * r["calls"]
            t[1] += r["cpu_2t"] * r["calls"]
            t[2] += r.get("int8_1t", float("nan")) * r["calls"]
            t[3] += r.get("int8_2t", float("nan")) * r["calls"]
            g1, g2 = r["mb"] * 1e6 / r["cpu_1t"], r["mb"] * 1e6 / r["cpu_2t"]
            lines.append(
                f"| {r['model']} | {r['shape']} | {r['kind']} | {r['mb']:.2f} | {r['calls']} | {r['cpu_1t'] * 1e6:.0f} us "
                f"({g1 / 1e9:.1f} GB/s) | {r['cpu_2t'] * 1e6:.0f} us ({g2 / 1e9:.1f} GB/s) | "
                f"{r['cpu_1t'] / r['cpu_2t']:.2f}x | {g1 / bw1:.0%} / {g2 / bw2:.0%} | "
                + (f"{r['int8_1t'] * 1e6:.0f} / {r['int8_2t'] * 1e6:.0f} us |" if "int8_1t" in r else "n/a |")
            )
        for m, (a, b, c, d) in tot.items():
            lines.append(
                f"| {m} | **all matmuls of one token** | | | | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms | {a / b:.2f}x | | "
                f"{c * 1e3:.2f} / {d * 1e3:.2f} ms |"
            )
    lines += ["", "Continuations (best round of each row):", ""]
    for s in specs:
        if results[s]:
            lines.append(f"- `{s}`: {max(results[s], key=lambda r: r['tok_per_s'])['text']!r}")
    name = "decode.md" if args.model == "smollm2" else f"decode_{args.model.replace('-', '_')}.md"
    out = Path(args.out or ROOT / "bench" / "results" / "cpu" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
