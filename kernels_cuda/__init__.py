"""kernels_cuda: CUDA C++ kernels for jquant, called from JAX through the XLA FFI (`jax.ffi`).

For the cases Pallas does not reach its targets on (see bench/results/*/targets.md). Importing the
package registers its `jquant.ops.qmatmul` backends; the shared library is compiled with nvcc on
first use (`kernels_cuda.build`), and a backend is unavailable, with the reason, when it cannot be.
All three read 4-bit codes as stored with bf16/f16 activations (what each takes: its module's
``CAPS``); `jquant.ops.routes.ROUTES` orders them.

* ``cuda_w4a16_decode`` (M <= 16; every 4-bit code kind): mma.sync with the weight dequantized
  into registers, activations staged in shared memory in fragment order, split-K.
* ``cuda_w4a16_gemm`` (16 < M <= 128; integer codes; batched decode, chunked prefill): 256 (or 128)
  weight rows x 32/64/128 activation rows per block, a cp.async shared-memory ring for codes and
  activations, ldmatrix B fragments from activations gathered once into fragment order, split-K.
* ``cuda_w4a16_wgmma`` (M >= 40 on compute capability 9.0, ahead of the GEMM where both apply; every
  4-bit code kind): Hopper's asynchronous wgmma with the dequantized weight as the register
  operand, the activations by TMA into 128B-swizzled shared memory, a producer warpgroup and two
  ping-ponging consumer warpgroups, 128 weight rows x 64/128/256 activation rows per block, split-K.
"""

from jquant.core.qarray import register_pytree

register_pytree()

from jquant.ops.backend import register_backend  # noqa: E402
from kernels_cuda.w4a16 import DecodeConfig, W4A16DecodeBackend, decode_config, w4a16_decode  # noqa: E402
from kernels_cuda.w4a16_gemm import GemmConfig, W4A16GemmBackend, gemm_config, w4a16_gemm  # noqa: E402
from kernels_cuda.w4a16_wgmma import W4A16WgmmaBackend, WgmmaConfig, w4a16_wgmma, wgmma_config  # noqa: E402

register_backend(W4A16DecodeBackend())
register_backend(W4A16GemmBackend())
register_backend(W4A16WgmmaBackend())

__all__ = [
    "DecodeConfig",
    "GemmConfig",
    "W4A16DecodeBackend",
    "W4A16GemmBackend",
    "W4A16WgmmaBackend",
    "WgmmaConfig",
    "decode_config",
    "gemm_config",
    "w4a16_decode",
    "w4a16_gemm",
    "w4a16_wgmma",
    "wgmma_config",
]
