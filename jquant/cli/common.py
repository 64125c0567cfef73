"""Helpers shared by the subcommands: early path checks, format labels, byte sizes (no JAX import)."""

from __future__ import annotations

import os
from pathlib import Path

from jquant.core.errors import FormatError

__all__ = ["check_src", "format_label", "mb", "human_bytes"]


def check_src(src: str | os.PathLike) -> Path:
    """``src`` as a Path, or a `FormatError` when it does not exist (run before any import of JAX)."""
    p = Path(src)
    if not p.exists():
        raise FormatError("no such file or folder", file=p)
    return p


def format_label(ckpt) -> str:
    """The source format of a converted checkpoint, and whether it was read from a canonical folder.

    ``jquant.convert`` of a canonical folder keeps the source's format name (``ckpt.format``):
    the label says both, e.g. ``gguf (canonical folder)``.
    """
    if ckpt.metadata.get("canonical_path"):
        return f"{ckpt.format} (canonical folder)"
    return ckpt.format


def mb(n: float) -> str:
    """Bytes in MB (10^6 bytes), the unit every jquant command uses for sizes."""
    return f"{n / 1e6:.1f} MB"


def human_bytes(n: float) -> str:
    """Bytes in decimal units (B, kB, MB, GB), as `mb` does for MB."""
    if n < 1e3:
        return f"{int(n)} B"
    for unit, f in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < 1e3 * f or unit == "GB":
            return f"{n / f:.1f} {unit}"
    return str(n)
