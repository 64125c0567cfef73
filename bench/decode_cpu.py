"""CPU decode speed and peak memory: SmolLM2-135M-Instruct Q4_1 in jquant vs transformers (same GGUF).

Each engine runs in its own subprocess (so its peak RSS is its own): load the model, greedy-decode
``--tokens`` tokens after a fixed chat prompt once to compile / warm up, then again timed. The
steady decode rate is measured between the first and the last generated token (prefill and
compilation excluded). Writes ``bench/results/cpu/decode.md`` with the machine, versions and commit.

    python bench/decode_cpu.py [--tokens 32] [--out bench/results/cpu/decode.md]
        [--kernels xla_reference,auto] [--jquant-only] [--repeats 1]

``--kernels``: one jquant row per entry, run with ``JQUANT_KERNELS`` set to it (``auto``: the
dispatcher's own choice); the table names the qmatmul backend each row used.

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
    model = from_checkpoint(jquant.convert(path), dtype=jnp.float32)
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
    return dict(
        engine=f"jquant ({_backend_name()} qmatmul, f32 activations)",
        label=f"jquant [{_backend_name()}]",
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


def _child(engine: str, tokens: int) -> None:
    res = {"jquant": _jquant, "transformers": _transformers}[engine](tokens)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


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
    ap.add_argument("--kernels", default="xla_reference,auto", help="JQUANT_KERNELS per jquant row; auto = dispatcher")
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
    for engine, kernels in runs:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("JQUANT_KERNELS", None)
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
        "| engine | decode tokens/s | first token (s) | compile (s) | load (s) | weights MB (bf16 MB) | peak RSS MB | all rates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['tok_per_s']:.2f} | {r['first_token_s']:.2f} | {r['compile_s']:.1f} | "
            f"{r['load_s']:.1f} | {r['weights_mb']:.1f} ({r['bf16_weights_mb']:.1f}) | {r['peak_rss_mb']:.0f} | {r['all_rates']} |"
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
