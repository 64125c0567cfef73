// W4A16 GEMM for batched decode and chunked prefill (the dispatcher sends it 16 < M <= 128), on jquant's
// canonical int4 layout, exposed to JAX through the XLA FFI.
//
//   out[s, m, n] = sum_{k in split s} xf[m, k] * (v[n, k] - z[n, k/G]) * scale[n, k/G]
//
// Shapes and dtypes (row-major; the weight is read as jquant's canonical QArray stores it):
//   xf     [M, K]      bf16 or f16 activations with the columns of every 128-column block in
//                      *fragment order* (w4a16.py `fragment_order`: one gather done by the caller,
//                      fused with the act-order permutation when there is one); K % 128 == 0
//   codes  [N, K/2]    uint8, two 4-bit codes per byte along K, low nibble first, unsigned
//   scale  [N, K/G]    f32, f16 or bf16; G a multiple of 32 dividing K (G == K: per channel)
//   zero   [N, K/G]    uint8 zero-point codes when `has_zero`; else the codes' bias is the zero
//   out    [S, M, N]   f32 partial sums, one slab per K split (S > 1), or x's dtype (S == 1)
//
// How the work is cut:
//   * A block computes a BN (N) x BM (M) tile of out^T = W x^T over its K split with 8 warps,
//     8 / WM along N (32 weight rows each: two m16 tiles of mma.sync.m16n8k16, the weight being the
//     A operand) and WM along M (BM / WM activation rows each: BM / WM / 8 n8 tiles), so
//     BN = 256 / WM. WM = 1 dequantizes each weight once per block; WM = 2 halves the
//     accumulators per thread for BM = 128.
//   * Each pipeline stage holds 128 K columns: the x tile (BM x 256 B, 16-byte chunks XOR-swizzled
//     by row so ldmatrix is conflict-free) and the code tile (BN rows x 64 B), both copied with
//     cp.async into a STAGES-deep shared-memory ring (one __syncthreads per stage).
//   * A thread dequantizes what the decode kernel's thread does (w4a16_decode.cu): 16 bytes from each
//     of 4 weight rows, one LOP3 per pair of codes, (MAGIC + q) - (MAGIC + z) exact, times the
//     scale (one rounding), into the A fragments; the K order this gives inside each k16 slice is
//     undone by having the caller permute x's columns (fragment order), so the B fragments are
//     plain ldmatrix.x4 loads of the x tile. A fragments are reused by BM / 16 mmas.
//   * Split-K over blockIdx.z fills the SMs when N / 128 x M / BM blocks are too few; the f32
//     partials are summed by the caller. With one split the block writes x's dtype directly.
//   * The epilogue goes through shared memory so every global store is a 16-byte (f32) or 8-byte
//     (bf16/f16) vector along N.
// References: PTX ISA "Matrix Fragments for mma.m16n8k16" and "ldmatrix"; the cp.async multi-stage
// ring and the swizzle follow CUTLASS's SM80 GEMMs; the magic-number dequant Marlin's.

#include <utility>

#include "common.cuh"

namespace ffi = xla::ffi;

namespace {

using namespace jquant;

constexpr int kBK = 128;      // K columns per pipeline stage
constexpr int kThreads = 256;
constexpr int kOutPad = 4;    // f32 padding of the epilogue's shared rows (bank-conflict free)

template <int BM, int WM>
struct Tile {
  static constexpr int kWN = 8 / WM;                    // warps along N
  static constexpr int kBN = 32 * kWN;                  // weight rows per block
  static constexpr int kNT = BM / WM / 8;               // n8 tiles per warp
  static constexpr int kXBytes = BM * kBK * 2;          // x tile, 256 B per activation row
  static constexpr int kWBytes = kBN * kBK / 2;         // code tile, 64 B per weight row
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kOutBytes = BM * (kBN + kOutPad) * 4;
  static_assert(kNT % 2 == 0, "ldmatrix.x4 loads two n8 tiles");
};

template <int BM, int WM>
constexpr size_t smem_bytes(int stages) {
  const size_t ring = static_cast<size_t>(stages) * Tile<BM, WM>::kStageBytes;
  return ring > Tile<BM, WM>::kOutBytes ? ring : Tile<BM, WM>::kOutBytes;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// Byte offset of 16-byte chunk `ch` (0..15) of activation row `row` in the x tile.
__device__ __forceinline__ int x_offset(int row, int ch) { return row * (kBK * 2) + ((ch ^ (row & 7)) << 4); }

// Blocks per SM the tile is compiled for: two (registers capped at 128 per thread, 16 warps to hide
// latency) where the accumulators are small enough (BM / WM = 32 rows per warp), else one.
template <int BM, int WM>
constexpr int kMinBlocks = BM / WM == 32 ? 2 : 1;

template <typename T, typename ST, typename OutT, int BM, int WM, int STAGES>
__global__ void __launch_bounds__(kThreads, kMinBlocks<BM, WM>) w4a16_gemm_kernel(const T* __restrict__ x,
                                                                 const uint8_t* __restrict__ codes,
                                                                 const ST* __restrict__ scale,
                                                                 const uint8_t* __restrict__ zero,
                                                                 OutT* __restrict__ out, int m, int n, int k,
                                                                 int group, int ks, int bias, int has_zero) {
  using Tr = Half2Traits<T>;
  using T2 = typename Tr::T2;
  using Tl = Tile<BM, WM>;
  constexpr int NT = Tl::kNT, kBN = Tl::kBN;
  constexpr int kXChunks = Tl::kXBytes / 16 / kThreads;
  constexpr int kWChunks = Tl::kWBytes / 16 / kThreads;
  static_assert(kXChunks * kThreads * 16 == Tl::kXBytes && kWChunks * kThreads * 16 == Tl::kWBytes);
  extern __shared__ __align__(128) uint8_t smem[];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int q = lane & 3, r = lane >> 2;
  const int wn = warp % Tl::kWN, wm = warp / Tl::kWN;
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * BM;
  const int split = blockIdx.z, k0 = split * ks;
  const int steps = min(ks, k - k0) / kBK;
  const int groups = k / group;

  // This thread's cp.async chunks of a stage: x rows xr0 + 16 i (chunk xch), code rows wr0 + 64 i
  // (chunk wch). Rows past M or N are clamped: computed on a duplicate, never stored. Addresses
  // are recomputed per stage (a few IMADs) rather than held in 64-bit registers.
  const int xr0 = threadIdx.x >> 4, xch = threadIdx.x & 15;
  const int wr0 = threadIdx.x >> 2, wch = threadIdx.x & 3;
  auto issue = [&](int step) {
    if (step < steps) {
      uint8_t* st = smem + (step % STAGES) * Tl::kStageBytes;
      const int kc = k0 + step * kBK;
#pragma unroll
      for (int i = 0; i < kXChunks; ++i) {
        const int row = xr0 + 16 * i;
        cp_async16(st + x_offset(row, xch), x + static_cast<size_t>(min(m0 + row, m - 1)) * k + kc + xch * 8);
      }
#pragma unroll
      for (int i = 0; i < kWChunks; ++i) {
        const int row = wr0 + 64 * i;
        cp_async16(st + Tl::kXBytes + (row * 4 + wch) * 16,
                   codes + static_cast<size_t>(min(n0 + row, n - 1)) * (k / 2) + kc / 2 + wch * 16);
      }
    }
    cp_async_commit();  // an empty group past the end keeps the group count uniform
  };

  // This thread's weight rows: wn * 32 + r + 8 j (j = 0..3; tile mt = j / 2 holds rows j = 2 mt, 2 mt + 1).
  // Its 32 codes of a step (columns 32 q .. 32 q + 31) lie in one group for any G % 32 == 0.
  int srow[4];  // offsets of the rows' scales (and zeros) in [N, K/G]
#pragma unroll
  for (int j = 0; j < 4; ++j) srow[j] = min(n0 + wn * 32 + r + 8 * j, n - 1) * groups;
  ST s_next[4];
  uint32_t z_next;  // the 4 rows' zero points, one per byte (one register, not four)
  auto load_scales = [&](int step) {
    const int g = (k0 + step * kBK + 32 * q) / group;
    z_next = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s_next[j] = __ldg(scale + srow[j] + g);
      if (has_zero) z_next |= static_cast<uint32_t>(__ldg(zero + srow[j] + g)) << (8 * j);
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) issue(s);
  load_scales(0);

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;

  // ldmatrix.x4 address of this lane for n8 tiles (2p, 2p + 1), k16 slice `sl`: matrices 0..3 are
  // (tile 2p, k 0-7), (tile 2p, k 8-15), (tile 2p+1, k 0-7), (tile 2p+1, k 8-15) -> b0, b1 of each tile.
  const int lrow = wm * (BM / WM) + (lane >> 4) * 8 + (lane & 7);
  const int lch = (lane >> 3) & 1;

  for (int step = 0; step < steps; ++step) {
    cp_async_wait<STAGES - 2>();  // this step's stage has landed (for this thread's copies) ...
    __syncthreads();              // ... and everyone's; everyone is also done with step - 1's slot
    issue(step + STAGES - 1);
    T2 s2[4], z2[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      s2[j] = Tr::from_float(to_float(s_next[j]));
      z2[j] = Tr::from_float(Tr::kMagicF + static_cast<float>(static_cast<int>((z_next >> (8 * j)) & 0xFF) + bias));
    }
    if (step + 1 < steps) load_scales(step + 1);

    const uint8_t* st = smem + (step % STAGES) * Tl::kStageBytes;
    uint32_t w[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 v = *reinterpret_cast<const uint4*>(st + Tl::kXBytes + (wn * 32 + r + 8 * j) * 64 + q * 16);
      w[j][0] = v.x;
      w[j][1] = v.y;
      w[j][2] = v.z;
      w[j][3] = v.w;
    }
#pragma unroll
    for (int sl = 0; sl < kBK / 16; ++sl) {
      const int i = sl >> 1, h = sl & 1;
      uint32_t a[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int ja = 2 * mt, jb = 2 * mt + 1;  // rows r (+16 mt) and r + 8 (+16 mt)
        a[mt][0] = dequant_pair<T>(w[ja][i], 8 * h, z2[ja], s2[ja]);
        a[mt][1] = dequant_pair<T>(w[jb][i], 8 * h, z2[jb], s2[jb]);
        a[mt][2] = dequant_pair<T>(w[ja][i], 8 * h + 4, z2[ja], s2[ja]);
        a[mt][3] = dequant_pair<T>(w[jb][i], 8 * h + 4, z2[jb], s2[jb]);
      }
#pragma unroll
      for (int p = 0; p < NT / 2; ++p) {
        uint32_t b[4];
        ldmatrix_x4(b, st + x_offset(lrow + 16 * p, 2 * sl + lch));
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma_16816<T>(acc[mt][2 * p], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[0], b[1]);
          mma_16816<T>(acc[mt][2 * p + 1], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue: accumulators -> shared [BM][kBN + pad] f32 (c0, c1: weight row r, activation rows
  // 2q, 2q + 1; c2, c3: weight row r + 8) -> 4 consecutive outputs along N per thread and store.
  float* os = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int nrow = wn * 32 + 16 * mt + r + (c >= 2 ? 8 : 0);
        const int mcol = wm * (BM / WM) + 8 * nt + 2 * q + (c & 1);
        os[mcol * (kBN + kOutPad) + nrow] = acc[mt][nt][c];
      }
  __syncthreads();
  // common.cuh's store_out_tile does the same; written out here because calling it costs the
  // 255-register (128, 1) tile a 4-byte spill (ptxas allocates differently; test_build.py checks).
  OutT* o = out + static_cast<size_t>(split) * m * n;
  const bool vec = (n % 4) == 0;
#pragma unroll
  for (int it = 0; it < BM * kBN / 4 / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int mcol = idx / (kBN / 4), nq = (idx % (kBN / 4)) * 4;
    const int gm = m0 + mcol, gn = n0 + nq;
    if (gm >= m || gn >= n) continue;
    const float4 v = *reinterpret_cast<const float4*>(os + mcol * (kBN + kOutPad) + nq);
    OutT* dst = o + static_cast<size_t>(gm) * n + gn;
    if (vec && gn + 4 <= n) {
      store4<OutT>(dst, v);
    } else {
      const float e[4] = {v.x, v.y, v.z, v.w};
      for (int u = 0; u < 4 && gn + u < n; ++u) dst[u] = from_f32<OutT>(e[u]);
    }
  }
}

struct Launch {
  cudaStream_t stream;
  const void *x, *codes, *scale, *zero;
  void* out;
  int m, n, k, group, ks, bias, bm, wm, stages;
  bool has_zero, f32_out;
};

template <typename T, typename ST, typename OutT, int BM, int WM, int STAGES>
cudaError_t launch_typed(const Launch& a) {
  auto kernel = w4a16_gemm_kernel<T, ST, OutT, BM, WM, STAGES>;
  const size_t smem = smem_bytes<BM, WM>(STAGES);
  constexpr int kBN = Tile<BM, WM>::kBN;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid((a.n + kBN - 1) / kBN, (a.m + BM - 1) / BM, (a.k + a.ks - 1) / a.ks);
  kernel<<<grid, kThreads, smem, a.stream>>>(static_cast<const T*>(a.x), static_cast<const uint8_t*>(a.codes),
                                             static_cast<const ST*>(a.scale), static_cast<const uint8_t*>(a.zero),
                                             static_cast<OutT*>(a.out), a.m, a.n, a.k, a.group, a.ks, a.bias,
                                             a.has_zero ? 1 : 0);
  return cudaGetLastError();
}

template <typename T, typename ST, typename OutT, int BM, int WM>
cudaError_t launch_stages(const Launch& a) {
  if (a.stages <= 3) return launch_typed<T, ST, OutT, BM, WM, 3>(a);
  return launch_typed<T, ST, OutT, BM, WM, 4>(a);
}

// The block shapes (BM, WM) instantiated: see kTiles in w4a16_gemm.py.
template <typename T, typename ST, typename OutT>
cudaError_t launch_bm(const Launch& a) {
  if (a.bm == 32) return launch_stages<T, ST, OutT, 32, 1>(a);
  if (a.bm == 64) return a.wm == 1 ? launch_stages<T, ST, OutT, 64, 1>(a) : launch_stages<T, ST, OutT, 64, 2>(a);
  return a.wm == 1 ? launch_stages<T, ST, OutT, 128, 1>(a) : launch_stages<T, ST, OutT, 128, 2>(a);
}

template <typename T, typename ST>
cudaError_t launch_out(const Launch& a) {
  return a.f32_out ? launch_bm<T, ST, float>(a) : launch_bm<T, ST, T>(a);
}

template <typename T>
cudaError_t launch_scale(ffi::DataType sdt, const Launch& a) {
  switch (sdt) {
    case ffi::DataType::F32:
      return launch_out<T, float>(a);
    case ffi::DataType::F16:
      return launch_out<T, __half>(a);
    default:
      return launch_out<T, __nv_bfloat16>(a);
  }
}

ffi::Error W4A16GemmImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::AnyBuffer scale,
                         ffi::AnyBuffer zero, ffi::Result<ffi::AnyBuffer> out, int64_t group, int64_t k_split,
                         int64_t bias, int64_t has_zero, int64_t bm, int64_t wm, int64_t stages) {
  constexpr const char* kName = "jquant_w4a16_gemm: ";
  GemmDims d;
  std::string why = check_gemm_operands(x, codes, scale, zero, *out, group, k_split, has_zero, kBK, d);
  if (why.empty() && !(bm == 32 ? wm == 1 : ((bm == 64 || bm == 128) && (wm == 1 || wm == 2))))
    why = "no tile bm=" + std::to_string(bm) + " wm=" + std::to_string(wm);
  if (why.empty() && (stages < 3 || stages > 4)) why = "stages must be 3 or 4, got " + std::to_string(stages);
  if (!why.empty()) return ffi::Error::InvalidArgument(kName + why);
  const int64_t m = d.m, n = d.n, k = d.k;
  const bool f32_out = d.f32_out;
  const auto xt = x.element_type(), st = scale.element_type();
  Launch a{stream,         x.untyped_data(), codes.untyped_data(), scale.untyped_data(), zero.untyped_data(),
           out->untyped_data(),
           int(m),         int(n),           int(k),               int(group),           int(k_split),
           int(bias),      int(bm),          int(wm),              int(stages),          has_zero != 0,
           f32_out};
  const cudaError_t err = xt == ffi::DataType::BF16 ? launch_scale<__nv_bfloat16>(st, a) : launch_scale<__half>(st, a);
  if (err != cudaSuccess) return ffi::Error::Internal(std::string(kName) + cudaGetErrorString(err));
  return ffi::Error::Success();
}

// x in fragment order [M, K], codes [N, K/2], scale [N, K/G], zero (uint8 [N, K/G] or a 1-element
// dummy) -> [S, M, N] (f32 partials, or x's dtype when S == 1), plus the launch attributes.
template <typename B>
auto gemm_binding(B&& args) {
  return std::forward<B>(args)
      .template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("group")
      .template Attr<int64_t>("k_split")
      .template Attr<int64_t>("bias")
      .template Attr<int64_t>("has_zero")
      .template Attr<int64_t>("bm")
      .template Attr<int64_t>("wm")
      .template Attr<int64_t>("stages");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16Gemm, W4A16GemmImpl, gemm_binding(bind_stream_and_4_buffers()),
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16GemmPoisoned, WithPoisonedOut<W4A16GemmImpl>::Call,
                              gemm_binding(bind_stream_and_4_buffers().Arg<ffi::AnyBuffer>()),
                              {ffi::Traits::kCmdBufferCompatible});
