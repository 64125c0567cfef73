"""Run environment for benchmark results: card, versions, commit (every number carries them)."""

from __future__ import annotations

import os
import platform
import subprocess
import time


def _log(*a):
    print(*a, flush=True)


def env_info() -> dict:
    import jax
    import torch
    import triton

    try:
        card = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except Exception as e:  # noqa: BLE001
        card = f"unknown ({e})"
    return {
        "card": card,
        "jax": jax.__version__,
        "jaxlib": __import__("jaxlib").__version__,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "commit": os.environ.get("JQUANT_COMMIT") or _git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def card_slug(card: str) -> str:
    name = card.split(",")[0].strip().lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "unknown"
