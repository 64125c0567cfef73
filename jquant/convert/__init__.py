"""jquant.convert: any supported checkpoint on disk -> `Checkpoint` of canonical tensors.

`convert(src)` reads (lazily, memory-mapped) an HF folder (config.json + safetensors shards), a
GGUF file, or a canonical folder written by `save`; it never imports JAX or torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from jquant.convert._io import regular_file
from jquant.convert.canonical import is_canonical, load, save
from jquant.convert.checkpoint import Checkpoint
from jquant.convert.hf import convert_hf
from jquant.convert.validate import check_model as _check_model
from jquant.convert.validate import claims_whole_model
from jquant.core.errors import FormatError

__all__ = ["Checkpoint", "convert", "gguf_file_of", "save", "load"]

GGUF_MAGIC = b"GGUF"


def _is_gguf(path: Path) -> bool:
    if not path.is_file():  # regular files only: reading a FIFO's magic would block
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as e:
        raise FormatError(f"cannot read ({e.strerror or e})", file=path) from None


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


def convert(
    src: str | os.PathLike,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    check_model: bool | None = None,
) -> Checkpoint:
    """Converts a checkpoint to canonical form.

    Args:
        src: an HF checkpoint folder, a ``.gguf`` file (or a folder holding exactly one), or a
            canonical folder written by `save` / ``jquant convert``.
        progress: optional callback ``(done, total, current_name)``.
        check_model: check the result against its config as a Llama-family model
            (`jquant.convert.validate.check_model`: every layer's tensors, shapes, model_type).
            None (default): when the checkpoint holds the token embedding, i.e. claims
            to be a whole model; False: never (a bag of weights, or an architecture jquant does
            not run).

    Returns:
        a `Checkpoint` whose ``weights`` map HF names to `QArray` or numpy arrays.

    Raises:
        FormatError: anything jquant cannot read, naming the file, tensor and problem.
    """
    try:
        ckpt, config_file = _convert(Path(src), progress)
        if check_model or (check_model is None and claims_whole_model(ckpt.weights)):
            _check_model(ckpt.config, ckpt.weights, file=config_file)
    except FormatError as e:  # every error names a file: the source when nothing closer is known
        raise e.with_file(src) from None
    return ckpt


def _convert(path: Path, progress) -> tuple[Checkpoint, Path]:
    """The checkpoint and the file its config came from."""
    if not path.exists():
        raise FormatError("no such file or folder", file=path)
    if path.is_dir():
        if is_canonical(path):
            return load(path), path / "config.json"
        gguf = gguf_file_of(path)
        if gguf is None:
            return convert_hf(path, progress=progress), path / "config.json"
        path = gguf
    if _is_gguf(path):
        from jquant.convert.gguf import convert_gguf

        return convert_gguf(path, progress=progress), path
    if path.suffix == ".gguf":
        raise FormatError("file does not start with the GGUF magic bytes", file=path)
    if not path.is_file():
        regular_file(path)
    raise FormatError("expected a checkpoint folder or a .gguf file", file=path)
