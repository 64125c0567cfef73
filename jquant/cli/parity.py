"""``jquant parity [SRC]``: jquant's logits and greedy continuation vs transformers' on the same checkpoint.

Progress goes to stderr as each step starts; the report to stdout, ending with one verdict line::

    PASS: 2 prompts; max|diff|/std 1.3e-05 <= 1e-03, top-1 agreement 100.0% >= 100.0%, greedy continuations identical

The exit status is 0 on PASS and 1 on FAIL. Greedy continuations stop at the model's end tokens
(e.g. ``<|im_end|>``), as ``jquant generate`` does.
"""

from __future__ import annotations

import sys
import time

from jquant.cli.common import check_src

DEFAULT_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")


def register(sub) -> None:
    p = sub.add_parser(
        "parity",
        help="compare jquant's logits with transformers' for a checkpoint (PASS / FAIL)",
        description="Run each prompt through jquant (float32) and transformers on the same checkpoint; compare the "
        "logits (max|diff| / std of transformers' logits, top-1 agreement) and the greedy continuations, and end "
        "with a PASS / FAIL line (exit status 1 on FAIL).",
    )
    p.add_argument(
        "src", metavar="SRC", nargs="?", default=None,
        help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF)",
    )  # fmt: skip
    p.add_argument(
        "--prompt", action="append",
        help="prompt, repeatable (default: 'What is the capital of France?' and 'Write a haiku about the sea.')",
    )  # fmt: skip
    p.add_argument("--no-chat", action="store_true", help="feed the prompts as they are, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy continuation length at most")
    p.add_argument("--max-rel", type=float, default=1e-3, help="FAIL above this max|logit diff| / std")
    p.add_argument("--min-top1", type=float, default=1.0, help="FAIL below this fraction of agreeing argmaxes")
    p.set_defaults(func=run)


def _until_end(ids, end: set[int]) -> list[int]:
    """Tokens up to and including the first end token."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in end:
            break
    return out


def verdict(results: list[tuple], max_rel: float, min_top1: float) -> tuple[bool, str]:
    """(passed, the verdict line) for per-prompt ``(LogitAgreement, greedy_identical)`` results."""
    failures = []
    for i, (report, same) in enumerate(results, 1):
        if report.rel > max_rel:
            failures.append(f"prompt {i}: max|diff|/std {report.rel:.1e} > {max_rel:.0e}")
        if report.top1_agreement < min_top1:
            failures.append(f"prompt {i}: top-1 agreement {report.top1_agreement:.1%} < {min_top1:.1%}")
        if not same:
            failures.append(f"prompt {i}: greedy continuations differ")
    if failures:
        limits = f"max|diff|/std <= {max_rel:.0e}, top-1 agreement >= {min_top1:.1%}, greedy identical"
        return False, f"FAIL: {'; '.join(failures)} (thresholds: {limits})"
    rel = max(r.rel for r, _ in results)
    top1 = min(r.top1_agreement for r, _ in results)
    n = len(results)
    return True, (
        f"PASS: {n} prompt{'s' if n > 1 else ''}; max|diff|/std {rel:.1e} <= {max_rel:.0e}, "
        f"top-1 agreement {top1:.1%} >= {min_top1:.1%}, greedy continuations identical"
    )


def run(args) -> int:
    src = str(check_src(args.src)) if args.src else None
    err = sys.stderr
    t0 = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.1f} s] {msg}", file=err, flush=True)

    from jquant.cli.generate import default_src
    from jquant.convert.tokenizer import end_token_ids, load_tokenizer

    src = src or default_src()
    step(f"tokenizer of {src}")
    tok = load_tokenizer(src)
    step("loading JAX and converting the checkpoint")
    import jax.numpy as jnp

    import jquant
    from jquant.models import Generator, from_checkpoint
    from jquant.models.tokenizer import prompt_ids
    from jquant.parity import compare_logits, load_transformers_model, transformers_greedy, transformers_logits

    model = from_checkpoint(jquant.convert(src), dtype=jnp.float32)
    step("loading the checkpoint with transformers (the oracle)")
    oracle = load_transformers_model(src)
    end = set(end_token_ids(tok, src, model.config.eos_token_ids))
    gen = Generator(model)
    prompts = args.prompt or DEFAULT_PROMPTS
    results = []
    for i, prompt in enumerate(prompts, 1):
        ids = prompt_ids(tok, prompt, chat=not args.no_chat)
        step(f"prompt {i}/{len(prompts)}: logits (jquant compiles on first use)")
        report = compare_logits(gen.logits(ids), transformers_logits(oracle, ids))
        step(f"prompt {i}/{len(prompts)}: greedy continuations, {args.max_new_tokens} tokens at most")
        ours = _until_end(gen(ids, max_new_tokens=args.max_new_tokens, eos_token_ids=sorted(end))[0], end)
        theirs = _until_end(transformers_greedy(oracle, ids, args.max_new_tokens)[0], end)
        same = ours == theirs
        results.append((report, same))
        stop = "stopped at an end token" if ours and ours[-1] in end else "no end token"
        print(f"prompt {prompt!r} ({ids.shape[1]} tokens): {report}")
        print(f"  jquant       : {tok.decode(ours)!r}")
        print(f"  transformers : {tok.decode(theirs)!r}")
        print(f"  greedy {len(ours)} tokens {'identical' if same else 'DIFFER'} ({stop})")
    ok, line = verdict(results, args.max_rel, args.min_top1)
    print(line)
    sys.stdout.flush()
    return 0 if ok else 1
