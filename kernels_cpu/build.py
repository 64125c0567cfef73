"""Builds the C++ kernels of `kernels_cpu/csrc` into one shared library and registers them with XLA:CPU.

The library is compiled on first use with the machine's C++ compiler (``$CXX``, else ``c++``,
``g++`` or ``clang++`` on PATH) against the XLA FFI headers that ship with jaxlib
(`jax.ffi.include_dir`), and cached under ``$JQUANT_CPU_CACHE`` (default
``~/.cache/jquant/kernels_cpu``) in a file named by a hash of the sources, the compiler's version,
the jaxlib version and the flags, so editing a kernel or upgrading jaxlib rebuilds it. No ``-march``
flag: the library runs on any x86-64 (or other) CPU, and picks its AVX-512 / AVX2 / scalar code
at load time from cpuid (each path is compiled with its own target attribute). The build writes to
a temporary file and renames it, so a failed or interrupted build never leaves a library behind.
``python -m kernels_cpu.build`` prebuilds it.

``ffi=False`` builds the same kernels without the XLA FFI handler (``-DJQ_NO_FFI``: no jaxlib headers,
no JAX import): the Torch bridge calls its plain C entry point ``jquant_cpu_qmatmul_raw`` through
ctypes (`torch_bridge.cpu`), in environments without JAX too.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "CSRC",
    "BuildError",
    "compiler_path",
    "compile_command",
    "library_path",
    "build",
    "load_library",
    "register",
    "TARGETS",
]

CSRC = Path(__file__).resolve().parent / "csrc"
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-w")
TARGETS = {"jquant_cpu_qmatmul": "JquantCpuQmatmul"}  # FFI name -> exported handler symbol


class BuildError(RuntimeError):
    """The CPU library could not be built or loaded here (no C++ compiler, compiler error, ...)."""


def compiler_path() -> str | None:
    """The C++ compiler to use, or None when there is none (``$JQUANT_CXX`` / ``$CXX`` first)."""
    for env in ("JQUANT_CXX", "CXX"):
        v = os.environ.get(env)
        if v is not None:
            return shutil.which(v) if v else None  # set but empty: "no compiler" (tests)
    return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def _include_dir() -> str:
    import jax

    return jax.ffi.include_dir()


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cc"))


def compile_command(out: Path, ffi: bool = True) -> list[str]:
    cxx = compiler_path()
    if cxx is None:
        raise BuildError("no C++ compiler found (looked at $JQUANT_CXX, $CXX, c++, g++, clang++)")
    inc = [f"-I{_include_dir()}"] if ffi else ["-DJQ_NO_FFI"]
    return [cxx, *FLAGS, *inc, *map(str, sources()), "-o", str(out)]


def _cache_dir() -> Path:
    return Path(os.environ.get("JQUANT_CPU_CACHE", Path.home() / ".cache" / "jquant" / "kernels_cpu"))


def library_path(ffi: bool = True) -> Path:
    """Where the library for the current sources, compiler and jaxlib (``ffi``) lives (built or not)."""
    h = hashlib.sha256()
    for p in sources():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    cxx = compiler_path()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout if cxx else "none"
    if ffi:
        import jaxlib

        version += jaxlib.__version__
    for part in (str(cxx), version, *FLAGS):
        h.update(part.encode())
    return _cache_dir() / f"libjquant_cpu{'' if ffi else '_noffi'}-{h.hexdigest()[:16]}.so"


def build(*, force: bool = False, verbose: bool = False, ffi: bool = True) -> Path:
    """Compiles the library (``ffi=False``: without the XLA handler) if it is not cached yet; returns its path.

    Raises:
        BuildError: no compiler, or the compiler failed (its output is in the message).
    """
    out = library_path(ffi)
    if out.exists() and not force:
        return out
    cmd = compile_command(out, ffi)  # raises BuildError without a compiler
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"jquant: building the CPU kernels once -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        lib = Path(tmp) / out.name
        cmd[-1] = str(lib)
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise BuildError(f"C++ compiler failed ({res.returncode}): {' '.join(cmd[:3])} ...\n{res.stderr[-4000:]}")
        os.replace(lib, out)  # atomic: a failed or interrupted build leaves nothing at `out`
    print(f"jquant: CPU kernels built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


@functools.cache
def load_library(ffi: bool = True) -> ctypes.CDLL:
    """Builds (if needed) and loads the library (``ffi=False``: the JAX-free variant) once per process."""
    try:
        lib = ctypes.CDLL(str(build(ffi=ffi)))
    except OSError as e:
        raise BuildError(f"could not load the CPU library: {e}") from e
    lib.jquant_cpu_read_bandwidth.restype = ctypes.c_double
    lib.jquant_cpu_read_bandwidth.argtypes = (ctypes.c_size_t, ctypes.c_int, ctypes.c_int)
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.jquant_cpu_qmatmul_raw.restype = c_int
    lib.jquant_cpu_qmatmul_raw.argtypes = (
        ptr, ptr, i64, i64, i64, ptr, c_int, ptr, c_int, ptr, c_int, ptr, c_int, i64, c_int,
    )  # fmt: skip
    return lib


_REGISTERED: set[str] = set()  # XLA refuses a second registration of a name in one process


def register() -> tuple[str, ...]:
    """Builds / loads the library (once per process) and registers its FFI targets with XLA for the
    CPU (once per process); returns their names.

    Raises:
        BuildError: the library could not be built or loaded.
    """
    import jax

    lib = load_library()
    for name, symbol in TARGETS.items():
        if name not in _REGISTERED:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
            _REGISTERED.add(name)
    return tuple(TARGETS)


if __name__ == "__main__":
    print(build(force="--force" in sys.argv, verbose=True))
