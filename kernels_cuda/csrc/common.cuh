// Device helpers shared by jquant's CUDA kernels: 16-bit float traits, mma.sync m16n8k16, cp.async,
// the LOP3 magic-number dequantization of 4-bit codes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace jquant {

template <typename T>
struct Half2Traits;

template <>
struct Half2Traits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 128.0 (7-bit mantissa: 128 + q exact)
  static constexpr float kMagicF = 128.0f;
  static __device__ __forceinline__ T2 from_float(float f) { return __float2bfloat162_rn(f); }
};

template <>
struct Half2Traits<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // f16 1024.0 (10-bit mantissa)
  static constexpr float kMagicF = 1024.0f;
  static __device__ __forceinline__ T2 from_float(float f) { return __float2half2_rn(f); }
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// mma.sync m16n8k16, f32 accumulate; A row-major (4 x b32), B column-major (2 x b32).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 16-byte global -> shared copy that bypasses L1 (cp.async.cg), asking L2 for the 256-byte line pair.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Two codes (nibbles `shift` and `shift + 16` of `w`) -> the 16-bit floats (MAGIC + q) x2.
// One LOP3 computing (a & b) | c (lut 0xEA); written in PTX because the compiler splits the C++
// expression into two LOP3s (a SASS LOP3 takes a single immediate).
template <typename T>
__device__ __forceinline__ uint32_t magic_pair(uint32_t w, int shift) {
  uint32_t res;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(res) : "r"(w >> shift), "n"(0x000F000F), "n"(Half2Traits<T>::kMagic));
  return res;
}

// Two codes -> ((q - z) * s) x2, rounded once to T.
template <typename T>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, int shift, typename Half2Traits<T>::T2 zero2,
                                                 typename Half2Traits<T>::T2 scale2) {
  using T2 = typename Half2Traits<T>::T2;
  uint32_t bits = magic_pair<T>(w, shift);
  T2 v = *reinterpret_cast<T2*>(&bits);
  v = __hmul2(__hsub2(v, zero2), scale2);
  return *reinterpret_cast<uint32_t*>(&v);
}

inline std::string dims_str(xla::ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

// A handler with one more buffer before its result — the NaN-filled output that tests alias to it
// (`kernels_cuda.backend.call_kernel(..., poison=True)`) — that otherwise calls `Impl` unchanged.
template <auto Impl>
struct WithPoisonedOut;

template <typename... Attrs,
          xla::ffi::Error (*Impl)(cudaStream_t, xla::ffi::AnyBuffer, xla::ffi::AnyBuffer, xla::ffi::AnyBuffer,
                                  xla::ffi::AnyBuffer, xla::ffi::Result<xla::ffi::AnyBuffer>, Attrs...)>
struct WithPoisonedOut<Impl> {
  static xla::ffi::Error Call(cudaStream_t stream, xla::ffi::AnyBuffer x, xla::ffi::AnyBuffer codes,
                              xla::ffi::AnyBuffer scale, xla::ffi::AnyBuffer zero, xla::ffi::AnyBuffer /*poisoned*/,
                              xla::ffi::Result<xla::ffi::AnyBuffer> out, Attrs... attrs) {
    return Impl(stream, x, codes, scale, zero, out, attrs...);
  }
};

// The start of every handler binding here: the CUDA stream, then x, codes, scale, zero.
inline auto bind_stream_and_4_buffers() {
  return xla::ffi::Ffi::Bind()
      .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
      .Arg<xla::ffi::AnyBuffer>()
      .Arg<xla::ffi::AnyBuffer>()
      .Arg<xla::ffi::AnyBuffer>()
      .Arg<xla::ffi::AnyBuffer>();
}

}  // namespace jquant
