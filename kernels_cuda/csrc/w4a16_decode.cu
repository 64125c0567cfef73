// The decode (M <= 16) weight-only GEMM's XLA FFI handler, its occupancy query, and the kernel
// instances for integer codes. The kernel itself, its layouts and its math: decode.cuh. The other
// code kinds are compiled in their own translation units (decode_float_zero.cu, decode_codebook.cu).

#include <utility>

#include "decode.cuh"

namespace ffi = xla::ffi;

namespace jquant::decode {

template <typename T>
cudaError_t launch_int(ScaleType st, int stages, const Launch& a) {
  switch (st) {
    case ScaleType::kF32:
      return launch_nt<T, float, kInt>(stages, a);
    case ScaleType::kF16:
      return launch_nt<T, __half, kInt>(stages, a);
    case ScaleType::kBF16:
      return launch_nt<T, __nv_bfloat16, kInt>(stages, a);
    default:
      return cudaErrorInvalidValue;
  }
}
template cudaError_t launch_int<__nv_bfloat16>(ScaleType, int, const Launch&);
template cudaError_t launch_int<__half>(ScaleType, int, const Launch&);

}  // namespace jquant::decode

namespace {

using namespace jquant;
using namespace jquant::decode;

template <typename T>
cudaError_t launch_kind(int kind, ScaleType st, int stages, const Launch& a) {
  switch (kind) {
    case kInt:
      return launch_int<T>(st, stages, a);
    case kFloatZero:
      return launch_float_zero<T>(st, stages, a);
    case kCodebook:
      return launch_codebook<T>(st, stages, a);
    default:
      return cudaErrorInvalidValue;
  }
}

// The buffer dtype a scale type is stored as (fp8 scales travel as their uint8 bits).
ffi::DataType scale_storage(ScaleType st) {
  switch (st) {
    case ScaleType::kF32:
      return ffi::DataType::F32;
    case ScaleType::kF16:
      return ffi::DataType::F16;
    case ScaleType::kBF16:
      return ffi::DataType::BF16;
    default:
      return ffi::DataType::U8;
  }
}

std::string check(ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::AnyBuffer scale, ffi::AnyBuffer zero,
                  const ffi::AnyBuffer& out, int64_t group, int64_t k_split, int64_t has_zero, int64_t warps,
                  int64_t tiled, int64_t kind, int64_t scale_type, int64_t kslices) {
  const auto xd = x.dimensions(), wd = codes.dimensions(), sd = scale.dimensions(), od = out.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 2 || od.size() != 3)
    return "x, codes, scale must be 2-D and out 3-D";
  const int64_t m = xd[0], k = xd[1], n = sd[0];
  const auto xt = x.element_type();
  if (xt != ffi::DataType::BF16 && xt != ffi::DataType::F16) return "x must be bf16 or f16";
  const bool codes_ok = tiled ? (wd[0] == (n + kRowsPerWarp - 1) / kRowsPerWarp && wd[1] == k * 16)
                              : (wd[0] == n && wd[1] * 2 == k);
  if (codes.element_type() != ffi::DataType::U8 || !codes_ok)
    return "codes must be uint8 " + std::string(tiled ? "[ceil(N/32), 16 K]" : "[N, K/2]") + ", got " + dims_str(wd) +
           " for N=" + std::to_string(n) + ", K=" + std::to_string(k);
  if (kind < kInt || kind > kCodebook) return "unknown code kind " + std::to_string(kind);
  if (scale_type < 0 || scale_type > int(ScaleType::kE8M0)) return "unknown scale type " + std::to_string(scale_type);
  const ScaleType st = static_cast<ScaleType>(scale_type);
  if (scale.element_type() != scale_storage(st) || (kind != kCodebook && int(st) > int(ScaleType::kBF16)))
    return "scale storage does not match scale type " + std::to_string(scale_type) +
           " (f32 / f16 / bf16; fp8 e4m3 / e8m0 as uint8, codebooks only)";
  if (m < 1 || m > 16 || k % kStepK != 0 || !(group % 32 == 0 || group == 16) || k % group != 0 ||
      k_split % kStepK != 0 || k_split < kStepK || warps < 1 || warps > 8 || kslices < 1 || warps % kslices != 0)
    return "unsupported M=" + std::to_string(m) + " K=" + std::to_string(k) + " group=" + std::to_string(group) +
           " k_split=" + std::to_string(k_split) + " warps=" + std::to_string(warps) +
           " kslices=" + std::to_string(kslices);
  if (sd[1] != k / group) return "scale " + dims_str(sd) + " does not match K/G=" + std::to_string(k / group);
  const size_t nz = size_t(n * (k / group));
  if (kind == kInt && has_zero && (zero.element_type() != ffi::DataType::U8 || zero.element_count() != nz))
    return "zero must be uint8 with the scale's shape";
  if (kind == kFloatZero && (zero.element_type() != scale.element_type() || zero.element_count() != nz))
    return "float zeros must have the scale's dtype and shape";
  const int64_t splits = (k + k_split - 1) / k_split;
  if (od[0] != splits || od[1] != m || od[2] != n ||
      !(out.element_type() == ffi::DataType::F32 || (splits == 1 && out.element_type() == xt)))
    return "out must be [S, M, N] = (" + std::to_string(splits) + ", " + std::to_string(m) + ", " +
           std::to_string(n) + "), f32 (or x's dtype when S == 1), got " + dims_str(od);
  if (smem_bytes(int(k_split), m > 8 ? 2 : 1, 0, 0) > kMaxSplitBytes) return "k_split too large for shared memory";
  return "";
}

ffi::Error W4A16DecodeImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::AnyBuffer scale,
                           ffi::AnyBuffer zero, ffi::Result<ffi::AnyBuffer> out, int64_t group, int64_t k_split,
                           int64_t bias, int64_t has_zero, int64_t stages, int64_t warps, int64_t tiled,
                           int64_t kind, int64_t scale_type, int64_t cb0, int64_t cb1, int64_t cb2, int64_t cb3,
                           int64_t kslices) {
  const std::string why =
      check(x, codes, scale, zero, *out, group, k_split, has_zero, warps, tiled, kind, scale_type, kslices);
  if (!why.empty()) return ffi::Error::InvalidArgument("jquant_w4a16_decode: " + why);
  const auto xd = x.dimensions();
  Launch a{stream,
           x.untyped_data(),
           codes.untyped_data(),
           scale.untyped_data(),
           zero.untyped_data(),
           out->untyped_data(),
           int(xd[0]),
           int(scale.dimensions()[0]),
           int(xd[1]),
           int(group),
           int(k_split),
           int(bias),
           int(warps),
           has_zero != 0,
           tiled != 0,
           unpack_codebook(cb0, cb1, cb2, cb3),
           int(kslices),
           out->element_type() != ffi::DataType::F32};
  const ScaleType st = static_cast<ScaleType>(scale_type);
  const cudaError_t err = x.element_type() == ffi::DataType::BF16
                              ? launch_kind<__nv_bfloat16>(int(kind), st, int(stages), a)
                              : launch_kind<__half>(int(kind), st, int(stages), a);
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("jquant_w4a16_decode: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

// x [M, K], codes (canonical [N, K/2] or tiled), scale [N, K/G], zero ([N, K/G] or a 1-element
// dummy) -> partial sums [S, M, N] f32 (or, with one split, [1, M, N] in x's dtype), plus the launch
// attributes.
template <typename B>
auto decode_binding(B&& args) {
  return std::forward<B>(args)
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("group")
      .template Attr<int64_t>("k_split")
      .template Attr<int64_t>("bias")
      .template Attr<int64_t>("has_zero")
      .template Attr<int64_t>("stages")
      .template Attr<int64_t>("warps")
      .template Attr<int64_t>("tiled")
      .template Attr<int64_t>("kind")
      .template Attr<int64_t>("scale_type")
      .template Attr<int64_t>("cb0")
      .template Attr<int64_t>("cb1")
      .template Attr<int64_t>("cb2")
      .template Attr<int64_t>("cb3")
      .template Attr<int64_t>("kslices");
}

}  // namespace

// Blocks of the kernel one SM holds at once for a launch configuration (for the host-side choice
// of the K split, `kernels_cuda.w4a16.decode_config`): x_dtype 0 = bf16, 1 = f16; kind and
// scale_type as the handler's attributes. Returns -1 on a CUDA error (no device, ...).
extern "C" int JquantW4A16BlocksPerSM(int x_dtype, int kind, int scale_type, int m, int group, int k_split,
                                      int stages, int warps) {
  int blocks = 0;
  Launch a{};
  a.m = m;
  a.group = group;
  a.ks = k_split;
  a.warps = warps;
  a.blocks_per_sm = &blocks;
  const ScaleType st = static_cast<ScaleType>(scale_type);
  const cudaError_t err =
      x_dtype == 0 ? launch_kind<__nv_bfloat16>(kind, st, stages, a) : launch_kind<__half>(kind, st, stages, a);
  return err == cudaSuccess ? blocks : -1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16Decode, W4A16DecodeImpl, decode_binding(bind_stream_and_4_buffers()),
                              // Only stream work in the handler: XLA may record it into a CUDA graph
                              // (command buffer) together with the neighbouring fusions.
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16DecodePoisoned, WithPoisonedOut<W4A16DecodeImpl>::Call,
                              decode_binding(bind_stream_and_4_buffers().Arg<ffi::AnyBuffer>()),
                              {ffi::Traits::kCmdBufferCompatible});
