"""``jquant parity [SRC]``: jquant's logits and greedy continuation vs transformers' on the same checkpoint."""

from __future__ import annotations

import sys

DEFAULT_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")


def register(sub) -> None:
    p = sub.add_parser("parity", help="compare jquant's logits with transformers' for a checkpoint")
    p.add_argument("src", nargs="?", default=None, help="HF folder or .gguf file (default: SmolLM2 Q4_1)")
    p.add_argument("--prompt", action="append", help="prompt (repeatable; default: two fixed prompts)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.set_defaults(func=run)


def run(args) -> int:
    import jax.numpy as jnp

    import jquant
    from jquant.cli.generate import default_src
    from jquant.models import Generator, from_checkpoint
    from jquant.models.tokenizer import load_tokenizer, prompt_ids
    from jquant.parity import compare_logits, load_transformers_model, transformers_greedy, transformers_logits

    src = args.src or default_src()
    model = from_checkpoint(jquant.convert(src), dtype=jnp.float32)
    oracle = load_transformers_model(src)
    tok = load_tokenizer(src)
    gen = Generator(model)
    all_ok = True
    for prompt in args.prompt or DEFAULT_PROMPTS:
        ids = prompt_ids(tok, prompt, chat=not args.no_chat)
        report = compare_logits(gen.logits(ids), transformers_logits(oracle, ids))
        ours = gen(ids, max_new_tokens=args.max_new_tokens)[0]
        theirs = transformers_greedy(oracle, ids, args.max_new_tokens)[0]
        same = ours.tolist() == theirs.tolist()
        all_ok &= same
        print(f"prompt {prompt!r} ({ids.shape[1]} tokens): {report}")
        print(f"  jquant       : {tok.decode(ours)!r}")
        print(f"  transformers : {tok.decode(theirs)!r}")
        print(f"  greedy {args.max_new_tokens} tokens {'identical' if same else 'DIFFER'}")
    sys.stdout.flush()
    return 0 if all_ok else 1
