"""``jquant generate [SRC] --prompt ...``: stream a completion and report speed and weight memory.

Several ``--prompt`` values and / or ``--prompts-file`` lines run as one batch (prompts of different
lengths, `jquant.models.Generator`): each completion is the one that prompt gets alone; they are
printed once the batch is done, each under a ``--- prompt i/n`` header.
"""

from __future__ import annotations

import sys
import time

from jquant.cli.common import check_src, format_label, mb
from jquant.core.errors import FormatError


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with a checkpoint (default: SmolLM2-135M-Instruct Q4_1)",
        description="Stream a completion of --prompt (wrapped in the model's chat template), stop at the model's "
        "end tokens or after --max-new-tokens, and report weight memory (MB = 10^6 bytes) and tokens/s on stderr. "
        "Several prompts (--prompt repeated, --prompts-file) run as one batch; each completion equals that prompt "
        "run alone, and each stops on its own.",
    )
    p.add_argument(
        "src", metavar="SRC", nargs="?", default=None,
        help="HF folder, .gguf file or canonical folder (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF)",
    )  # fmt: skip
    p.add_argument(
        "--prompt", action="append", default=None, metavar="TEXT",
        help=f"the user message to complete (default: {DEFAULT_PROMPT!r}); repeat it for a batch",
    )  # fmt: skip
    p.add_argument(
        "--prompts-file", metavar="FILE", default=None,
        help="prompts, one per line (blank lines skipped; '-': stdin), after any --prompt values; all run as one batch",
    )  # fmt: skip
    p.add_argument("--system", default=None, help="system message for chat models (default: the template's own)")
    p.add_argument("--no-chat", action="store_true", help="feed the prompt as is, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64, help="stop after this many new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument(
        "--seed", type=int, default=0,
        help="random seed for sampling; prompt i of a batch uses seed + i (its own stream: the tokens it gets alone "
        "with that seed)",
    )  # fmt: skip
    p.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"),
        help="activation dtype (default: float32 on CPU, bfloat16 on GPU)",
    )  # fmt: skip
    p.add_argument(
        "--tp", type=int, default=1, metavar="N",
        help="tensor parallelism: split the model over N devices (jquant.parallel); on CPU set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N",
    )  # fmt: skip
    p.add_argument(
        "--kv-cache-dtype", default="auto", choices=("auto", "fp8_e4m3", "fp8_e5m2", "int8"),
        help="KV cache storage: auto = the model dtype; fp8/int8 codes with the checkpoint's KV scales, "
        "else scales computed on the first prefill (jquant.models.kv_quant)",
    )  # fmt: skip
    p.set_defaults(func=run)


DEFAULT_PROMPT = "What is the capital of France?"


def read_prompts(args) -> list[str]:
    """The prompts of ``--prompt`` (in order), then of ``--prompts-file``; the default prompt if none.

    Raises:
        FormatError: a ``--prompts-file`` that does not exist or holds no prompt.
    """
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        if args.prompts_file == "-":
            text = sys.stdin.read()
        else:
            text = check_src(args.prompts_file).read_text(encoding="utf-8")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise FormatError("--prompts-file holds no prompt (one per line expected)", file=args.prompts_file)
        prompts += lines
    return prompts or [DEFAULT_PROMPT]


def default_src() -> str:
    from jquant.convert.default_model import default_model_path

    return str(default_model_path())


def enable_compile_cache() -> str | None:
    """Turns on JAX's persistent compilation cache so a second run starts without recompiling.

    The cache lives in ``$JQUANT_JAX_CACHE`` (default ``~/.cache/jquant/jax``; empty: off), unless
    the user already configured one (``JAX_COMPILATION_CACHE_DIR``). Returns the directory in use.
    """
    import os
    from pathlib import Path

    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    d = os.environ.get("JQUANT_JAX_CACHE", str(Path.home() / ".cache" / "jquant" / "jax"))
    if not d:
        return None
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small CPU programs count too
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return d


def kernels_line(model, m: int, dtype) -> str:
    """Which qmatmul backends the model's linear layers take for M = ``m`` rows (`jquant.ops.select`),
    e.g. ``"cpu_qmatmul x5 (stacked layers read in place)"``; scanned layers count once."""
    import collections

    import jax
    from flax import nnx

    from jquant.core.qarray import QArray
    from jquant.nn import QuantEmbed, QuantLinear
    from jquant.ops.qmatmul import layer_view, reads_stacked, select

    stacked = getattr(model, "stacked_layers", None)
    inside = {id(n) for _, n in nnx.iter_graph(stacked) if isinstance(n, QuantLinear)} if stacked is not None else set()
    count: collections.Counter = collections.Counter()
    notes: dict[str, str] = {}
    for _, node in nnx.iter_graph(model):
        w = node.weight.get_value() if isinstance(node, QuantLinear) else None
        if isinstance(node, QuantEmbed) and getattr(model, "lm_head", 0) is None:  # tied LM head: embed.attend
            w = node.embedding.get_value()
        if not isinstance(w, QArray):
            continue
        r = select(jax.ShapeDtypeStruct((m, w.shape[1]), dtype), layer_view(w) if id(node) in inside else w)
        count[r.backend.name] += 1
        if id(node) in inside:
            notes[r.backend.name] = (
                "stacked layers read in place" if reads_stacked(r.backend) else "stacked layers sliced per call"
            )
    return ", ".join(f"{b} x{c}" + (f" ({notes[b]})" if b in notes else "") for b, c in count.items()) or "none"


def run(args) -> int:
    # checks and the tokenizer first: a wrong path or a missing package is reported before JAX loads
    src = str(check_src(args.src)) if args.src else default_src()
    prompts = read_prompts(args)
    from jquant.convert.tokenizer import end_token_ids, load_tokenizer

    tok = load_tokenizer(src)

    enable_compile_cache()
    import jax.numpy as jnp

    import jquant
    from jquant.models import Generator, SamplingConfig, from_checkpoint
    from jquant.models.generate import CACHE_BUCKET, PROMPT_BUCKET, model_bytes
    from jquant.models.kv_cache import cache_bytes
    from jquant.models.tokenizer import prompt_ids

    err = sys.stderr
    t0 = time.perf_counter()
    ckpt = jquant.convert(src)
    mesh = None
    if args.tp > 1:
        from jquant.parallel import make_mesh

        mesh = make_mesh(args.tp)
    model = from_checkpoint(
        ckpt, dtype=getattr(jnp, args.dtype) if args.dtype else None, mesh=mesh, kv_cache_dtype=args.kv_cache_dtype
    )
    rows = [prompt_ids(tok, p, chat=not args.no_chat, system=args.system)[0] for p in prompts]
    b, longest = len(rows), max(len(r) for r in rows)
    held, bf16 = model_bytes(model)
    sizes = f"prompt {longest} tokens" if b == 1 else f"{b} prompts of {'/'.join(str(len(r)) for r in rows)} tokens"
    print(
        f"[{format_label(ckpt)}] {src}: weights {mb(held)} on device (bf16: {mb(bf16)}, "
        f"{bf16 / held:.2f}x), loaded in {time.perf_counter() - t0:.1f} s; {sizes}",
        file=err,
    )
    t_pad = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
    print(
        f"kernels (jquant.ops.explain): decode {kernels_line(model, b, model.dtype)}; "
        f"prefill {kernels_line(model, b * t_pad, model.dtype)}",
        file=err,
    )
    slots = -(-(t_pad + args.max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET
    kvq, c = model.kv_quant, model.config
    kv_bytes = cache_bytes(model, b, slots)
    float_bytes = (
        2 * c.num_hidden_layers * b * slots * c.num_key_value_heads * c.head_dim * jnp.dtype(model.dtype).itemsize
    )
    what = "model dtype" if kvq is None else f"{kvq.dtype} codes, scales from {kvq.source}"
    print(
        f"KV cache: {mb(kv_bytes)} for {slots} slots{'' if b == 1 else f' x {b} rows'} ({what}; "
        f"{kv_bytes / float_bytes:.2f}x the {jnp.dtype(model.dtype).name} cache)",
        file=err,
    )
    eos = end_token_ids(tok, src, model.config.eos_token_ids)
    generated: list[int] = []
    printed = ""
    stamps: list[float] = []

    def on_token(t):
        nonlocal printed
        stamps.append(time.perf_counter())
        if b > 1:  # a batch is printed when it is done, each completion under its prompt
            return
        generated.append(int(t[0]))
        text = tok.decode(generated, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    t1 = time.perf_counter()
    out = Generator(model).completions(rows, max_new_tokens=args.max_new_tokens, sampling=sampling,
                                       seed=[args.seed + i for i in range(b)], eos_token_ids=eos,
                                       on_token=on_token)  # fmt: skip
    if b == 1:
        print(file=sys.stdout)
    else:
        for i, (prompt, o) in enumerate(zip(prompts, out), 1):
            print(f"--- prompt {i}/{b}: {prompt!r} ({len(rows[i - 1])} tokens)", file=sys.stdout)
            print(tok.decode(o.tolist(), skip_special_tokens=True), file=sys.stdout)
    first = stamps[0] - t1 if stamps else float("nan")
    # token 2 waits for the decode step's compilation: the steady rate is measured from token 2 on
    steps = (len(stamps) - 2) / (stamps[-1] - stamps[1]) if len(stamps) > 2 else float("nan")
    n = sum(len(o) for o in out)
    if b == 1:
        rate = f"decode {steps:.2f} tokens/s"
    else:  # stopped rows still ride along in the batched step: count only the tokens kept
        kept = sum(max(len(o) - 2, 0) for o in out) / (stamps[-1] - stamps[1]) if len(stamps) > 2 else float("nan")
        rate = f"decode {steps:.2f} steps/s x {b} rows, {kept:.2f} tokens/s kept"
    counts = "" if b == 1 else f" ({'/'.join(str(len(o)) for o in out)} per prompt)"
    print(f"{n} tokens{counts}; first token after {first:.2f} s (compile + prefill), {rate}", file=err)
    return 0
