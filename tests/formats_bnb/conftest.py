"""Shared fixtures for tests/formats_bnb: the cached bitsandbytes checkpoints (`tests.fixtures.producers_bnb`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jquant.convert.safetensors_io import SafetensorsFile


@pytest.fixture(scope="session")
def bnb_root() -> Path:
    """The folder of every bitsandbytes checkpoint variant, built once (about 12 s) and cached."""
    from tests.fixtures.producers_bnb import bnb_available, bnb_dir

    why = bnb_available()
    if why is not None:
        pytest.skip(why)
    return bnb_dir()


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of ``folder/model.safetensors`` as an in-memory numpy copy."""
    sf = SafetensorsFile(Path(folder) / "model.safetensors")
    return {k: np.array(sf[k]) for k in sf}


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two float32 arrays (sign of zero included)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
