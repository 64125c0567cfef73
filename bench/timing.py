"""Device-side timers for the benchmarks (BENCH.md "Method").

* JAX: CUPTI through ``jax.experimental.mosaic.gpu.profiler.measure``: the sum of the durations
  of every kernel one call launches (the split-K reduction and the act-order gather included),
  no host dispatch. One timed call runs the op on ``len(copies)`` weight copies whose bytes
  together exceed twice the L2, so each copy comes from HBM; the time is divided by the copies.
* torch: ``triton.testing.do_bench(..., return_mode="median")`` with CUDA events; do_bench
  clears the L2 (writes a 256 MB buffer) before every repetition.
"""

from __future__ import annotations

import statistics

__all__ = ["jax_time_us", "torch_time_us", "copies_for", "L2_BYTES_DEFAULT"]

# H100 50 MB, H200 60 MB (KINDS.md); the larger keeps the rotation honest on both.
L2_BYTES_DEFAULT = 60 * 2**20


def copies_for(bytes_per_copy: int, l2_bytes: int = L2_BYTES_DEFAULT, max_copies: int = 16) -> int:
    """Weight copies needed so that they total >= 2x L2 (at least 2)."""
    need = -(-2 * l2_bytes // max(1, bytes_per_copy)) + 1
    return max(2, min(max_copies, need))


def jax_time_us(fn, x, copies, *, iterations: int = 20) -> float:
    """Median device time in microseconds of ``fn(x, w)`` per weight copy.

    Args:
        fn: a function of (x, w); jitted here together with the loop over copies.
        x: activations (device array).
        copies: list of weight pytrees (device arrays), rotated within one timed call.
        iterations: timed calls; the median is reported.
    """
    import jax
    from jax.experimental.mosaic.gpu import profiler

    run_all = jax.jit(lambda x, ws: [fn(x, w) for w in ws])
    jax.block_until_ready(run_all(x, copies))  # compile + warm up
    _, times = profiler.measure(run_all, iterations=iterations)(x, copies)
    if not isinstance(times, list):
        times = [times]
    times = [t for t in times if t is not None]
    return 1e3 * statistics.median(times) / len(copies)


def torch_time_us(fn, *, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median device time in microseconds of ``fn()`` (CUDA events, L2 flushed between runs)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
