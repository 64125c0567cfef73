"""``jquant generate [SRC] --prompt ...``: stream a completion and report speed and weight memory."""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a checkpoint (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("src", nargs="?", default=None, help="HF folder, .gguf file or canonical folder")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--system", default=None, help="system message (chat models)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    p.set_defaults(func=run)


def default_src() -> str:
    from jquant.convert.default_model import default_model_path

    return str(default_model_path())


def run(args) -> int:
    import jax.numpy as jnp

    import jquant
    from jquant.models import Generator, SamplingConfig, from_checkpoint
    from jquant.models.generate import model_bytes
    from jquant.models.tokenizer import load_tokenizer, prompt_ids

    src = args.src or default_src()
    err = sys.stderr
    t0 = time.perf_counter()
    ckpt = jquant.convert(src)
    model = from_checkpoint(ckpt, dtype=getattr(jnp, args.dtype) if args.dtype else None)
    tok = load_tokenizer(src)
    ids = prompt_ids(tok, args.prompt, chat=not args.no_chat, system=args.system)
    held, bf16 = model_bytes(model)
    print(
        f"[{ckpt.format}] {src}: weights {held / 1e6:.1f} MB on device (bf16: {bf16 / 1e6:.1f} MB, "
        f"{bf16 / held:.2f}x), loaded in {time.perf_counter() - t0:.1f} s; prompt {ids.shape[1]} tokens",
        file=err,
    )
    eos = set(model.config.eos_token_ids)
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    generated: list[int] = []
    printed = ""
    stamps: list[float] = []

    def on_token(t):
        nonlocal printed
        stamps.append(time.perf_counter())
        generated.append(int(t[0]))
        text = tok.decode(generated, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    t1 = time.perf_counter()
    Generator(model)(ids, max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed,
                     eos_token_ids=sorted(eos), on_token=on_token)  # fmt: skip
    print(file=sys.stdout)
    first = stamps[0] - t1
    # token 2 waits for the decode step's compilation: the steady rate is measured from token 2 on
    steady = (len(stamps) - 2) / (stamps[-1] - stamps[1]) if len(stamps) > 2 else float("nan")
    print(
        f"{len(stamps)} tokens; first token after {first:.2f} s (compile + prefill), decode {steady:.2f} tokens/s",
        file=err,
    )
    return 0
