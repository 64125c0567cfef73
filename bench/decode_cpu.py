"""CPU decode speed and peak memory: SmolLM2-135M-Instruct Q4_1 in jquant vs transformers (same GGUF).

Each engine runs in its own subprocess (so its peak RSS is its own): load the model, greedy-decode
``--tokens`` tokens after a fixed chat prompt once to compile / warm up, then again timed. The
steady decode rate is measured between the first and the last generated token (prefill and
compilation excluded). Writes ``bench/results/cpu/decode.md`` with the machine, versions and commit.

    python bench/decode_cpu.py [--tokens 32] [--out bench/results/cpu/decode.md]
        [--kernels xla_cpu_chunked,auto@1t,auto@2t] [--jquant-only] [--repeats 1] [--cli-cache]

``--kernels``: one jquant row per entry, run with ``JQUANT_KERNELS`` set to it (``auto``: the
dispatcher's own choice); an entry may end in ``@<threads>t`` (``JQUANT_CPU_THREADS``: threads of the
``cpu_qmatmul`` kernel) and/or ``@unrolled`` (layers unrolled instead of ``lax.scan``: a custom call
inside the scanned body reads a copy of its layer's weight slice). The table names the qmatmul
backend each row used, and the decode rate as a fraction of the machine's streaming-read bandwidth
(measured here with 1 and 2 threads: bytes of weights read per token x tokens/s / bandwidth).
``--cli-cache``: also time ``jquant generate``'s first token with a cold and a warm persistent
compilation cache.

Not a test: timings on a shared 2-core box are noisy (the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "What is the capital of France?"


def _jquant(tokens: int) -> dict:
    import jax.numpy as jnp

    import jquant
    from jquant.convert.default_model import default_model_path
    from jquant.models import Generator, from_checkpoint
    from jquant.models.generate import model_bytes
    from jquant.models.tokenizer import load_tokenizer, prompt_ids

    path = default_model_path()
    t0 = time.perf_counter()
    scan = None if os.environ.get("JQ_BENCH_UNROLLED") != "1" else False
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32, scan_layers=scan)
    load_s = time.perf_counter() - t0
    tok = load_tokenizer(path)
    ids = prompt_ids(tok, PROMPT)
    gen = Generator(model)
    t0 = time.perf_counter()
    gen(ids, max_new_tokens=tokens)  # compiles prefill + step
    compile_s = time.perf_counter() - t0
    stamps: list[float] = []
    t0 = time.perf_counter()
    out = gen(ids, max_new_tokens=tokens, on_token=lambda t: stamps.append(time.perf_counter()))
    held, bf16 = model_bytes(model)
    name = _backend_name()
    how = []
    if name == "cpu_qmatmul":
        from kernels_cpu import get_isa

        threads = os.environ.get("JQUANT_CPU_THREADS") or str(os.cpu_count())
        how.append(f"{get_isa()}, {threads} thread{'s' if threads != '1' else ''}")
    how.append("layers unrolled" if scan is False else "layers scanned")
    return dict(
        engine=f"jquant ({name} qmatmul, f32 activations; {'; '.join(how)})",
        label=f"jquant [{name}; {'; '.join(how)}]",
        load_s=load_s,
        compile_s=compile_s,
        first_token_s=stamps[0] - t0,
        tok_per_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]),
        weights_mb=held / 1e6,
        bf16_weights_mb=bf16 / 1e6,
        text=tok.decode(out[0]),
    )


def _backend_name() -> str:
    """The qmatmul backend the dispatcher picks here for a Q4_1 [*, 576] x (49152, 576) call (the model's kind)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jquant.core import QArray, get_qtype
    from jquant.ops import select

    w = QArray(
        data=np.zeros((49152, 288), np.uint8),
        scale=np.ones((49152, 18), np.float16),
        zero=np.zeros((49152, 18), np.float16),
        qtype=get_qtype("uint4"),
        shape=(49152, 576),
        block=(1, 32),
    )
    return select(jax.ShapeDtypeStruct((1, 576), jnp.float32), w).backend.name


def _transformers(tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jquant.convert.default_model import default_model_path

    path = default_model_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def run(n):
        with torch.no_grad():
            return model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
            )

    run(tokens)  # warm-up
    t0 = time.perf_counter()
    run(1)
    t1 = time.perf_counter()
    out = run(tokens)
    t2 = time.perf_counter()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(
        engine=f"transformers (gguf_file=, dequantized to f32, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        load_s=load_s,
        compile_s=0.0,
        first_token_s=t1 - t0,
        tok_per_s=(tokens - 1) / ((t2 - t1) - (t1 - t0)),
        weights_mb=weights / 1e6,
        bf16_weights_mb=weights / 2e6,
        text=tok.decode(out[0, ids.shape[1] :]),
    )


# SmolLM2-135M's matmuls per token (fused q/k/v and gate/up as the model runs them): (N, K, bits, calls).
KERNEL_SHAPES = [(960, 576, 4, 30), (576, 576, 4, 30), (3072, 576, 4, 30), (576, 1536, 4, 30), (49152, 576, 8, 1)]


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
    """``cpu_qmatmul`` vs ``xla_cpu_chunked`` at M = 1 on the model's shapes (Q4_1 / Q8_0 layouts), each
    call in a compiled loop over 30 distinct weights (as the layers are: nothing stays in cache)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jquant.core import QArray, get_qtype
    from jquant.ops.xla_cpu import chunked_qmatmul
    from kernels_cpu import cpu_qmatmul, set_threads

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
    for n, k, bits, calls in KERNEL_SHAPES:
        ws = [jax.device_put(weight(n, k, bits)) for _ in range(min(calls, 30))]
        x = jnp.asarray(rng.standard_normal((1, max(n, k))).astype(np.float32))
        row = dict(shape=f"{n} x {k}", kind="Q4_1" if bits == 4 else "Q8_0", calls=calls, mb=ws[0].nbytes / 1e6)
        for t in threads:
            set_threads(t)
            row[f"cpu_{t}t"] = _time_calls(cpu_qmatmul, x, ws, k)
        set_threads(0)
        row["chunked"] = _time_calls(chunked_qmatmul, x, ws, k)
        rows.append(row)
    return rows


def _child(engine: str, tokens: int) -> None:
    if engine == "kernels":
        print("RESULT " + json.dumps(_kernel_rows()))
        return
    res = {"jquant": _jquant, "transformers": _transformers}[engine](tokens)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _bandwidth() -> dict[int, float]:
    """Streaming-read bytes/s with 1 and 2 threads (empty when the CPU kernel library is unavailable)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from kernels_cpu import read_bandwidth

        return {t: read_bandwidth(1 << 29, t) for t in (1, 2)}
    except Exception as e:  # no compiler: no probe
        print(f"bandwidth probe unavailable: {e}", file=sys.stderr)
        return {}


def _bw_text(bw: dict[int, float]) -> str:
    return ", ".join(f"{v / 1e9:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t, v in bw.items()) or "n/a"


def _cli_first_token() -> tuple[float, float]:
    """``jquant generate``'s first-token time with an empty, then a warm compilation cache."""
    import re
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JQUANT_JAX_CACHE": d}
        for _ in range(2):
            p = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from jquant.cli import main; sys.exit(main(sys.argv[1:]))",
                    "generate",
                    "--prompt",
                    PROMPT,
                    "--max-new-tokens",
                    "32",
                ],  # fmt: skip
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
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
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    )


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("jax", "jaxlib", "flax", "torch", "transformers", "gguf"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "bench/results/cpu/decode.md"))
    ap.add_argument(
        "--kernels",
        default="xla_cpu_chunked,auto@1t,auto@2t,auto@1t@unrolled,auto@2t@unrolled",
        help="JQUANT_KERNELS per jquant row (auto = dispatcher), optionally @<n>t (kernel threads), @unrolled",
    )
    ap.add_argument("--cli-cache", action="store_true", help="time jquant generate's first token, cold and warm cache")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-shape kernel table")
    ap.add_argument("--jquant-only", action="store_true", help="skip the transformers row")
    ap.add_argument("--repeats", type=int, default=1, help="runs per row; the table reports the median-rate run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.tokens)
        return 0
    rows = []
    runs = [("jquant", k.strip()) for k in args.kernels.split(",") if k.strip()]
    if not args.jquant_only:
        runs.append(("transformers", ""))
    bandwidth = _bandwidth()
    for engine, spec in runs:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for var in ("JQUANT_KERNELS", "JQUANT_CPU_THREADS", "JQ_BENCH_UNROLLED"):
            env.pop(var, None)
        kernels, *opts = spec.split("@")
        for o in opts:
            if o.endswith("t") and o[:-1].isdigit():
                env["JQUANT_CPU_THREADS"] = o[:-1]
            elif o == "unrolled":
                env["JQ_BENCH_UNROLLED"] = "1"
        if kernels and kernels != "auto":
            env["JQUANT_KERNELS"] = kernels
        results = []
        for _ in range(args.repeats):
            p = subprocess.run(
                [sys.executable, __file__, "--child", engine, "--tokens", str(args.tokens)],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                return 1
            results.append(json.loads(line[7:]))
            print(results[-1], flush=True)
        results.sort(key=lambda r: r["tok_per_s"])
        row = results[len(results) // 2]
        row["all_rates"] = [round(r["tok_per_s"], 2) for r in results]
        rows.append(row)
    cli = _cli_first_token() if args.cli_cache else None
    kern = None
    if not args.no_kernels:
        p = subprocess.run(
            [sys.executable, __file__, "--child", "kernels"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        kern = json.loads(line[7:]) if line else None
        if kern is None:
            print(p.stderr[-3000:], file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    load = os.getloadavg()
    lines = [
        "# CPU decode: SmolLM2-135M-Instruct Q4_1 (GGUF), batch 1, greedy",
        "",
        f"- machine: {_machine()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared box)",
        f"- versions: {_versions()}",
        f"- commit: {commit.strip()}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- prompt: chat template around {PROMPT!r}; {args.tokens} new tokens; steady rate = tokens 2..N;"
        f" {args.repeats} run(s) per row, median reported (all runs' rates in the last column)",
        "",
        f"- streaming-read bandwidth (kernels_cpu.read_bandwidth, 512 MiB): {_bw_text(bandwidth)}; "
        "'of bandwidth' = weights MB per token x tokens/s / the best of the two",
        "",
        "| engine | decode tokens/s | of bandwidth | first token (s) | compile (s) | load (s) | weights MB (bf16 MB) | peak RSS MB | all rates |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    best_bw = max(bandwidth.values()) if bandwidth else float("nan")
    for r in rows:
        frac = r["weights_mb"] * 1e6 * r["tok_per_s"] / best_bw
        lines.append(
            f"| {r['engine']} | {r['tok_per_s']:.2f} | {frac:.0%} | {r['first_token_s']:.2f} | {r['compile_s']:.1f} | "
            f"{r['load_s']:.1f} | {r['weights_mb']:.1f} ({r['bf16_weights_mb']:.1f}) | {r['peak_rss_mb']:.0f} | {r['all_rates']} |"
        )
    if cli:
        lines += [
            "",
            "`jquant generate` (default model, 32 new tokens), persistent compilation cache "
            f"(`JQUANT_JAX_CACHE`): first token {cli[0]:.2f} s cold (empty cache: compile + prefill), "
            f"{cli[1]:.2f} s warm (second run).",
        ]
    if kern:
        bw1 = bandwidth.get(1, float("nan"))
        bw2 = bandwidth.get(2, float("nan"))
        lines += [
            "",
            "Kernel alone, M = 1, f32 activations, each call in a compiled loop over 30 distinct weights (per call;"
            " GB/s = weight bytes / time; of bandwidth = vs the 1- / 2-thread streaming read):",
            "",
            "| weight | layout | MB | calls/token | cpu_qmatmul 1 thread | 2 threads | speedup | "
            "xla_cpu_chunked | of bandwidth (1t / 2t) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        tot = {"cpu_1t": 0.0, "cpu_2t": 0.0, "chunked": 0.0}
        for r in kern:
            for key in tot:
                tot[key] += r[key] * r["calls"]
            g1, g2 = r["mb"] * 1e6 / r["cpu_1t"], r["mb"] * 1e6 / r["cpu_2t"]
            lines.append(
                f"| {r['shape']} | {r['kind']} | {r['mb']:.2f} | {r['calls']} | {r['cpu_1t'] * 1e6:.0f} us "
                f"({g1 / 1e9:.1f} GB/s) | {r['cpu_2t'] * 1e6:.0f} us ({g2 / 1e9:.1f} GB/s) | "
                f"{r['cpu_1t'] / r['cpu_2t']:.2f}x | {r['chunked'] * 1e6:.0f} us | {g1 / bw1:.0%} / {g2 / bw2:.0%} |"
            )
        lines.append(
            f"| **all matmuls of one token** | | | | {tot['cpu_1t'] * 1e3:.2f} ms | {tot['cpu_2t'] * 1e3:.2f} ms | "
            f"{tot['cpu_1t'] / tot['cpu_2t']:.2f}x | {tot['chunked'] * 1e3:.2f} ms | |"
        )
    lines += ["", "Continuations:", ""] + [
        f"- {r.get('label', r['engine'].split(' ')[0])}: {r['text']!r}" for r in rows
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
