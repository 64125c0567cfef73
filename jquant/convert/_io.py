"""Reading input files safely: regular files only, JSON objects with errors that name the file.

A FIFO, socket or device in place of ``config.json`` or a shard would block a reader forever (or
stream without end); every input file jquant opens goes through `regular_file` first. Symbolic
links are followed (the Hugging Face cache links snapshot files to blobs).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from jquant.core.errors import ConfigError, FormatError

__all__ = ["regular_file", "read_json", "MAX_JSON_BYTES"]

MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json, side files, index.json, jquant.json


def regular_file(path: str | os.PathLike, cls: type[FormatError] = FormatError) -> int:
    """The size of ``path``, after checking that it is (a link to) a regular, readable file.

    Raises:
        ``cls`` (a `FormatError`): missing, not a regular file (FIFO, socket, device, folder), unreadable.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise cls(f"cannot read ({e.strerror or e})", file=path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO, socket or device"
        raise cls(f"is {kind}, not a regular file", file=path)
    return st.st_size


def read_json(
    path: str | os.PathLike, cls: type[FormatError] = ConfigError, *, what: str = "JSON object"
) -> dict[str, Any]:
    """A JSON object from a regular file of at most `MAX_JSON_BYTES`.

    Raises:
        ``cls``: not a regular file, too big, unreadable, not UTF-8 JSON, not an object.
    """
    path = Path(path)
    size = regular_file(path, cls)
    if size > MAX_JSON_BYTES:
        raise cls(f"{size} bytes: larger than jquant's limit of {MAX_JSON_BYTES} for a JSON file", file=path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        d = json.loads(raw)
    except OSError as e:
        raise cls(f"cannot read ({e.strerror or e})", file=path) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise cls(f"cannot read JSON ({type(e).__name__}: {str(e)[:200]})", file=path) from None
    if not isinstance(d, dict):
        raise cls(f"not a {what} (a JSON {type(d).__name__})", file=path)
    return d
