// wgmma kernel instances (sm_90a) for integer codes with float zeros (GGUF Q4_1 / Q4_K) and for
// 16-entry codebooks (NF4, bnb FP4, IQ4, fp4 e2m1 of MXFP4 / NVFP4); the kernel is wgmma_kernel.cuh.
// Only the TMA variant is built for these kinds; groups of 16 only for NVFP4 (e4m3 scales).
#include "wgmma_kernel.cuh"

namespace jquant::wgmma {

template <typename T>
cudaError_t launch_float_zero(ScaleType st, const Launch& a) {
  if (a.group % 32) return cudaErrorInvalidValue;
  switch (st) {
    case ScaleType::kF32:
      return launch_out<T, float, kFloatZero, 1>(a);
    case ScaleType::kF16:
      return launch_out<T, __half, kFloatZero, 1>(a);
    case ScaleType::kBF16:
      return launch_out<T, __nv_bfloat16, kFloatZero, 1>(a);
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_codebook(ScaleType st, const Launch& a) {
  if (a.group == 16) return st == ScaleType::kE4M3 ? launch_out<T, E4M3, kCodebook, 2>(a) : cudaErrorInvalidValue;
  switch (st) {
    case ScaleType::kF32:
      return launch_out<T, float, kCodebook, 1>(a);
    case ScaleType::kF16:
      return launch_out<T, __half, kCodebook, 1>(a);
    case ScaleType::kBF16:
      return launch_out<T, __nv_bfloat16, kCodebook, 1>(a);
    case ScaleType::kE4M3:
      return launch_out<T, E4M3, kCodebook, 1>(a);
    case ScaleType::kE8M0:
      return launch_out<T, E8M0, kCodebook, 1>(a);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t launch_float_zero<__nv_bfloat16>(ScaleType, const Launch&);
template cudaError_t launch_float_zero<__half>(ScaleType, const Launch&);
template cudaError_t launch_codebook<__nv_bfloat16>(ScaleType, const Launch&);
template cudaError_t launch_codebook<__half>(ScaleType, const Launch&);

}  // namespace jquant::wgmma
