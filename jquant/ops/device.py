"""The routing `Device` of the JAX backend in use: platform, compute capability, SMs and L2 size.

One helper for every kernel's launch heuristics (SM count, L2 size) and for routing (compute
capability). Values are read from the device where JAX exposes them (``compute_capability``,
``core_count``); the L2 size from the CUDA runtime (``cudaDeviceGetAttribute``) when it can be
loaded, else from the known cards, else None.
"""

from __future__ import annotations

import ctypes
import functools

import jax

from jquant.core.routing import Device

__all__ = ["current_device", "parse_cc", "num_sms", "l2_bytes", "NUM_SMS_DEFAULT"]

NUM_SMS_DEFAULT = 132  # H100 / H200 SXM: launch heuristics' default when no GPU is visible
_L2_BY_NAME = {"H100": 50 * 2**20, "H200": 60 * 2**20, "A100": 40 * 2**20}  # KINDS.md, vendor sheets
_CUDA_DEV_ATTR_L2_CACHE_SIZE = 38  # cudaDevAttrL2CacheSize (CUDA runtime API, driver_types.h)


def parse_cc(cc: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"9.0"`` / ``"90"`` / ``(9, 0)`` -> ``(9, 0)``."""
    if cc is None or isinstance(cc, tuple):
        return cc
    s = str(cc).removeprefix("sm_")
    major, _, minor = s.partition(".") if "." in s else (s[:-1], "", s[-1])
    return int(major), int(minor)


def _cudart_l2(index: int) -> int | None:
    for lib in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        try:
            rt = ctypes.CDLL(lib)
        except OSError:
            continue
        v = ctypes.c_int(0)
        if rt.cudaDeviceGetAttribute(ctypes.byref(v), _CUDA_DEV_ATTR_L2_CACHE_SIZE, index) == 0 and v.value > 0:
            return v.value
    return None


@functools.cache
def current_device(platform: str | None = None) -> Device:
    """The `Device` of JAX's first device on ``platform`` (default: JAX's default backend).

    A platform without devices here (``"gpu"`` on a CPU host, as in routing tests) gives a
    `Device` with no compute capability, SM count or L2 size.
    """
    platform = platform or jax.default_backend()
    try:
        dev = jax.devices(platform)[0]
    except Exception:  # "Unknown backend" (RuntimeError) or no such platform in this jaxlib
        return Device(platform)
    if platform != "gpu":
        return Device(platform)
    name = getattr(dev, "device_kind", "")
    l2 = _cudart_l2(dev.id) or next((v for k, v in _L2_BY_NAME.items() if k in name), None)
    return Device(
        platform,
        cc=parse_cc(getattr(dev, "compute_capability", None)),
        num_sms=int(getattr(dev, "core_count", 0)) or None,
        l2_bytes=l2,
    )


def num_sms() -> int:
    """SMs of the current GPU (`NUM_SMS_DEFAULT` when there is none: CPU lowering, tests)."""
    return current_device().num_sms or NUM_SMS_DEFAULT


def l2_bytes() -> int | None:
    return current_device().l2_bytes
