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

// Epilogue stores: 4 f32 accumulators -> 4 consecutive outputs (one 16- or 8-byte vector store).
template <typename OutT>
__device__ __forceinline__ void store4(OutT* p, float4 v);
template <>
__device__ __forceinline__ void store4<float>(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}
template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(p) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}
template <>
__device__ __forceinline__ void store4<__half>(__half* p, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(p) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}
template <typename OutT>
__device__ __forceinline__ OutT from_f32(float v) {
  return static_cast<OutT>(v);
}

// The epilogue's second half: a block's f32 tile, staged in shared memory as os[BM][LD] (activation
// row, weight row), to out[split, m0 + i, n0 + j] of the row-major [S, M, N] output, 4 consecutive outputs
// along N per thread `tid` (0..THREADS-1) and store; rows and columns past M or N are dropped.
template <int BM, int BN, int LD, int THREADS, typename OutT>
__device__ __forceinline__ void store_out_tile(const float* os, OutT* out, int split, int m0, int n0, int m, int n,
                                               int tid) {
  OutT* o = out + static_cast<size_t>(split) * m * n;
  const bool vec = (n % 4) == 0;
#pragma unroll
  for (int it = 0; it < BM * BN / 4 / THREADS; ++it) {
    const int idx = tid + it * THREADS;
    const int mcol = idx / (BN / 4), nq = (idx % (BN / 4)) * 4;
    const int gm = m0 + mcol, gn = n0 + nq;
    if (gm >= m || gn >= n) continue;
    const float4 v = *reinterpret_cast<const float4*>(os + mcol * LD + nq);
    OutT* dst = o + static_cast<size_t>(gm) * n + gn;
    if (vec && gn + 4 <= n) {
      store4<OutT>(dst, v);
    } else {
      const float e[4] = {v.x, v.y, v.z, v.w};
      for (int u = 0; u < 4 && gn + u < n; ++u) dst[u] = from_f32<OutT>(e[u]);
    }
  }
}

inline std::string dims_str(xla::ffi::AnyBuffer::Dimensions d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

// Sizes of a GEMM-style call (x [M, K], codes [N, K/2], scale [N, K/G], out [S, M, N]).
struct GemmDims {
  int64_t m, n, k, splits;
  bool f32_out;
};

// The operand checks the GEMM kernels' handlers share: "" and `d` filled in, or what is wrong.
// out is f32 partial slabs, one per K split, or x's dtype when there is a single split.
// kind / scale_type (codes.cuh Kind / ScaleType; -1: integer codes, the scale's own dtype) widen the
// checks for the kernels that read float zeros, codebooks and fp8 scales (as uint8), groups of 16.
inline std::string check_gemm_operands(xla::ffi::AnyBuffer x, xla::ffi::AnyBuffer codes, xla::ffi::AnyBuffer scale,
                                       xla::ffi::AnyBuffer zero, const xla::ffi::AnyBuffer& out, int64_t group,
                                       int64_t k_split, int64_t has_zero, int step_k, GemmDims& d,
                                       int64_t kind = 0, int64_t scale_type = -1) {
  using xla::ffi::DataType;
  const auto xd = x.dimensions(), wd = codes.dimensions(), sd = scale.dimensions(), od = out.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 2 || od.size() != 3)
    return "x, codes, scale must be 2-D and out 3-D";
  const int64_t m = xd[0], k = xd[1], n = sd[0];
  const auto xt = x.element_type(), st = scale.element_type();
  if (xt != DataType::BF16 && xt != DataType::F16) return "x must be bf16 or f16";
  if (codes.element_type() != DataType::U8 || wd[0] != n || wd[1] * 2 != k)
    return "codes must be uint8 [N, K/2], got " + dims_str(wd) + " for N=" + std::to_string(n) +
           ", K=" + std::to_string(k);
  if (kind < 0 || kind > 2) return "unknown code kind " + std::to_string(kind);
  if (scale_type > 4) return "unknown scale type " + std::to_string(scale_type);
  const bool fp8_scale = scale_type >= 3;  // e4m3 / e8m0 bytes, codebooks only
  if (fp8_scale ? (st != DataType::U8 || kind != 2)
                : (st != DataType::F32 && st != DataType::F16 && st != DataType::BF16))
    return "scale must be f32, f16 or bf16 (fp8 e4m3 / e8m0 as uint8 with codebooks)";
  if (scale_type >= 0 && !fp8_scale && st != (scale_type == 0 ? DataType::F32 : scale_type == 1 ? DataType::F16 : DataType::BF16))
    return "scale dtype does not match scale type " + std::to_string(scale_type);
  const bool group_ok = group % 32 == 0 || (group == 16 && kind == 2 && scale_type == 3);
  if (m < 1 || k % step_k != 0 || !group_ok || group < 1 || k % group != 0 || k_split % step_k != 0 ||
      k_split < step_k)
    return "unsupported M=" + std::to_string(m) + " K=" + std::to_string(k) + " group=" + std::to_string(group) +
           " k_split=" + std::to_string(k_split);
  if (sd[1] != k / group) return "scale " + dims_str(sd) + " does not match K/G=" + std::to_string(k / group);
  if (kind == 0 && has_zero && (zero.element_type() != DataType::U8 || zero.element_count() != size_t(n * (k / group))))
    return "zero must be uint8 with the scale's shape";
  if (kind == 1 && (zero.element_type() != st || zero.element_count() != size_t(n * (k / group))))
    return "float zeros must have the scale's dtype and shape";
  const int64_t splits = (k + k_split - 1) / k_split;
  const bool f32_out = out.element_type() == DataType::F32;
  if (od[0] != splits || od[1] != m || od[2] != n || !(f32_out || (splits == 1 && out.element_type() == xt)))
    return "out must be [S, M, N] = (" + std::to_string(splits) + ", " + std::to_string(m) + ", " +
           std::to_string(n) + "), f32 (or x's dtype when S == 1), got " + dims_str(od);
  d = GemmDims{m, n, k, splits, f32_out};
  return "";
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
