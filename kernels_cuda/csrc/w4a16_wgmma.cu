// W4A16 GEMM on Hopper's asynchronous warpgroup MMA (wgmma, sm_90a) for prefill-sized M, on jquant's
// canonical int4 layout, exposed to JAX through the XLA FFI.
//
//   out[s, m, n] = sum_{k in split s} xf[m, k] * (v[n, k] - z[n, k/G]) * scale[n, k/G]
//
// Operands and output as in w4a16_gemm.cu (xf: x with the columns of every 128-column block in
// fragment order; codes [N, K/2] uint8 low nibble first; scale [N, K/G]; optional uint8 zeros;
// out [S, M, N] f32 partials, or x's dtype when S == 1).
//
// How the work is cut:
//   * A block of 3 warpgroups computes a 128 (N) x BM (M) tile of out^T = W x^T. Warpgroup 0 copies;
//     warpgroups 1 and 2 (64 weight rows each) compute with wgmma.m64nBMk16: the dequantized weight
//     is the *register* A operand, the x tile the shared-memory B operand (K-major, 128-byte
//     swizzle). Each weight is dequantized once per block and feeds BM activation rows.
//   * Per warp the A fragment of wgmma.m64nNk16 is mma.m16n8k16's, so a thread dequantizes what it
//     does in w4a16_gemm.cu: 16 code bytes of each of its 2 weight rows per 128-column step (one
//     LOP3 per pair, exact zero subtraction, one scale multiply), and x arrives in fragment order.
//   * Each step's x tile (BM rows x 128 columns) is two 64-column halves, each BM rows of 128 bytes
//     with 16-byte chunk c of row r at chunk c ^ (r % 8): what TMA's 128B swizzle writes and what a
//     128B-swizzle wgmma descriptor reads (8-row core groups 1024 bytes apart; k16 slice j of a half
//     starts 32 j bytes in). Variant TMA (default): one thread issues the two boxes per step;
//     otherwise the producer warpgroup copies x with cp.async. Codes always come by cp.async.
//   * A STAGES-deep ring with a "full" mbarrier per slot (cp.async completions + TMA transaction
//     bytes) and an "empty" one (released by both consumers once their wgmmas on it have retired).
//   * The consumers take turns issuing their 8 wgmmas per step (named barriers, FlashAttention-3's
//     ping-pong), so one dequantizes its next step while the other's wgmmas run; setmaxnreg moves
//     registers from the producer (40) to the consumers (232: 128 accumulators at BM = 256).
//     Double-buffering the A registers to overlap within a consumer made ptxas serialize every
//     wgmma (C7513, "non wgmma instructions defining input registers of a wgmma between start and
//     end of the pipeline stage"), hence the overlap across warpgroups.
//   * Split-K over blockIdx.z, the f32 partials summed by the caller, as in w4a16_gemm.cu.
// Measured (H200, bench/results/nvidia_h200/cuda_wgmma.md): x by cp.async left the consumers
// waiting on the ring a quarter of the time (the producer issued ~500 instructions per step); TMA
// took 70b_o M=1024 from 207 to 181 us (760 TFLOP/s).
// References: PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate" (register fragments
// for .m64nNk16, the matrix descriptor, the 128B swizzle) and "Asynchronous proxy"; CUTLASS's SM90
// RS (register-A) GMMA mainloops; the magic-number dequant Marlin's.

#include <utility>

#include "wgmma_kernel.cuh"

namespace ffi = xla::ffi;

namespace jquant::wgmma {

template <typename T>
cudaError_t launch_int(ScaleType st, const Launch& a) {
  switch (st) {
    case ScaleType::kF32:
      return launch_out<T, float, kInt, 1>(a);
    case ScaleType::kF16:
      return launch_out<T, __half, kInt, 1>(a);
    case ScaleType::kBF16:
      return launch_out<T, __nv_bfloat16, kInt, 1>(a);
    default:
      return cudaErrorInvalidValue;
  }
}
template cudaError_t launch_int<__nv_bfloat16>(ScaleType, const Launch&);
template cudaError_t launch_int<__half>(ScaleType, const Launch&);

}  // namespace jquant::wgmma

namespace {

using namespace jquant;
using namespace jquant::wgmma;

template <typename T>
cudaError_t launch_kind(int kind, ScaleType st, const Launch& a) {
  switch (kind) {
    case kInt:
      return launch_int<T>(st, a);
    case kFloatZero:
      return launch_float_zero<T>(st, a);
    case kCodebook:
      return launch_codebook<T>(st, a);
    default:
      return cudaErrorInvalidValue;
  }
}

bool config_built(int64_t bm, int64_t stages) {
  return (bm == 64 && stages == 6) || (bm == 128 && stages == 5) || (bm == 256 && stages == 3);
}

// sm_90a code runs on compute capability 9.0 only (H100, H200, GH200).
std::string device_problem() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev))
    return "cannot query the device";
  if (major != 9 || minor != 0)
    return "needs compute capability 9.0 (sm_90a), device has " + std::to_string(major) + "." + std::to_string(minor);
  return "";
}

ffi::Error W4A16WgmmaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::AnyBuffer scale,
                          ffi::AnyBuffer zero, ffi::Result<ffi::AnyBuffer> out, int64_t group, int64_t k_split,
                          int64_t bias, int64_t has_zero, int64_t bm, int64_t stages, int64_t variant, int64_t kind,
                          int64_t scale_type, int64_t cb0, int64_t cb1, int64_t cb2, int64_t cb3) {
  constexpr const char* kName = "jquant_w4a16_wgmma: ";
  GemmDims d;
  std::string why =
      check_gemm_operands(x, codes, scale, zero, *out, group, k_split, has_zero, kBK, d, kind, scale_type);
  if (why.empty() && kind != kInt && variant != 1) why = "float zeros and codebooks are built for variant 1 (TMA)";
  if (why.empty() && !config_built(bm, stages))
    why = "no kernel for bm=" + std::to_string(bm) + " stages=" + std::to_string(stages);
  if (why.empty() && (variant < 0 || variant > 1)) why = "variant must be 0 or 1, got " + std::to_string(variant);
  if (why.empty()) why = device_problem();
  if (!why.empty()) return ffi::Error::InvalidArgument(kName + why);
  Launch a{stream,       x.untyped_data(), codes.untyped_data(), scale.untyped_data(), zero.untyped_data(),
           out->untyped_data(),
           int(d.m),     int(d.n),         int(d.k),             int(group),           int(k_split),
           int(bias),    int(bm),          int(stages),          int(variant),         has_zero != 0,
           d.f32_out,    unpack_codebook(cb0, cb1, cb2, cb3)};
  const ScaleType st = static_cast<ScaleType>(scale_type);
  const cudaError_t err = x.element_type() == ffi::DataType::BF16 ? launch_kind<__nv_bfloat16>(int(kind), st, a)
                                                                  : launch_kind<__half>(int(kind), st, a);
  if (err != cudaSuccess) return ffi::Error::Internal(std::string(kName) + cudaGetErrorString(err));
  return ffi::Error::Success();
}

template <typename B>
auto wgmma_binding(B&& args) {
  return std::forward<B>(args)
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("group")
      .template Attr<int64_t>("k_split")
      .template Attr<int64_t>("bias")
      .template Attr<int64_t>("has_zero")
      .template Attr<int64_t>("bm")
      .template Attr<int64_t>("stages")
      .template Attr<int64_t>("variant")
      .template Attr<int64_t>("kind")
      .template Attr<int64_t>("scale_type")
      .template Attr<int64_t>("cb0")
      .template Attr<int64_t>("cb1")
      .template Attr<int64_t>("cb2")
      .template Attr<int64_t>("cb3");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16Wgmma, W4A16WgmmaImpl, wgmma_binding(bind_stream_and_4_buffers()),
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16WgmmaPoisoned, WithPoisonedOut<W4A16WgmmaImpl>::Call,
                              wgmma_binding(bind_stream_and_4_buffers().Arg<ffi::AnyBuffer>()),
                              {ffi::Traits::kCmdBufferCompatible});
