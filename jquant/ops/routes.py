"""The JAX routing tables: per platform, the order in which `qmatmul` backends are tried.

The first backend whose `Capabilities` cover a call (and that can run here) takes it; the table is
the whole order, there are no priorities. `jquant kernels` prints it with each backend's
capabilities, and tests/ops/test_routing.py pins the choice for every code type x M x device.
Why this order (measurements in bench/results/nvidia_h200/):

* CUDA W4A16 kernels first where they apply: wgmma (sm_90, M >= 40) beats the mma.sync GEMM from
  M = 40 (qmatmul_crossover.md); the decode kernel (M <= 16) and the GEMM (17..128) beat Pallas.
  The decode and wgmma kernels read every 4-bit code kind (integer codes, GGUF float zeros, NF4 /
  bnb FP4 / IQ4 codebooks, MXFP4 / NVFP4), 1.05-1.5x faster than the Pallas ``wxa16`` kernel at
  decode and 1.3-3.3x faster than ``xla_dequant_dot`` at M = 128..1024 on an H100
  (bench/results/nvidia_h100/issue15_h100_run.md); the mma.sync GEMM reads integer codes only.
* W8A8 before the weight-only kernels: it declines weight-only calls, and weight-only kernels take
  an activation recipe only composed with an XLA fake-quantization. ``pallas_triton_w8a8`` takes
  the recipes whose scales change along K (1x128 activation groups with 128x128 weight blocks,
  M >= 2), where XLA has only per-block dots (Pallas 8.8-12x faster at M = 1024 on an H100);
  ``xla_w8a8`` (XLA's own fp8 / int8 GEMMs, cuBLAS) the per-token / per-tensor ones, where it was
  1.3x faster than the Pallas kernel at M = 1024 on the 70B shapes and equal at decode
  (bench/results/nvidia_h100/w8a8_sweep.md, qmatmul_w8a8.md).
* Pallas W4A16/W8A16: decode tiles to M = 64, tensor-core tiles to M = 127; from M = 128 XLA's
  dequantize -> cuBLAS dot is faster than the fused Pallas-Triton prefill (87 vs 92 us at M = 128).
* ``pallas_triton_wxa16`` for every other weight-only code type up to M = 127 (float zeros,
  codebooks, fp4, fp8 W8A16, 2-bit), after the integer kernels it generalizes.
* ``xla_dequant_dot`` last on GPU: every code type, any M, one bf16/f16 rounding of the weight.
  The f32 ``xla_reference`` is the spec, not a GPU path: it runs there only when forced.
* CPU: the C++ ``cpu_qmatmul`` (kernels_cpu) for 4/8-bit integer and 4-bit codebook weights up to
  M = 32, where it beats the chunked XLA dequantization (bench/results/cpu/decode.md); then
  ``xla_cpu_chunked`` for everything else. Re-measured on SmolLM2-135M's Q4_1 shapes, 2 threads
  (``python bench/decode_cpu.py --prefill-only``): the kernel's lead shrinks from 1.8x at M = 8 and
  1.35x at 16 to 1.11x at 32, and it loses from M = 37 (0.94x) to 64 (0.75x, the padded prefill
  of the README prompt), so the limit stays at 32.
"""

from __future__ import annotations

__all__ = ["ROUTES"]

ROUTES: dict[str, tuple[str, ...]] = {
    "gpu": (
        "cuda_w4a16_wgmma",
        "cuda_w4a16_decode",
        "cuda_w4a16_gemm",
        "pallas_triton_w8a8",
        "xla_w8a8",
        "pallas_triton_wna16_decode",
        "pallas_triton_wna16_prefill",
        "pallas_triton_wxa16",
        "xla_dequant_dot",
    ),
    "cpu": ("cpu_qmatmul", "xla_cpu_chunked", "xla_reference"),
    "tpu": ("xla_reference",),
}
