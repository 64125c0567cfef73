"""The JAX side of the backend protocol (`jquant.core.routing`): a backend is called on arrays.

A backend computes exactly ``act(x) @ dequantize(w).T`` (within a tolerance scaled with sqrt(K))
or declines with a reason; it never computes something else and reports success. What it can run
is its `Capabilities` record; the order backends are tried in is `jquant.ops.routes.ROUTES`.
"""

from __future__ import annotations

import abc
from typing import Any

from jquant.core.routing import Backend as _Backend
from jquant.core.routing import Call, Capabilities, Device, Registry, check
from jquant.ops.device import current_device
from jquant.ops.routes import ROUTES

__all__ = ["Backend", "REGISTRY", "BACKENDS", "register_backend", "available_backends", "why_not_operands"]


class Backend(_Backend):
    """One JAX implementation of ``qmatmul`` (`jquant.core.routing.Backend`, called on arrays)."""

    def supports(self, x: Any, w: Any, act: Any = None, *, device=None) -> tuple[bool, str]:
        """Whether this backend computes ``qmatmul(x, w, act)`` on ``device`` (default: the current one).

        Args:
            x: activations (array or ShapeDtypeStruct) [..., K].
            w: the `QArray` (arrays may be tracers; only static fields and shapes are read).
            act: the activation recipe (`ActQuant`) or None.
        """
        from jquant.core.qarray import QArray

        if not isinstance(w, QArray):
            return False, f"not a QArray ({type(w).__name__})"
        why = self.reason(Call.of(x.shape, x.dtype, w, device or current_device(), act))
        return not why, why

    @abc.abstractmethod
    def __call__(self, x: Any, w: Any, act: Any = None) -> Any:
        """Returns ``act(x) @ dequantize(w).T`` with shape [..., N] in ``x``'s dtype (f32 accumulation)."""


REGISTRY = Registry("qmatmul", ROUTES)
BACKENDS = REGISTRY.backends
register_backend = REGISTRY.register
available_backends = REGISTRY.ordered  # platform -> its table's registered backends, in order


def why_not_operands(caps: Capabilities, x: Any, w: Any, act: Any = None, more=None) -> str:
    """ "" when an op declared by ``caps`` computes ``qmatmul(x, w, act)`` when called directly, else why not.

    Checks the operands only (`Capabilities.operands`): no M range, platform or compute
    capability, so ops can be called outside their routed range and lowered on a CPU host.
    ``more`` is the backend's `why_not_more` hook, asked when the record fits.
    """
    from jquant.core.qarray import QArray

    if not isinstance(w, QArray):
        return f"not a QArray ({type(w).__name__})"
    call = Call.of(x.shape, x.dtype, w, Device("any"), act)
    return check(caps.operands(), call) or (more(call) if more else "")
