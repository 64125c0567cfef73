"""The backend walk shared by the JAX (`jquant.ops.qmatmul`) and Torch (`torch_bridge.backend`)
dispatchers: forced names first (``JQUANT_KERNELS`` or an explicit argument; a decline is an
error, never a silent fallback), else the priority list minus ``JQUANT_DISABLED_KERNELS``.

Pure Python, so that `torch_bridge` can use it without importing JAX.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

__all__ = ["env_names", "choose"]


def env_names(var: str, prefix: str = "") -> list[str]:
    """Comma-separated backend names in environment variable ``var`` (those starting with ``prefix``)."""
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip() and s.strip().startswith(prefix)]


def choose(
    registry: Mapping[str, object],
    candidates: Iterable,
    supports: Callable[[object], tuple[bool, str]],
    *,
    forced: list[str],
    disabled: Iterable[str],
    what: str,
    call: str,
):
    """The first backend that takes the call, and why each one before it did not.

    Args:
        registry: every backend by name (for forced names).
        candidates: the backends to walk in priority order when nothing is forced.
        supports: ``backend -> (ok, reason)`` for this call.
        forced: names that must take the call (one of them, in order); empty for the normal walk.
        disabled: names skipped in the normal walk.
        what: the kind of backend, for messages (``"qmatmul"``, ``"torch"``).
        call: the call, for the error message.

    Returns:
        ``(backend or None, skipped)``: None when no candidate takes the call (the caller decides
        between a fallback and an error).

    Raises:
        ValueError: none of the forced backends exists or takes the call.
    """
    skipped: list[str] = []

    def takes(b) -> bool:
        ok, why = supports(b)
        if not ok:
            skipped.append(f"{b.name}: {why}")
        return ok

    if forced:
        for name in forced:
            b = registry.get(name)
            if b is None:
                skipped.append(f"{name}: unknown backend (known: {sorted(registry)})")
            elif takes(b):
                return b, skipped
        raise ValueError(f"requested {what} backend(s) {forced} cannot run {call}: {skipped}")
    disabled = set(disabled)
    for b in candidates:
        if b.name in disabled:
            skipped.append(f"{b.name}: disabled by JQUANT_DISABLED_KERNELS")
        elif takes(b):
            return b, skipped
    return None, skipped
