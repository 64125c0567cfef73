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
import sys
import traceback

import numpy as np

__all__ = [
    "jax_time_us",
    "torch_time_us",
    "copies_for",
    "rel_err",
    "check_then_time",
    "L2_BYTES_DEFAULT",
    "REL_ERR_OK",
]

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


# A method whose output is further than this from the spec (relative L2) is reported WRONG, not timed.
REL_ERR_OK = 1e-2


def rel_err(y, ref) -> float:
    """||y - ref|| / ||ref|| in float64; inf when y has a non-finite value."""
    y = np.asarray(y, np.float64)
    ref = np.asarray(ref, np.float64)
    if not np.isfinite(y).all():
        return float("inf")
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def check_then_time(res: dict, name: str, error, time_us) -> None:
    """Checks one method against the spec, then times it; the outcome goes into ``res``.

    ``res[name]`` becomes the time in microseconds, ``"WRONG"`` when ``error()`` exceeds
    `REL_ERR_OK` (the method is then not timed), or ``"ERROR <type>"`` when either call raises
    (traceback on stdout); ``res[name + "_err"]`` holds the relative error.
    """
    from bench.env import _log

    try:
        e = res[f"{name}_err"] = error()
        if e > REL_ERR_OK:
            res[name] = "WRONG"
            _log(f"  {name}: WRONG rel err {e:.3e}")
            return
        res[name] = time_us()
        _log(f"  {name}: {res[name]:.1f} us (err {e:.1e})")
    except Exception as ex:  # noqa: BLE001  (reported in the table)
        res[name] = f"ERROR {type(ex).__name__}"
        _log(f"  {name}: ERROR {type(ex).__name__}: {str(ex)[:300]}")
        traceback.print_exc(file=sys.stdout)
