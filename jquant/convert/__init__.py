"""jquant.convert: any supported checkpoint on disk -> `Checkpoint` of canonical tensors.

`convert(src)` reads (lazily, memory-mapped) an HF folder (config.json + safetensors shards), a
GGUF file, or a canonical folder written by `save`; it never imports JAX or torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from jquant.convert.canonical import is_canonical, load, save
from jquant.convert.checkpoint import Checkpoint
from jquant.convert.hf import convert_hf
from jquant.core.errors import FormatError

__all__ = ["Checkpoint", "convert", "gguf_file_of", "save", "load"]

GGUF_MAGIC = b"GGUF"


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def gguf_file_of(src: str | os.PathLike) -> Path | None:
    """The GGUF file ``src`` names: a ``.gguf`` (or GGUF-magic) file, or a folder holding exactly one and no config.json."""
    p = Path(src)
    if p.is_file():
        return p if p.suffix == ".gguf" or _is_gguf(p) else None
    if p.is_dir() and not (p / "config.json").exists() and not is_canonical(p):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
    return None


def convert(src: str | os.PathLike, *, progress: Callable[[int, int, str], None] | None = None) -> Checkpoint:
    """Converts a checkpoint to canonical form.

    Args:
        src: an HF checkpoint folder, a ``.gguf`` file (or a folder holding exactly one), or a
            canonical folder written by `save` / ``jquant convert``.
        progress: optional callback ``(done, total, current_name)``.

    Returns:
        a `Checkpoint` whose ``weights`` map HF names to `QArray` or numpy arrays.

    Raises:
        FormatError: anything jquant cannot read, naming the file, tensor and problem.
    """
    path = Path(src)
    if not path.exists():
        raise FormatError("no such file or folder", file=path)
    if path.is_dir():
        if is_canonical(path):
            return load(path)
        gguf = gguf_file_of(path)
        if gguf is None:
            return convert_hf(path, progress=progress)
        path = gguf
    if _is_gguf(path):
        from jquant.convert.gguf import convert_gguf

        return convert_gguf(path, progress=progress)
    if path.suffix == ".gguf":
        raise FormatError("file does not start with the GGUF magic bytes", file=path)
    raise FormatError("expected a checkpoint folder or a .gguf file", file=path)
