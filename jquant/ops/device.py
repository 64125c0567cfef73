"""The routing `Device` of the JAX backend in use: platform, compute capability and SM count.

One helper for every kernel's launch heuristics (SM count) and for routing (compute capability),
read from the device where JAX exposes them (``compute_capability``, ``core_count``).
"""

from __future__ import annotations

import functools

import jax

from jquant.core.routing import Device

__all__ = ["current_device", "parse_cc", "num_sms", "NUM_SMS_DEFAULT"]

NUM_SMS_DEFAULT = 132  # H100 / H200 SXM: launch heuristics' default when no GPU is visible


def parse_cc(cc: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"9.0"`` / ``"90"`` / ``(9, 0)`` -> ``(9, 0)``."""
    if cc is None or isinstance(cc, tuple):
        return cc
    s = str(cc).removeprefix("sm_")
    major, _, minor = s.partition(".") if "." in s else (s[:-1], "", s[-1])
    return int(major), int(minor)


@functools.cache
def default_platform() -> str:
    """Where computations are placed now: the platform of ``jax.default_device`` when one is set
    (``with jax.default_device(jax.devices("cpu")[0])`` on a GPU host runs on the CPU, so it must
    route to CPU kernels), else JAX's default backend."""
    dev = jax.config.jax_default_device
    if dev is None:
        return jax.default_backend()
    platform = dev if isinstance(dev, str) else dev.platform
    return "gpu" if platform in ("cuda", "rocm") else platform


def current_device(platform: str | None = None) -> Device:
    """The `Device` of JAX's first device on ``platform`` (default: `default_platform`).

    A platform without devices here (``"gpu"`` on a CPU host, as in routing tests) gives a
    `Device` with no compute capability or SM count.
    """
    platform = platform or default_platform()
    try:
        dev = jax.devices(platform)[0]
    except Exception:  # "Unknown backend" (RuntimeError) or no such platform in this jaxlib
        return Device(platform)
    if platform != "gpu":
        return Device(platform)
    return Device(
        platform,
        cc=parse_cc(getattr(dev, "compute_capability", None)),
        num_sms=int(getattr(dev, "core_count", 0)) or None,
    )


def num_sms() -> int:
    """SMs of the current GPU (`NUM_SMS_DEFAULT` when there is none: CPU lowering, tests)."""
    return current_device().num_sms or NUM_SMS_DEFAULT
