"""``jquant kernels``: the qmatmul routing table of a device, with each backend's capabilities.

``jquant kernels`` shows the current device; ``jquant kernels --device gpu --sm 90`` another one
(declarations only: whether a CUDA library builds there is not asked). ``--markdown`` prints the
table the README embeds (tests/ops/test_routing.py checks that the two agree).
"""

from __future__ import annotations

__all__ = ["register", "run", "table_rows", "markdown"]

_COLUMNS = ("#", "backend", "codes", "act", "M", "cc")


def register(sub) -> None:
    p = sub.add_parser("kernels", help="the qmatmul routing table (backends in the order they are tried)")
    p.add_argument("--device", choices=("cpu", "gpu", "tpu"), help="route for this platform (default: current)")
    p.add_argument("--sm", help="compute capability of that GPU, e.g. 90 or 8.0")
    p.add_argument("--markdown", action="store_true", help="print the README's markdown table")
    p.add_argument(
        "--torch",
        metavar="DEVICE",
        help="show the Torch bridge's table for a torch device type instead (cuda, cpu, xpu, hpu, ...)",
    )
    p.set_defaults(func=run)


def _device(platform: str | None, sm: str | None):
    from jquant.core.routing import Device
    from jquant.ops.device import current_device, parse_cc

    if platform is None and sm is None:
        return current_device()
    return Device(platform or "gpu", cc=parse_cc(sm))


def _rows(registry, platform: str, status) -> list[dict[str, str]]:
    """One row per backend of ``platform``'s routing table, in order: name, what it reads, M, ``status(backend)``."""
    rows = []
    for i, name in enumerate(registry.table(platform), 1):
        b = registry.backends.get(name)
        d = b.caps.describe() if b is not None else dict.fromkeys(_COLUMNS[2:], "")
        rows.append({"#": str(i), "backend": name, **d, "status": status(b)})
    return rows


def table_rows(device, *, runtime: bool) -> list[dict[str, str]]:
    """The JAX routing table of ``device`` (``runtime``: also whether each backend can run here)."""
    import jquant.ops  # noqa: F401  (registers the XLA backends)
    from jquant.ops.backend import REGISTRY
    from jquant.ops.qmatmul import load_kernel_packages

    missing = next((v for v in load_kernel_packages(device.platform).values() if v != "ok"), "not registered")
    return _rows(
        REGISTRY, device.platform, lambda b: missing if b is None else (runtime and b.unavailable(None)) or "ok"
    )


def markdown(device) -> str:
    """The routing table of ``device`` as markdown (declarations only, as the README shows it)."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in table_rows(device, runtime=False):
        lines.append("| " + " | ".join(f"`{r[c]}`" if c == "backend" else r[c] for c in _COLUMNS) + " |")
    return "\n".join(lines)


def torch_rows(device_type: str) -> list[dict[str, str]]:
    """The Torch bridge's routing table for a torch device type (declarations only)."""
    import torch_bridge  # noqa: F401  (registers the torch backends)
    from torch_bridge.backend import REGISTRY

    return _rows(REGISTRY, device_type, lambda b: "ok" if b is not None else "not loaded")


def run(args) -> int:
    device = _device(args.device, args.sm)
    if args.markdown:
        print(markdown(device))
        return 0
    from rich.console import Console
    from rich.table import Table

    explicit = args.device is not None or args.sm is not None
    where = f"torch {args.torch}" if args.torch else str(device)
    t = Table(title=f"qmatmul routing on {where} (first backend whose capabilities cover the call runs it)")
    for c in (*_COLUMNS, "status"):
        t.add_column(c)
    for r in torch_rows(args.torch) if args.torch else table_rows(device, runtime=not explicit):
        t.add_row(*(r[c] for c in (*_COLUMNS, "status")))
    Console().print(t)
    if device.platform == "gpu" and not args.torch:
        print("Falls back to xla_reference (the f32 spec) only for calls no backend takes (f32 activations).")
    return 0
