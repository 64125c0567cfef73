"""The build: compiled once into a cache keyed by sources + compiler + jaxlib, and the path with no
C++ compiler, where the backend is unavailable with the reason and the dispatcher falls back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jquant.core.routing import Device
from jquant.ops.qmatmul import select
from kernels_cpu import build
from tests.ops.qmatmul_suite import QCase, make_qarray


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty library cache and no loaded library; restores the session's library afterwards."""
    monkeypatch.setenv("JQUANT_CPU_CACHE", str(tmp_path))
    build.load_library.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    build.load_library.cache_clear()


@pytest.mark.skipif(build.compiler_path() is None, reason="no C++ compiler on this host")
def test_build_is_cached_by_content(fresh_build):
    """The one test that compiles: into an empty cache, atomically, then found there again."""
    path = build.build()
    assert path.parent == fresh_build and path.exists()
    assert [p.name for p in fresh_build.iterdir()] == [path.name]  # no temporary leftovers
    assert build.build() == path  # cached: no rebuild
    assert build.library_path() == path
    lib = build.load_library()
    assert lib.jquant_cpu_get_isa() in (0, 1, 2)
    assert build.register() == tuple(build.TARGETS)
    assert build.sources() and all(p.suffix == ".cc" for p in build.sources())


def test_no_compiler(fresh_build, monkeypatch):
    """No compiler: a BuildError with the reason, the backend unavailable, routing falls back."""
    monkeypatch.setenv("JQUANT_CXX", "")
    assert build.compiler_path() is None
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler"):
        build.build()
    w = make_qarray(QCase(qtype="uint4", block=(1, 32), zero="float", m=1, n=64, k=256))
    x = jax.ShapeDtypeStruct((1, 256), jnp.float32)
    r = select(x, w, device=Device("cpu"))
    assert r.backend.name == "xla_cpu_chunked"
    assert any(s.startswith("cpu_qmatmul: CPU kernel library unavailable: no C++ compiler") for s in r.skipped)
    from jquant.ops import qmatmul

    y = jax.jit(qmatmul)(jnp.ones((1, 256)), jax.device_put(w))  # still computes, on the fallback
    assert np.isfinite(np.asarray(y)).all()
