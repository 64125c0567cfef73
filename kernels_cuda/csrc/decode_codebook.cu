// Decode kernel instances for 16-entry codebooks (NF4, bitsandbytes FP4, IQ4_NL / IQ4_XS, fp4 e2m1
// of MXFP4 / NVFP4), with every scale storage those formats use; the kernel is in decode.cuh.
#include "decode.cuh"

namespace jquant::decode {

template <typename T>
cudaError_t launch_codebook(ScaleType st, int stages, const Launch& a) {
  switch (st) {
    case ScaleType::kF32:
      return launch_nt<T, float, kCodebook>(stages, a);
    case ScaleType::kF16:
      return launch_nt<T, __half, kCodebook>(stages, a);
    case ScaleType::kBF16:
      return launch_nt<T, __nv_bfloat16, kCodebook>(stages, a);
    case ScaleType::kE4M3:
      return launch_nt<T, E4M3, kCodebook>(stages, a);
    case ScaleType::kE8M0:
      return launch_nt<T, E8M0, kCodebook>(stages, a);
    default:
      return cudaErrorInvalidValue;
  }
}
template cudaError_t launch_codebook<__nv_bfloat16>(ScaleType, int, const Launch&);
template cudaError_t launch_codebook<__half>(ScaleType, int, const Launch&);

}  // namespace jquant::decode
