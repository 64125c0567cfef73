"""The canonical on-disk format: convert once, then load fast from either framework.

Layout of an output folder::

    OUT/jquant.json          {"layout_version", "format", "metadata"}: marks the folder as canonical
    OUT/config.json          the HF-style config
    OUT/model.safetensors    plain tensors under their HF name; a QArray's arrays under
                             "<name>:data", "<name>:scale", "<name>:zero", "<name>:perm", "<name>:scale2",
                             with its static description (qtype, shape, block) in __metadata__["qarrays"];
                             an ActQuant (input-activation recipe) likewise under "<name>:scale" etc.,
                             described in __metadata__["activations"]
    OUT/tokenizer*, ...      tokenizer files copied from a source folder, when it has them

The folder is written under a temporary name beside OUT and renamed into place only when complete,
so an interrupted or failing conversion never leaves a partial OUT.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jquant.convert._io import read_json
from jquant.convert.checkpoint import Checkpoint
from jquant.convert.safetensors_io import SafetensorsFile, write_safetensors
from jquant.convert.validate import check_config
from jquant.core.activation import ActQuant
from jquant.core.errors import ConfigError, CorruptFileError, FormatError, UnsupportedFormatError
from jquant.core.qarray import ARRAY_FIELDS, LAYOUT_VERSION, QArray
from jquant.core.qtypes import QType

__all__ = ["save", "load", "is_canonical", "remove_stale", "MARKER"]

MARKER = "jquant.json"
_ACT_FIELDS = ("scale", "zero", "global_scale")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def is_canonical(path: Path) -> bool:
    return Path(path).is_dir() and os.path.lexists(Path(path) / MARKER)


def save(
    ckpt: Checkpoint,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    format: str = "safetensors",
) -> Path:
    """Writes ``ckpt`` as a canonical folder at ``out`` atomically.

    ``format="orbax"`` stores the same tensors and metadata with Orbax instead of one safetensors
    file (`jquant.convert.orbax_io`: device arrays are written shard by shard; restore onto any
    mesh with `jquant.parallel.load_sharded`); `load` reads either.

    The folder is written as ``.OUT.tmp-PID`` beside OUT and renamed into place when complete; an
    existing OUT (``overwrite``) is first renamed to ``.OUT.old-PID``, then removed. The temporary
    folder is removed on any error, on Ctrl-C (SIGINT) and on SIGTERM (a handler is installed
    while writing, from the main thread); what a SIGKILL leaves behind is removed by the next
    `save` to the same OUT (`remove_stale`). A cleanup that fails is reported as a warning naming
    the folder, never silently skipped.

    Raises:
        FileExistsError: ``out`` exists (a dangling symbolic link included) and ``overwrite`` is False.
        OSError: the output cannot be written (no space left, permissions...); nothing is left behind.
    """
    if format == "orbax":
        from jquant.convert.orbax_io import save_orbax

        return save_orbax(ckpt, out, overwrite=overwrite)
    if format != "safetensors":
        raise ValueError(f"unknown canonical storage format {format!r} (have 'safetensors', 'orbax')")
    out = Path(out)
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --force to replace it)")
    remove_stale(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with _cleanup_on_sigterm():
        try:
            tmp.mkdir(parents=True)
            _write(ckpt, tmp, progress)
            _publish(tmp, out)
        finally:
            _remove(tmp)
    return out


def _write(ckpt: Checkpoint, tmp: Path, progress) -> None:
    tensors: dict[str, np.ndarray] = {}
    statics: dict[str, dict] = {}
    acts: dict[str, dict] = {}
    items = list(ckpt.weights.items())
    for i, (name, w) in enumerate(items):
        if progress is not None:
            progress(i, len(items), name)
        if isinstance(w, QArray):
            w.validate(name)
            statics[name] = w.static_json()
            for f, a in w.arrays().items():
                tensors[f"{name}:{f}"] = np.asarray(a)
        elif isinstance(w, ActQuant):
            w.validate(name)
            acts[name] = w.static_json()
            for f, a in w.arrays().items():
                tensors[f"{name}:{f}"] = np.asarray(a)
        else:
            tensors[name] = np.asarray(w)
    meta = {"qarrays": json.dumps(statics), "layout_version": str(LAYOUT_VERSION)}
    if acts:
        meta["activations"] = json.dumps(acts)
    write_safetensors(tmp / "model.safetensors", tensors, meta)
    (tmp / "config.json").write_text(json.dumps(ckpt.config, indent=2, default=str))
    _save_tokenizer(ckpt, tmp)
    marker = {"layout_version": LAYOUT_VERSION, "format": ckpt.format, "metadata": ckpt.metadata}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=_json_default))
    if progress is not None:
        progress(len(items), len(items), "")


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier call
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # another user's live process
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Removes ``.OUT.tmp-PID`` / ``.OUT.old-PID`` beside ``out`` whose process is no longer running.

    What a killed `save` (SIGKILL, power loss) leaves behind; each removal is reported as a warning.

    Returns:
        the paths removed.
    """
    out = Path(out)
    parent = out.parent
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        m = _LEFTOVER.fullmatch(e.name)
        if not m or m.group("name") != out.name or _alive(int(m.group("pid"))):
            continue
        p = Path(e.path)
        if _remove(p):
            warnings.warn(
                f"removed {p}, left by jquant process {m.group('pid')} that no longer runs (killed while writing)",
                stacklevel=3,
            )
            removed.append(p)
    return removed


def _publish(tmp: Path, out: Path) -> None:
    """Moves the finished folder ``tmp`` to ``out`` (renames only; an existing ``out`` is moved aside
    first and removed after), so ``out`` is never a partial folder."""
    if os.path.lexists(out):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)


def _remove(p: Path) -> bool:
    """Removes a file, link or folder tree; a failure is reported as a warning naming it. True if removed."""
    if not os.path.lexists(p):
        return False
    try:
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)
        return True
    except OSError as e:
        warnings.warn(f"could not remove {p} ({e.strerror or e}); remove it by hand", stacklevel=3)
        return False


@contextlib.contextmanager
def _cleanup_on_sigterm():
    """While writing: SIGTERM raises SystemExit(143) so that the ``finally`` cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not interrupt the cleanup
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save_tokenizer(ckpt: Checkpoint, folder: Path) -> None:
    """Copies tokenizer files from an HF source folder, or writes them from GGUF tokenizer metadata."""
    src = ckpt.metadata.get("source")
    if src and Path(src).is_dir():
        for f in _TOKENIZER_FILES:
            if (Path(src) / f).exists():
                shutil.copy2(Path(src) / f, folder / f)
    gguf_src = ckpt.metadata.get("tokenizer_source")
    if gguf_src and Path(gguf_src).is_file():
        try:
            from jquant.convert.gguf_tokenizer import save_tokenizer

            save_tokenizer(gguf_src, folder)
        except ImportError as e:  # tokenizers/transformers missing: weights are still complete
            warnings.warn(
                f"tokenizer not written to {folder.name} ({e}); generation will need the GGUF file", stacklevel=3
            )


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serializable")


def load(folder: str | os.PathLike) -> Checkpoint:
    """Loads a canonical folder written by `save` (arrays memory-mapped).

    Raises:
        CorruptFileError / ConfigError: unreadable or malformed ``jquant.json``, ``config.json`` or
            QArray / activation descriptions, naming the file and tensor.
        UnsupportedFormatError: another ``layout_version``.
    """
    folder = Path(folder)
    marker = read_json(folder / MARKER, CorruptFileError)
    if marker.get("storage") == "orbax":  # `save(..., format="orbax")`: host numpy arrays
        from jquant.convert.orbax_io import load_orbax

        return load_orbax(folder)
    if marker.get("layout_version") != LAYOUT_VERSION:
        raise UnsupportedFormatError(
            f"canonical layout_version {str(marker.get('layout_version'))[:40]} but this jquant reads {LAYOUT_VERSION}",
            file=folder / MARKER,
        )
    fmt = marker.get("format")
    if not isinstance(fmt, str) or not fmt:
        raise CorruptFileError("'format' must be a non-empty string", file=folder / MARKER, tensor="format")
    meta = marker.get("metadata", {})
    if not isinstance(meta, dict):
        raise CorruptFileError("'metadata' must be an object", file=folder / MARKER, tensor="metadata")
    config = read_json(folder / "config.json", ConfigError)
    check_config(config, file=folder / "config.json")
    sf = SafetensorsFile(folder / "model.safetensors")
    try:
        statics = json.loads(sf.metadata.get("qarrays", "{}"))
        acts = json.loads(sf.metadata.get("activations", "{}"))
    except (ValueError, RecursionError):
        raise CorruptFileError("__metadata__['qarrays'] or ['activations'] is not valid JSON", file=sf.path) from None
    if not isinstance(statics, dict) or not isinstance(acts, dict):
        raise CorruptFileError("__metadata__['qarrays'] and ['activations'] must be JSON objects", file=sf.path)
    weights: dict = {}
    qnames = set(statics)
    for name in sf:
        base, sep, field = name.rpartition(":")
        if sep and base in qnames:
            if field not in ARRAY_FIELDS:
                raise CorruptFileError(f"unknown QArray field {field!r}", file=sf.path, tensor=name)
            continue
        if sep and base in acts:
            if field not in _ACT_FIELDS:
                raise CorruptFileError(f"unknown ActQuant field {field!r}", file=sf.path, tensor=name)
            continue
        weights[name] = sf[name]
    for name, st in statics.items():
        arrays = {f: sf[f"{name}:{f}"] for f in ARRAY_FIELDS if f"{name}:{f}" in sf}
        if "data" not in arrays or "scale" not in arrays:
            raise CorruptFileError("QArray without data or scale", file=sf.path, tensor=name)
        try:
            if not isinstance(st, dict):
                raise TypeError(f"description is a {type(st).__name__}, not an object")
            if not isinstance(st["qtype"], dict):
                raise TypeError("qtype is not an object")
            shape, block = _ints(st["shape"], "shape"), _ints(st["block"], "block")
            q = QArray(
                **arrays,
                qtype=QType.from_json(st["qtype"]),
                shape=shape,
                block=block,
                layout_version=st["layout_version"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(
                f"bad QArray description ({type(e).__name__}: {e})", file=sf.path, tensor=name
            ) from None
        try:
            weights[name] = q.validate(name)
        except FormatError as e:
            raise e.with_file(sf.path) from None
    for name, st in acts.items():
        arrays = {f: np.asarray(sf[f"{name}:{f}"]) for f in _ACT_FIELDS if f"{name}:{f}" in sf}
        try:
            if not isinstance(st, dict):
                raise TypeError(f"description is a {type(st).__name__}, not an object")
            weights[name] = ActQuant.from_json(st, arrays).validate(name)
        except FormatError as e:
            raise e.with_file(sf.path) from None
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"bad activation description ({e})", file=sf.path, tensor=name) from None
    metadata = dict(meta)
    metadata["canonical_path"] = str(folder)
    return Checkpoint(format=fmt, config=config, weights=weights, metadata=metadata)


def _ints(v, what: str) -> tuple[int, int]:
    if not isinstance(v, list) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{what} must be two integers, got {str(v)[:60]}")
    return tuple(v)
