"""Test configuration shared by every suite.

Environment set here (before any test module imports the libraries that read it):
* GPTQMODEL_CPU_WORKERS=2: gptqmodel refuses to start on a 2-core machine without it.
* TRITON_DEFAULT_FP_FUSION=1: silences triton's default-change warning, same numerics as GPU.
* JAX_PLATFORMS: left alone, so the device run uses the GPU; CPU CI has only the CPU.
Tests marked ``gpu`` are skipped unless a CUDA device is visible to JAX or torch.
Skips are summarized as one count per reason (tests/skip_summary.py); ``pytest -rs`` lists each.
"""

from __future__ import annotations

import os

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.skip_summary import pytest_terminal_summary  # noqa: E402, F401  (the skip summary hook)


def _has_gpu() -> bool:
    try:
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
