// Decode kernel instances for integer codes with float zeros (w = v * s - z: GGUF Q4_1, K-quant
// mins); the kernel is in decode.cuh.
#include "decode.cuh"

namespace jquant::decode {

template <typename T>
cudaError_t launch_float_zero(ScaleType st, int stages, const Launch& a) {
  switch (st) {
    case ScaleType::kF32:
      return launch_nt<T, float, kFloatZero>(stages, a);
    case ScaleType::kF16:
      return launch_nt<T, __half, kFloatZero>(stages, a);
    case ScaleType::kBF16:
      return launch_nt<T, __nv_bfloat16, kFloatZero>(stages, a);
    default:
      return cudaErrorInvalidValue;
  }
}
template cudaError_t launch_float_zero<__nv_bfloat16>(ScaleType, int, const Launch&);
template cudaError_t launch_float_zero<__half>(ScaleType, int, const Launch&);

}  // namespace jquant::decode
