"""The backend protocol for ``qmatmul`` and the registry the dispatcher walks.

A backend computes exactly ``x @ dequantize(w).T`` (within a tolerance scaled with sqrt(K)) or
declines: ``supports(x, w)`` returns ``(False, reason)`` and the dispatcher moves on, reporting the
reason on request. A backend never computes something else and reports success.

Selection (`jquant.ops.qmatmul.select`): backends registered for the current platform, highest
priority first, minus those named in ``JQUANT_DISABLED_KERNELS`` (comma-separated); if
``JQUANT_KERNELS`` is set, only those (in that order) are tried, and the reference is not a silent
fallback: if none of them supports the call, qmatmul raises with every reason.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

__all__ = ["Backend", "register_backend", "available_backends", "BACKENDS"]


class Backend(abc.ABC):
    """One implementation of ``qmatmul``.

    Attributes:
        name: unique name used in env vars and reports, e.g. ``"pallas_triton_w4a16"``.
        platforms: JAX platforms it runs on (``"cpu"``, ``"gpu"``, ``"tpu"``).
        priority: higher runs first.
    """

    name: ClassVar[str]
    platforms: ClassVar[tuple[str, ...]]
    priority: ClassVar[int] = 0

    @abc.abstractmethod
    def supports(self, x: Any, w: Any, **kw) -> tuple[bool, str]:
        """Whether this backend computes ``qmatmul(x, w)``; the reason when it does not.

        Args:
            x: activations (array or ShapeDtypeStruct) [..., K].
            w: the `QArray` (arrays may be tracers; only static fields and shapes may be read).
        """

    @abc.abstractmethod
    def __call__(self, x: Any, w: Any, **kw) -> Any:
        """Returns ``x @ dequantize(w).T`` with shape [..., N] in ``x``'s dtype (f32 accumulation)."""


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Adds ``backend`` (an instance) to the registry; a second registration under a name replaces it."""
    BACKENDS[backend.name] = backend
    return backend


def available_backends(platform: str) -> list[Backend]:
    """Registered backends for ``platform``, highest priority first."""
    return sorted((b for b in BACKENDS.values() if platform in b.platforms), key=lambda b: -b.priority)
