"""``jquant parity-torch SRC``: one checkpoint through the JAX model, the Torch bridge and references.

Legs (`torch_bridge.parity`): ``spec`` (transformers over ``jquant.dequantize``d weights, inputs
fake-quantized by the checkpoint's activation recipes), ``torch_bridge`` (transformers patched with
QuantLinear), ``jax`` (``jquant.models.from_checkpoint``) and, with ``--transformers``,
transformers loading SRC itself. Prints the per-layer table and the logits agreement of each leg
with the reference; exits 1 when a leg disagrees (max |diff| / std above ``--tol``, a top-1 or
greedy mismatch) or fails.
"""

from __future__ import annotations

import sys

__all__ = ["register", "run", "jax_leg"]


def jax_leg(ckpt):
    """The JAX path as a parity leg: ``jquant.models.from_checkpoint`` in float32, jitted once."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jquant.models import from_checkpoint

    model = from_checkpoint(ckpt, dtype=jnp.float32)
    fwd = jax.jit(lambda ids: model(ids))
    return lambda ids: np.asarray(fwd(jnp.asarray(ids, dtype=jnp.int32)))


def register(sub) -> None:
    p = sub.add_parser("parity-torch", help="JAX path vs Torch bridge vs references on one checkpoint")
    p.add_argument("src", metavar="SRC", help="HF folder, .gguf file or canonical folder")
    p.add_argument("--transformers", action="store_true", help="also load SRC with transformers itself")
    p.add_argument("--new-tokens", type=int, default=8, help="greedy continuation length compared between legs")
    p.add_argument("--tol", type=float, default=1e-4, help="max |logit diff| / std of the reference")
    p.set_defaults(func=run)


def run(args) -> int:
    from jquant.cli.common import check_src

    check_src(args.src)
    from torch_bridge.parity import run_parity, spec_leg, torch_bridge_leg, transformers_leg

    legs = {"spec": spec_leg, "torch_bridge": torch_bridge_leg, "jax": jax_leg}
    if args.transformers:
        legs["transformers"] = transformers_leg(args.src)
    report = run_parity(args.src, legs=legs, reference="spec", new_tokens=args.new_tokens)
    print(report)
    sys.stdout.flush()
    bad = report.errors or [
        c for c in report.comparisons if c.max_over_std > args.tol or c.top1 < 1.0 or not c.greedy_equal
    ]
    return 1 if bad else 0
