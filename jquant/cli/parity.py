"""``jquant parity [SRC]``: jquant's logits and greedy continuation vs transformers' on the same checkpoint.

Progress goes to stderr as each step starts; the report to stdout, ending with one verdict line::

    PASS: 2 prompts; max|diff|/std 1.3e-05 <= 1e-03, top-1 agreement 100.0% >= 100.0%, greedy continuations identical

The exit status is 0 on PASS and 1 on FAIL. Greedy continuations stop at the model's end tokens
(e.g. ``<|im_end|>``), as ``jquant generate`` does.

The reference (``--reference``, printed on the ``reference:`` line) is ``transformers`` loading
SRC itself when it can (HF folders through their own quantization integrations, ``.gguf`` files
through gguf-py), else the ``spec``: transformers built from the checkpoint's config over
``jquant.dequantize``d weights, the inputs of layers with an activation recipe fake-quantized by
the numpy spec (`torch_bridge.parity.dense_model`, the reference of ``jquant parity-torch``).
``auto`` picks the spec for a canonical folder (which transformers cannot read) and for any
source whose ``from_pretrained`` raises, and says why. Checkpoints that quantize activations are
held to `jquant.parity.ACT_MAX_REL` / `jquant.parity.ACT_MIN_TOP1` and their greedy continuations
are reported, not required to agree: a last-bit float32 difference upstream can flip an fp8 / int8
activation code (`jquant.parity` gives the measurements). Their weights are then checked alone, to
the float32 bounds: the activation recipes removed from both jquant and the spec.
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
    p.add_argument(
        "--max-rel", type=float, default=None,
        help="FAIL above this max|logit diff| / std (default 1e-3; 2.0 when the checkpoint quantizes activations)",
    )  # fmt: skip
    p.add_argument(
        "--min-top1", type=float, default=None,
        help="FAIL below this fraction of agreeing argmaxes (default 1.0; 0.8 when the checkpoint quantizes activations)",
    )  # fmt: skip
    p.add_argument(
        "--reference", choices=("auto", "transformers", "spec"), default="auto",
        help="transformers loading SRC, or the spec (transformers from the config over jquant.dequantize'd weights); "
        "auto: transformers when it loads SRC, else the spec (default)",
    )  # fmt: skip
    p.set_defaults(func=run)


def _until_end(ids, end: set[int]) -> list[int]:
    """Tokens up to and including the first end token."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in end:
            break
    return out


def verdict(results: list[tuple], max_rel: float, min_top1: float, greedy: bool = True) -> tuple[bool, str]:
    """(passed, the verdict line) for per-prompt ``(LogitAgreement, greedy_identical)`` results.

    ``greedy=False`` (activation-quantized checkpoints) reports how many continuations agree
    instead of requiring all of them to.
    """
    failures = []
    for i, (report, same) in enumerate(results, 1):
        if report.rel > max_rel:
            failures.append(f"prompt {i}: max|diff|/std {report.rel:.1e} > {max_rel:.0e}")
        if report.top1_agreement < min_top1:
            failures.append(f"prompt {i}: top-1 agreement {report.top1_agreement:.1%} < {min_top1:.1%}")
        if greedy and not same:
            failures.append(f"prompt {i}: greedy continuations differ")
    if failures:
        limits = f"max|diff|/std <= {max_rel:.0e}, top-1 agreement >= {min_top1:.1%}"
        limits += ", greedy identical" if greedy else ""
        return False, f"FAIL: {'; '.join(failures)} (thresholds: {limits})"
    rel = max(r.rel for r, _ in results)
    top1 = min(r.top1_agreement for r, _ in results)
    n = len(results)
    if greedy:
        tail = "greedy continuations identical"
    else:
        tail = (
            f"greedy continuations identical in {sum(s for _, s in results)}/{n} (not required: activations quantized)"
        )
    return True, (
        f"PASS: {n} prompt{'s' if n > 1 else ''}; max|diff|/std {rel:.1e} <= {max_rel:.0e}, "
        f"top-1 agreement {top1:.1%} >= {min_top1:.1%}, {tail}"
    )


def reference_model(src: str, ckpt, choice: str):
    """The reference torch model for ``src`` and a line saying which one it is and why.

    Args:
        src: the checkpoint path given to ``jquant parity``.
        ckpt: ``jquant.convert(src)`` (the spec is built from it).
        choice: ``transformers`` (``from_pretrained`` of SRC; its errors propagate), ``spec``, or
            ``auto`` (transformers, else the spec when SRC is a canonical folder or
            ``from_pretrained`` raises; the reason is part of the returned line).

    Returns:
        (transformers model in eval mode, float32; the ``reference: ...`` description).
    """
    from jquant.convert import is_canonical
    from jquant.parity import load_transformers_model

    why = "--reference spec"
    if choice == "transformers":
        if is_canonical(src):
            from jquant.core.errors import UnsupportedFormatError

            raise UnsupportedFormatError(
                "transformers cannot load a canonical jquant folder; use --reference spec (or auto)", file=src
            )
        return load_transformers_model(src), "reference: transformers (from_pretrained of SRC)"
    if choice == "auto":
        if is_canonical(src):
            why = "transformers cannot load a canonical jquant folder"
        else:
            try:
                return load_transformers_model(src), "reference: transformers (from_pretrained of SRC)"
            except Exception as e:  # said on the reference line: never a silent switch
                why = f"transformers cannot load SRC: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    from jquant.core.activation import ActQuant
    from torch_bridge.parity import dense_model

    n_act = sum(isinstance(w, ActQuant) for w in ckpt.weights.values())
    acts = f", inputs of {n_act} layers fake-quantized by their activation recipes" if n_act else ""
    line = f"reference: spec (transformers from the config over jquant.dequantize'd weights{acts}; {why})"
    return dense_model(ckpt).eval(), line


def _weights_only(ckpt):
    """``ckpt`` without its activation recipes (`ActQuant` entries): the same weights, float inputs."""
    import dataclasses

    from jquant.core.activation import ActQuant

    return dataclasses.replace(ckpt, weights={k: w for k, w in ckpt.weights.items() if not isinstance(w, ActQuant)})


def _compare(label, model, oracle, tok, prompts, args, end, step) -> list[tuple]:
    """Per prompt ``(LogitAgreement, greedy_identical)`` of the JAX ``model`` against the torch ``oracle``."""
    from jquant.models import Generator
    from jquant.models.tokenizer import prompt_ids
    from jquant.parity import compare_logits, transformers_greedy, transformers_logits

    gen = Generator(model)
    results = []
    for i, prompt in enumerate(prompts, 1):
        ids = prompt_ids(tok, prompt, chat=not args.no_chat)
        step(f"{label}prompt {i}/{len(prompts)}: logits (jquant compiles on first use)")
        report = compare_logits(gen.logits(ids), transformers_logits(oracle, ids))
        step(f"{label}prompt {i}/{len(prompts)}: greedy continuations, {args.max_new_tokens} tokens at most")
        ours = _until_end(gen(ids, max_new_tokens=args.max_new_tokens, eos_token_ids=sorted(end))[0], end)
        theirs = _until_end(transformers_greedy(oracle, ids, args.max_new_tokens)[0], end)
        same = ours == theirs
        results.append((report, same))
        stop = "stopped at an end token" if ours and ours[-1] in end else "no end token"
        print(f"{label}prompt {prompt!r} ({ids.shape[1]} tokens): {report}")
        print(f"  jquant       : {tok.decode(ours)!r}")
        print(f"  reference    : {tok.decode(theirs)!r}")
        print(f"  greedy {len(ours)} tokens {'identical' if same else 'DIFFER'} ({stop})")
    return results


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
    from jquant.core.activation import ActQuant
    from jquant.models import from_checkpoint
    from jquant.parity import ACT_MAX_REL, ACT_MIN_TOP1, MAX_REL, MIN_TOP1

    ckpt = jquant.convert(src)
    model = from_checkpoint(ckpt, dtype=jnp.float32)
    what = {"auto": "transformers from SRC, else the spec", "transformers": "transformers from SRC", "spec": "the spec"}
    step(f"building the reference ({what[args.reference]})")
    oracle, ref_line = reference_model(src, ckpt, args.reference)
    print(ref_line)
    act = any(isinstance(w, ActQuant) for w in ckpt.weights.values())
    max_rel = args.max_rel if args.max_rel is not None else (ACT_MAX_REL if act else MAX_REL)
    min_top1 = args.min_top1 if args.min_top1 is not None else (ACT_MIN_TOP1 if act else MIN_TOP1)
    end = set(end_token_ids(tok, src, model.config.eos_token_ids))
    prompts = args.prompt or DEFAULT_PROMPTS
    results = _compare("", model, oracle, tok, prompts, args, end, step)
    ok, line = verdict(results, max_rel, min_top1, greedy=not act)
    if act:
        # Activation codes flip on last-bit differences, so the check above is loose; the weights
        # alone (recipes removed from both sides, float inputs) are held to float32 agreement.
        from torch_bridge.parity import dense_model

        step("weights only: the activation recipes removed from jquant and from the spec")
        wo = _weights_only(ckpt)
        print("weights only (activation recipes removed from both; reference: spec):")
        res_w = _compare("weights only, ", from_checkpoint(wo, dtype=jnp.float32), dense_model(wo).eval(), tok, prompts,
                         args, end, step)  # fmt: skip
        ok_w, line_w = verdict(res_w, MAX_REL, MIN_TOP1)
        ok = ok and ok_w
        both = f"activations quantized: {line.split(': ', 1)[1]} | weights only: {line_w.split(': ', 1)[1]}"
        line = f"{'PASS' if ok else 'FAIL'}: {both}"
    print(line)
    sys.stdout.flush()
    return 0 if ok else 1
