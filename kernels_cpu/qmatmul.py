"""The CPU qmatmul kernel (`csrc/qmatmul_cpu.cc`) as a JAX op and a `qmatmul` backend.

The kernel reads jquant's canonical `QArray` as stored, with per-row groups (block ``(1, G)``, G a
multiple of 32 for 4-bit codes and of 16 for 8-bit ones, or per-channel), nothing repacked:

* 4-bit containers (``uint4``, ``uint4b8``, ``uint3b4``, and the 16-entry codebooks ``nf4``,
  ``iq4nl``, ``bnb_fp4``, ``fp4_e2m1``): uint8 [N, K/2], element 2i in the low nibble of byte i;
  the code's value comes from a 16-entry f32 table (``code - bias`` or the codebook).
* 8-bit containers: ``int8`` (GGUF Q8_0), ``uint8`` with a bias (``uint8b128``, GGUF Q5/Q6 codes
  widened to bytes).
* scales f32 / f16 / bf16; zeros none, uint8 integer zero points (``(v - z) * s``) or float
  offsets (``v * s - z``: GGUF Q4_1 / K-quant mins) in f32 / f16 / bf16.

Activations are f32 (bf16 / f16 inputs are widened by XLA first, M*K values), accumulation f32.
Decode (M <= 2) runs a factored kernel, ``sum_g s_g * (v_g . x_g) + c_g * sum(x_g)`` on the raw
codes; larger M dequantizes in registers with the spec's formula and reuses each value for up to 8
activation rows. Either differs from the spec by f32 rounding only (worst max|err| / tolerance on the
shared suite's f32 cases: 0.14 AVX-512, 0.12 AVX2, 0.36 scalar). Activations are not quantized by
default (llama.cpp's Q8 activations miss the f32 tolerance); `set_act_quant` (``JQUANT_CPU_ACT=int8``)
opts into them for decode calls on AVX-512 VNNI CPUs. The act-order permutation, when present, is
applied to x with one gather. Output f32 [M, N], cast to x's dtype. Threads: all cores
(``JQUANT_CPU_THREADS`` / `set_threads`); ISA: the best the CPU has (``JQUANT_CPU_ISA`` / `set_isa`).

Scanned models: the backend declares ``reads_stacked``, so `jquant.ops.qmatmul` hands it a scanned
model's whole weight stack and the layer index (``layer=``), which the kernel reads in place; a
``w[layer]`` slice passed to a custom call inside ``lax.scan`` would be copied per call (131 vs 228 us
per 3072 x 576 Q4_1 layer, bench/results/cpu/decode.md).
"""

from __future__ import annotations

import ctypes

import jax
import jax.numpy as jnp
import numpy as np

from jquant.core.qarray import QArray
from jquant.ops.backend import Backend, register_backend, why_not_operands
from jquant.ops.qmatmul import layer_view
from kernels_cpu.caps import CAPS, M_MAX, code_table, more_reasons

__all__ = [
    "CAPS",
    "CpuQmatmulBackend",
    "cpu_qmatmul",
    "code_table",
    "why_not",
    "set_threads",
    "set_isa",
    "get_isa",
    "read_bandwidth",
    "set_act_quant",
    "get_act_quant",
    "ISAS",
    "M_MAX",
]

ISAS = ("scalar", "avx2", "avx512")


def why_not(x, w: QArray) -> str:
    """ "" when `cpu_qmatmul` computes ``x @ dequantize(w).T`` when called directly, else why not."""
    return why_not_operands(CAPS, x, w, more=more_reasons)


def cpu_qmatmul(x: jax.Array, w: QArray, layer: jax.Array | int | None = None) -> jax.Array:
    """``x @ dequantize(w).T`` with the C++ kernel; [..., N] in x's dtype.

    Args:
        x: [..., K] activations.
        w: the `QArray` (N, K); with ``layer``, its arrays carry a leading layer axis (the stacked
            weights of a scanned model: data [L, N, K*c/8], scale / zero [L, N, K/G], perm [L, K]).
        layer: None, or an int32 scalar (may be traced): the layer of stacked ``w`` to multiply by,
            read by the kernel in place (a ``w[layer]`` slice passed instead would be copied per call
            inside ``lax.scan``, since a custom call needs its operands in buffers of their own).

    Raises:
        ValueError: the kernel cannot read ``w`` (`why_not`).
    """
    why = why_not(x, w if layer is None else layer_view(w))
    if why:
        raise ValueError(f"kernels_cpu qmatmul: {why}")
    from kernels_cpu.build import register

    register()
    n, k = w.shape
    lead = x.shape[:-1]
    xf = x.reshape(-1, k).astype(jnp.float32)
    if w.perm is not None:  # act-order: permute the activations once, the weights stay in data order
        perm = w.perm if layer is None else jax.lax.dynamic_index_in_dim(w.perm, layer, keepdims=False)
        xf = jnp.take(xf, perm, axis=-1)
    q = w.qtype
    zero = w.zero if w.zero is not None else jnp.zeros((0,), jnp.uint8)
    y = jax.ffi.ffi_call("jquant_cpu_qmatmul", jax.ShapeDtypeStruct((xf.shape[0], n), jnp.float32))(
        xf,
        w.data,
        w.scale,
        zero,
        jnp.asarray(code_table(q)),
        jnp.asarray(0 if layer is None else layer, jnp.int32).reshape(()),
        bits=np.int64(q.container_bits),
        group=np.int64(min(w.block[1], k)),
        bias=np.int64(0 if q.signed or q.container_bits == 4 else q.bias),
        has_zero=np.int64(w.zero is not None),
    )
    return y.reshape(*lead, n).astype(x.dtype)


class CpuQmatmulBackend(Backend):
    """`cpu_qmatmul` on the CPU for M <= 32, ahead of ``xla_cpu_chunked``; unavailable (with the
    reason) where the library cannot be compiled or loaded."""

    name = "cpu_qmatmul"
    caps = CAPS
    # Takes ``layer=`` (jquant.ops.qmatmul): reads a scanned model's layer of the stacked weights in place.
    reads_stacked = True

    why_not_more = staticmethod(more_reasons)

    def unavailable(self, call) -> str:
        from kernels_cpu.build import BuildError, register

        try:
            register()
        except BuildError as e:
            return f"CPU kernel library unavailable: {str(e).splitlines()[0]}"
        return ""

    def __call__(self, x, w, act=None, *, layer=None):
        return cpu_qmatmul(x, w, layer)


# ---- runtime controls (ctypes into the loaded library) ------------------------------------------------
def _lib() -> ctypes.CDLL:
    from kernels_cpu.build import load_library

    return load_library()


def set_threads(n: int) -> None:
    """Threads per kernel call from now on (0: XLA's intra-op pool size; env ``JQUANT_CPU_THREADS``)."""
    _lib().jquant_cpu_set_threads(int(n))


def set_isa(name: str) -> str:
    """Force the code path (``"scalar"``, ``"avx2"``, ``"avx512"``; capped at what the CPU has; env
    ``JQUANT_CPU_ISA``); returns the one in use."""
    return ISAS[_lib().jquant_cpu_set_isa(ISAS.index(name))]


def get_isa(detected: bool = False) -> str:
    """The code path in use (``detected=True``: the best the CPU supports)."""
    lib = _lib()
    return ISAS[lib.jquant_cpu_detected_isa() if detected else lib.jquant_cpu_get_isa()]


def set_act_quant(mode: str) -> str:
    """Opt-in int8 activations for decode calls (``"int8"``) or the spec's f32 ones (``"none"``, the
    default; env ``JQUANT_CPU_ACT=int8``); returns the mode in effect (``"none"`` where the CPU has no
    AVX-512 VNNI).

    With ``"int8"``, calls of M <= 2 on integer codes with groups of 32k columns quantize each
    32-column block of x to int8 (``dx = max|x| / 127``, round to nearest: llama.cpp's Q8_0 / Q8_1
    activations) and multiply with VNNI integer dot products: the result is ``x^ @ dequantize(w).T``
    for the quantized ``x^``, which is NOT the spec's function (``x`` loses ~8 bits; errors ~1e-3
    relative on the SmolLM2 layers, outside the suite's f32 tolerance), hence opt-in. Other calls are
    unchanged.
    """
    if mode not in ("none", "int8"):
        raise ValueError(f"act quant mode must be 'none' or 'int8', got {mode!r}")
    return "int8" if _lib().jquant_cpu_set_act(int(mode == "int8")) else "none"


def get_act_quant() -> str:
    """The activation mode in effect (`set_act_quant`)."""
    return "int8" if _lib().jquant_cpu_get_act() else "none"


def read_bandwidth(nbytes: int = 1 << 29, threads: int = 1, reps: int = 5) -> float:
    """Streaming-read memory bandwidth in bytes/s with ``threads`` threads (best of ``reps``)."""
    return float(_lib().jquant_cpu_read_bandwidth(int(nbytes), int(threads), int(reps)))


register_backend(CpuQmatmulBackend())
