"""Cross-framework parity: one checkpoint, several runtimes, the same tokens, one report.

A *leg* turns a `Checkpoint` into a logits function ``ids int [B, T] -> float32 logits [B, T, V]``.
`run_parity` runs every leg on the same tokens, compares each with the reference leg (logits max
|diff|, max |diff| / std of the reference, top-1 agreement, greedy continuation) and tabulates the
per-layer weight error of the conversion against the producer's own dequantization when given.

Legs built in here (no JAX: this module lives in torch_bridge):

* `spec_leg`: transformers with every quantized weight replaced by ``jquant.dequantize`` (the spec);
* `torch_bridge_leg`: transformers patched with `QuantLinear` (the kernels under test);
* `oracle_leg`: transformers with the *producer's* dequantized weights (GPTQModel, AutoAWQ, gguf-py);
* `transformers_leg`: transformers loading the source itself (``from_pretrained``, GGUF included).

The JAX leg (``jquant.models.from_checkpoint``) is passed in by callers that may import JAX
(``tests/parity``, ``jquant parity-torch``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jquant.core.activation import ActQuant, fake_quantize
from jquant.core.dequant import dequantize
from jquant.core.qarray import QArray
from jquant.parity import compare_logits, load_transformers_model

__all__ = [
    "LogitsFn",
    "Leg",
    "ParityReport",
    "run_parity",
    "spec_leg",
    "torch_bridge_leg",
    "oracle_leg",
    "transformers_leg",
    "greedy",
    "compare_legs",
    "weight_errors",
]

LogitsFn = Callable[[np.ndarray], np.ndarray]
Leg = Callable[[Any], LogitsFn]


def _torch_logits_fn(model: torch.nn.Module) -> LogitsFn:
    device = next(model.parameters()).device

    def fn(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device)).logits
        return out.float().cpu().numpy()

    return fn


def dense_model(ckpt: Any, quantized: dict[str, np.ndarray] | None = None, dtype: torch.dtype = torch.float32):
    """transformers model from ``ckpt.config`` with dense weights: ``quantized[name]`` or the spec.

    Layers with an activation recipe (``<module>.input_quant``) get a forward pre-hook applying the
    numpy spec ``jquant.core.activation.fake_quantize`` to their inputs, as the checkpoint says.
    """
    from torch_bridge.patch import from_checkpoint

    weights, recipes = {}, {}
    for name, w in ckpt.weights.items():
        if isinstance(w, ActQuant):
            recipes[name.rpartition(".")[0]] = w
            continue
        if isinstance(w, QArray):
            w = quantized[name] if quantized is not None and name in quantized else dequantize(w)
        weights[name] = w
    model = from_checkpoint(dataclasses.replace(ckpt, weights=weights), dtype=dtype, strict=False)
    for mod_name, act in recipes.items():

        def hook(_module, args, act=act):
            x = args[0]
            xq = fake_quantize(x.detach().float().cpu().numpy(), act)
            return (torch.from_numpy(xq).to(device=x.device, dtype=x.dtype),)

        model.get_submodule(mod_name).register_forward_pre_hook(hook)
    return model


def spec_leg(ckpt: Any) -> LogitsFn:
    """transformers over ``jquant.dequantize`` of every quantized weight, float32."""
    return _torch_logits_fn(dense_model(ckpt))


def torch_bridge_leg(ckpt: Any, *, device: str = "cpu", dtype: torch.dtype = torch.float32, **kw) -> LogitsFn:
    """transformers patched with `QuantLinear` over the canonical weights (`torch_bridge.patch_model`)."""
    from torch_bridge.patch import from_checkpoint

    return _torch_logits_fn(from_checkpoint(ckpt, dtype=dtype, device=device, strict=False, **kw))


def oracle_leg(oracle: dict[str, np.ndarray]) -> Leg:
    """A leg running transformers over the producer's own dequantized weights ``{HF name: [N, K]}``."""
    return lambda ckpt: _torch_logits_fn(dense_model(ckpt, quantized=oracle))


def transformers_leg(src: str | Path) -> Leg:
    """A leg loading ``src`` with ``AutoModelForCausalLM.from_pretrained`` (a ``.gguf`` through ``gguf_file``)."""

    def leg(ckpt: Any) -> LogitsFn:
        return _torch_logits_fn(load_transformers_model(src))

    return leg


def greedy(fn: LogitsFn, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt logits and ``n`` greedy tokens after ``ids`` [B, T].

    Every call sees the same [B, T + n] shape (the continuation so far, then zeros): causal models
    ignore what follows a position, and a jitted leg compiles once instead of once per length.

    Returns:
        (float32 logits [B, T, V] of the prompt, int tokens [B, n]).
    """
    b, t = ids.shape
    buf = np.zeros((b, t + n), dtype=np.int64)
    buf[:, :t] = ids
    prompt_logits = None
    for i in range(n):
        logits = np.asarray(fn(buf), dtype=np.float32)
        if prompt_logits is None:
            prompt_logits = logits[:, :t]
        buf[:, t + i] = logits[:, t + i - 1].argmax(-1)
    return prompt_logits, buf[:, t:]


@dataclasses.dataclass
class Comparison:
    """One leg against the reference leg."""

    leg: str
    max_abs: float
    max_over_std: float
    top1: float
    greedy_equal: bool
    first_divergence: int | None


def compare_legs(name: str, ref: np.ndarray, got: np.ndarray, ref_tok: np.ndarray, got_tok: np.ndarray) -> Comparison:
    """Leg ``name`` against the reference: `jquant.parity.compare_logits` plus the greedy continuations."""
    a = compare_logits(got, ref)
    diverge = np.nonzero((ref_tok != got_tok).any(axis=0))[0]
    return Comparison(
        leg=name,
        max_abs=a.max_abs_diff,
        max_over_std=a.rel,
        top1=a.top1_agreement,
        greedy_equal=not diverge.size,
        first_divergence=int(diverge[0]) if diverge.size else None,
    )


@dataclasses.dataclass
class WeightRow:
    name: str
    qtype: str
    block: tuple[int, int]
    bits_per_weight: float
    max_abs_err: float | None
    bit_exact: bool | None


def weight_errors(ckpt: Any, oracle: dict[str, np.ndarray] | None = None) -> list[WeightRow]:
    """Per quantized layer: ``jquant.dequantize(w)`` against the producer's dequantization (when given)."""
    rows = []
    for name, w in ckpt.weights.items():
        if not isinstance(w, QArray):
            continue
        err = exact = None
        if oracle is not None and name in oracle:
            mine, theirs = dequantize(w), np.asarray(oracle[name], dtype=np.float32)
            err = float(np.abs(mine.astype(np.float64) - theirs).max())
            exact = bool(np.array_equal(mine.view(np.uint32), theirs.view(np.uint32)))
        rows.append(WeightRow(name, w.qtype.name, tuple(w.block), round(w.bits_per_weight, 3), err, exact))
    return rows


@dataclasses.dataclass
class ParityReport:
    """Everything `run_parity` measured; ``str(report)`` is a markdown table."""

    src: str
    format: str
    reference: str
    ids: np.ndarray
    weights: list[WeightRow]
    comparisons: list[Comparison]
    errors: dict[str, str]
    seconds: dict[str, float]
    tokens: dict[str, np.ndarray]

    def comparison(self, leg: str) -> Comparison:
        return next(c for c in self.comparisons if c.leg == leg)

    def __str__(self) -> str:
        lines = [f"# parity: {self.src} (format {self.format}), reference leg: {self.reference}", ""]
        lines += [
            "| layer | qtype | block | bits/w | max abs err vs producer | bit-exact |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.weights:
            err = "-" if r.max_abs_err is None else f"{r.max_abs_err:.3g}"
            exact = "-" if r.bit_exact is None else ("yes" if r.bit_exact else "NO")
            lines.append(f"| {r.name} | {r.qtype} | {r.block} | {r.bits_per_weight} | {err} | {exact} |")
        lines += ["", f"tokens {self.ids.shape}; greedy continuation of {next(iter(self.tokens.values())).shape[1]}"]
        lines += ["", "| leg | max abs diff | max diff / std | top-1 agree | greedy equal | seconds |"]
        lines += ["|---|---|---|---|---|---|"]
        for c in self.comparisons:
            lines.append(
                f"| {c.leg} | {c.max_abs:.3g} | {c.max_over_std:.3g} | {c.top1:.3f} | "
                f"{'yes' if c.greedy_equal else f'no (step {c.first_divergence})'} | {self.seconds.get(c.leg, 0):.1f} |"
            )
        for leg, e in self.errors.items():
            lines.append(f"| {leg} | failed: {e} | | | | |")
        return "\n".join(lines)


def run_parity(
    src: str | Path | Any,
    *,
    legs: dict[str, Leg] | None = None,
    reference: str | None = None,
    oracle: dict[str, np.ndarray] | None = None,
    batch: int = 2,
    length: int = 12,
    new_tokens: int = 8,
    seed: int = 0,
) -> ParityReport:
    """Runs ``legs`` on the same random tokens and compares each with ``reference``.

    Args:
        src: a checkpoint path (anything ``jquant.convert`` reads) or a converted `Checkpoint`.
        legs: name -> leg; default: ``spec`` and ``torch_bridge`` (+ ``producer`` when ``oracle``).
        reference: the leg the others are compared with; default ``producer`` if present, else
            ``spec``, else the first leg.
        oracle: the producer's dequantized weights ``{HF name: [N, K]}``, for the weight table
            and the ``producer`` leg.
        batch, length, new_tokens, seed: the prompt (random ids < vocab) and continuation
            (``new_tokens`` >= 1).

    Returns:
        a `ParityReport`. A leg that raises is recorded in ``errors`` (never dropped silently).
    """
    import jquant

    ckpt = src if hasattr(src, "weights") else jquant.convert(src)
    legs = dict(legs) if legs is not None else {"spec": spec_leg, "torch_bridge": torch_bridge_leg}
    if oracle is not None and "producer" not in legs:
        legs = {"producer": oracle_leg(oracle), **legs}
    reference = reference or ("producer" if "producer" in legs else "spec" if "spec" in legs else next(iter(legs)))
    vocab = int(ckpt.config["vocab_size"])
    ids = np.random.default_rng(seed).integers(3, vocab, (batch, length))
    logits, tokens, errors, seconds = {}, {}, {}, {}
    for name, leg in legs.items():
        t0 = time.perf_counter()
        try:
            logits[name], tokens[name] = greedy(leg(ckpt), ids, new_tokens)
        except Exception as e:  # reported in the table and in ``errors``
            errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
        seconds[name] = time.perf_counter() - t0
    if reference not in logits:
        raise RuntimeError(f"reference leg {reference!r} failed: {errors.get(reference)}")
    comps = [
        compare_legs(n, logits[reference], logits[n], tokens[reference], tokens[n]) for n in logits if n != reference
    ]
    return ParityReport(
        src=str(getattr(src, "metadata", {}).get("source", src)) if hasattr(src, "weights") else str(src),
        format=ckpt.format,
        reference=reference,
        ids=ids,
        weights=weight_errors(ckpt, oracle),
        comparisons=comps,
        errors=errors,
        seconds=seconds,
        tokens=tokens,
    )
