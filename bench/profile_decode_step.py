"""Where one decode step of the end-to-end model spends its GPU time: every kernel of one jitted
decode step (``hidden_states`` + ``logits`` for one token with a KV cache), timed with CUPTI, grouped
by kernel name, for the bf16 and W4A16 variants of `bench.decode_e2e`'s Llama-3-8B-shaped model.

    python -m bench.profile_decode_step [--layers 32] [--scan auto|on|off] [--top 12] [--tokens 1]
        [--position 0] [--decode-attention xla|pallas]

``--tokens T`` profiles a prefill step of T prompt tokens instead (M = T in every linear layer);
``--position P`` starts the step with P cache slots already written (of 256 + P).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys


def profile(
    variant: str,
    layers: int | None,
    scan: bool | None,
    top: int,
    tokens: int = 1,
    position: int = 0,
    decode_attention: str = "xla",
) -> list[str]:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental.mosaic.gpu import profiler

    from bench.decode_e2e import build_model, make_config

    cfg = make_config("llama3-8b", layers)
    model = build_model(cfg, variant, 0, scan, decode_attention)
    graphdef, state = nnx.split(model)
    cache = model.init_cache(1, 256 + position)
    cache = dataclasses.replace(cache, length=jnp.asarray(position, jnp.int32))

    def step(state, ids, cache):
        m = nnx.merge(graphdef, state)
        h, cache = m.hidden_states(ids, cache)
        return m.logits(h[:, -1]), cache

    f = jax.jit(step)
    ids = jnp.zeros((1, tokens), jnp.int32)
    jax.block_until_ready(f(state, ids, cache))
    _, kernels = profiler.measure(f, aggregate=False)(state, ids, cache)
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for name, ms in kernels:
        by_name[name].append(ms)
    total = sum(ms for _, ms in kernels)
    what = "decode step" if tokens == 1 else f"{tokens}-token prefill step"
    what += f" at position {position} ({decode_attention} attention)"
    rows = [f"## {variant}: {len(kernels)} kernels, {total:.3f} ms of GPU time per {what}", ""]
    rows += ["| kernel | calls | ms | share |", "|---|---|---|---|"]
    for name, ts in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]:
        rows.append(f"| `{name[:90]}` | {len(ts)} | {sum(ts):.3f} | {100 * sum(ts) / total:.0f}% |")
    del model, state
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--scan", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--tokens", type=int, default=1, help="tokens per step (> 1: a prefill step)")
    p.add_argument("--variants", default="bf16,w4a16")
    p.add_argument("--position", type=int, default=0, help="cache slots already written before the step")
    p.add_argument("--decode-attention", choices=("xla", "pallas"), default="xla")
    args = p.parse_args(argv)
    scan = {"auto": None, "on": True, "off": False}[args.scan]
    lines = []
    for variant in args.variants.split(","):
        lines += profile(variant, args.layers, scan, args.top, args.tokens, args.position, args.decode_attention)
        lines += [""]
        print("\n".join(lines[-args.top - 6 :]), flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
