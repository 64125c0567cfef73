"""The CPU kernel library, built (or found in the on-disk cache) once per session."""

from __future__ import annotations

import pytest

from kernels_cpu import build


@pytest.fixture(scope="session")
def cpu_lib():
    """Registers the library's FFI targets; skips (with the reason) where it cannot be built here."""
    try:
        build.register()
    except build.BuildError as e:
        pytest.skip(f"kernels_cpu library unavailable: {e}")
    return build.load_library()


@pytest.fixture
def isa(cpu_lib, request):
    """Runs a test with the code path ``request.param`` (skips paths this CPU lacks), then restores it."""
    from kernels_cpu import get_isa, set_isa

    before = get_isa()
    want = request.param
    if set_isa(want) != want:
        set_isa(before)
        pytest.skip(f"this CPU has no {want} (best: {get_isa(detected=True)})")
    yield want
    set_isa(before)
