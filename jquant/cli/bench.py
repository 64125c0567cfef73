"""``jquant bench qmatmul|decode|torch [ARGS...]``: run one of the benchmark modules installed with jquant.

The ``bench`` package ships with jquant; each benchmark runs as ``python -m bench.<module>`` in a
child process (its own environment variables and peak memory), prints its table last, and writes
its results (markdown + JSON, with card, versions and commit) into ``--out``:

* ``qmatmul``: ``bench.qmatmul``, W4A16 / W8A16 qmatmul vs cuBLAS and peers (NVIDIA GPU);
* ``decode``: ``bench.decode_e2e`` on a GPU (Llama-3-8B-shaped model, W4A16 vs bf16),
  ``bench.decode_cpu`` on CPU (SmolLM2-135M Q4_1, jquant vs transformers);
* ``torch``: ``bench.torch_qmatmul``, the Torch bridge's Triton kernels (NVIDIA GPU; ``--dry``
  checks the script on the CPU).

Arguments after the benchmark's name go to the module as they are (``jquant bench decode -- --help``
lists them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["register", "run", "command", "BENCHMARKS"]

# name -> (module on a GPU, module on CPU or None when it needs a GPU)
BENCHMARKS = {
    "qmatmul": ("bench.qmatmul", None),
    "decode": ("bench.decode_e2e", "bench.decode_cpu"),
    "torch": ("bench.torch_qmatmul", None),
}


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark (qmatmul, decode, torch), print its table and write the results folder",
        description="Run one benchmark of the bench package (installed with jquant) as `python -m bench.<module>` in "
        "a child process; it prints its table last and writes markdown + JSON results (card, versions, commit) into "
        "--out. qmatmul: bench.qmatmul, W4A16 / W8A16 qmatmul vs cuBLAS and peers (NVIDIA GPU). decode: "
        "bench.decode_e2e on a GPU (Llama-3-8B-shaped, W4A16 vs bf16), bench.decode_cpu on CPU (SmolLM2-135M Q4_1, "
        "jquant vs transformers). torch: bench.torch_qmatmul, the Torch bridge's Triton kernels (NVIDIA GPU; --dry "
        "checks the script on CPU). Arguments after NAME go to the module (`jquant bench decode -- --help` lists them).",
    )
    p.add_argument("name", metavar="NAME", choices=sorted(BENCHMARKS), help="which benchmark: " + ", ".join(BENCHMARKS))
    p.add_argument(
        "--out", default=None,
        help="results folder (default: bench/results/<card> under the current folder, bench/results/cpu without a GPU)",
    )  # fmt: skip
    p.add_argument(
        "args", metavar="ARGS", nargs=argparse.REMAINDER, help="passed to the benchmark module (default: none)"
    )
    p.set_defaults(func=run)


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from ``nvidia-smi``, or None (no JAX / torch import)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    return name or None


def command(name: str, gpu: str | None, out: str | None, args: list[str]) -> tuple[list[str], Path]:
    """The child command line for benchmark ``name`` on ``gpu`` (None: CPU) and the results folder it writes."""
    from bench.env import card_slug

    gpu_module, cpu_module = BENCHMARKS[name]
    dry = "--dry" in args
    folder = Path(out) if out else Path("bench") / "results" / (card_slug(gpu) if gpu and not dry else "cpu")
    module = gpu_module if gpu or cpu_module is None else cpu_module
    # bench.decode_cpu writes one file; the others a folder
    dest = str(folder / "decode.md") if module == "bench.decode_cpu" else str(folder)
    return [sys.executable, "-m", module, "--out", dest, *args], folder


def run(args) -> int:
    from jquant.core.errors import FormatError

    extra = list(args.args[1:] if args.args[:1] == ["--"] else args.args)
    out = args.out
    for i, a in enumerate(extra):  # `jquant bench NAME --out DIR`: argparse leaves it in the remainder
        if a == "--out" and i + 1 < len(extra):
            out = extra[i + 1]
            del extra[i : i + 2]
            break
        if a.startswith("--out="):
            out = a.split("=", 1)[1]
            del extra[i]
            break
    gpu = gpu_name()
    if gpu is None and BENCHMARKS[args.name][1] is None and "--dry" not in extra:
        raise FormatError(
            f"`jquant bench {args.name}` needs an NVIDIA GPU and none is visible (nvidia-smi)"
            + ("; `jquant bench torch --dry` checks the script on the CPU" if args.name == "torch" else "")
            + "; `jquant bench decode` runs on the CPU"
        )
    cmd, folder = command(args.name, gpu, out, extra)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"running {' '.join(cmd[1:])} on {gpu or 'CPU'}", file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if rc == 0:
        print(f"results in {folder}/", file=sys.stderr)
    return rc
