"""Builds the CUDA C++ kernels of `kernels_cuda/csrc` into one shared library and registers them.

The library is compiled on first use with the machine's ``nvcc`` (found on PATH, in ``$CUDA_HOME``
or ``/usr/local/cuda``) against the XLA FFI headers that ship with jaxlib (`jax.ffi.include_dir`),
and cached under ``$JQUANT_CUDA_CACHE`` (default ``~/.cache/jquant/kernels_cuda``) in a file named
by a hash of the sources, the compiler, the jaxlib version and the flags, so editing a kernel or
upgrading jaxlib rebuilds it. The build writes to a temporary file and renames it, so a failed or
interrupted build never leaves a library behind. ``python -m kernels_cuda.build`` prebuilds it.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = [
    "CSRC",
    "BuildError",
    "source_arch_flags",
    "nvcc_path",
    "nvcc_command",
    "library_path",
    "build",
    "load_library",
    "register",
]

CSRC = Path(__file__).resolve().parent / "csrc"

# sm_80 machine code (Ampere; mma.sync needs >= 8.0), sm_90 machine code + PTX (Hopper and newer).
ARCH_FLAGS = (
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
)
# Sources whose kernels exist for one architecture only: wgmma is sm_90a machine code (no PTX: the
# arch-specific features do not carry over to later GPUs).
SOURCE_ARCH_FLAGS = {name: ("-gencode=arch=compute_90a,code=sm_90a",) for name in ("w4a16_wgmma.cu", "wgmma_kinds.cu")}
COMMON_FLAGS = ("-O3", "-std=c++17", "-diag-suppress=940,2473", "-Xcompiler=-fPIC", "--threads=0")

# FFI targets this library defines: registered name -> exported handler symbol.
# ``<name>_poisoned`` takes the output buffer as one more operand, aliased to the result (tests fill
# it with NaN to catch outputs a kernel never writes: `kernels_cuda.backend.call_kernel`).
TARGETS = {
    "jquant_w4a16_decode": "JquantW4A16Decode",
    "jquant_w4a16_decode_poisoned": "JquantW4A16DecodePoisoned",
    "jquant_w4a16_gemm": "JquantW4A16Gemm",
    "jquant_w4a16_gemm_poisoned": "JquantW4A16GemmPoisoned",
    "jquant_w4a16_wgmma": "JquantW4A16Wgmma",
    "jquant_w4a16_wgmma_poisoned": "JquantW4A16WgmmaPoisoned",
}


class BuildError(RuntimeError):
    """The CUDA library could not be built or loaded here (no nvcc, compiler error, ...)."""


def nvcc_path() -> str | None:
    """The nvcc to use, or None when none is installed."""
    cands = [shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            cands.append(str(Path(root) / "bin" / "nvcc"))
    return next((c for c in cands if c and Path(c).is_file()), None)


def _include_dir() -> str:
    import jax

    return jax.ffi.include_dir()


def sources() -> list[Path]:
    """The translation units (one per kernel family)."""
    return sorted(CSRC.glob("*.cu"))


def headers() -> list[Path]:
    return sorted(CSRC.glob("*.cuh"))


def source_arch_flags(src: Path) -> tuple[str, ...]:
    """The -gencode flags ``src`` is compiled with."""
    return SOURCE_ARCH_FLAGS.get(Path(src).name, ARCH_FLAGS)


def _nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found (looked on PATH, $CUDA_HOME, $CUDA_PATH, /usr/local/cuda)")
    return nvcc


def nvcc_command(out: Path, *, arch_flags=None, extra=(), srcs=None) -> list[str]:
    """The nvcc command compiling ``srcs`` (default: all sources) into ``out``.

    ``extra`` selects what is built (``-c`` objects, ``-cubin``; default a shared library);
    ``arch_flags`` defaults to those of the first source (`source_arch_flags`).
    """
    srcs = list(srcs if srcs is not None else sources())
    if arch_flags is None:
        arch_flags = source_arch_flags(srcs[0])
    kind = () if {"-c", "-cubin", "-ptx"} & set(extra) else ("--shared",)
    return [_nvcc(), *COMMON_FLAGS, *kind, *arch_flags, *extra, f"-I{_include_dir()}", *map(str, srcs), "-o", str(out)]


def _cache_dir() -> Path:
    return Path(os.environ.get("JQUANT_CUDA_CACHE", Path.home() / ".cache" / "jquant" / "kernels_cuda"))


def library_path() -> Path:
    """Where the library for the current sources, compiler and jaxlib lives (built or not)."""
    import jaxlib

    h = hashlib.sha256()
    for p in sources() + headers():
        h.update(p.name.encode())
        h.update(p.read_bytes())
    nvcc = nvcc_path() or "none"
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout if nvcc != "none" else ""
    flags = [f for src in sources() for f in source_arch_flags(src)]
    for part in (version, jaxlib.__version__, *flags, *COMMON_FLAGS):
        h.update(part.encode())
    return _cache_dir() / f"libjquant_cuda-{h.hexdigest()[:16]}.so"


def build(*, force: bool = False, verbose: bool = False) -> Path:
    """Compiles the library if it is not cached yet; returns its path.

    Raises:
        BuildError: no nvcc, or the compiler failed (its output is in the message).
    """
    out = library_path()
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # A one-time wait of 1-2 minutes inside the first GPU qmatmul call: say so instead of looking hung.
    print(f"jquant: building the CUDA kernels once ({', '.join(p.name for p in sources())}) -> {out}", file=sys.stderr)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        # One object per source (each with its own -gencode flags), compiled in parallel, then linked.
        objs = [Path(tmp) / f"{src.stem}.o" for src in sources()]
        cmds = [nvcc_command(obj, extra=("-c",), srcs=[src]) for src, obj in zip(sources(), objs)]
        lib = Path(tmp) / out.name
        cmds.append([_nvcc(), "--shared", *map(str, objs), "-o", str(lib)])
        with ThreadPoolExecutor(max_workers=len(objs)) as pool:
            _run_all(pool.map(_run, cmds[:-1]), verbose)
        _run_all([_run(cmds[-1])], verbose)
        os.replace(lib, out)  # atomic: a failed or interrupted build leaves nothing at `out`
    print(f"jquant: CUDA kernels built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def _run(cmd: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
    return cmd, subprocess.run(cmd, capture_output=True, text=True)


def _run_all(results, verbose: bool) -> None:
    for cmd, res in results:
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        if res.returncode != 0:
            raise BuildError(f"nvcc failed ({res.returncode}): {' '.join(cmd[-3:])}\n{res.stderr[-4000:]}")


@functools.cache
def load_library() -> ctypes.CDLL:
    """Builds (if needed) and loads the library once per process."""
    return ctypes.CDLL(str(build()))


@functools.cache
def register() -> tuple[str, ...]:
    """Registers every FFI target of the library with XLA for CUDA; returns their names.

    Raises:
        BuildError: the library could not be built or loaded.
    """
    import jax

    try:
        lib = load_library()
    except OSError as e:
        raise BuildError(f"could not load the CUDA library: {e}") from e
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA")
    return tuple(TARGETS)


if __name__ == "__main__":
    print(build(force="--force" in sys.argv, verbose=True))
