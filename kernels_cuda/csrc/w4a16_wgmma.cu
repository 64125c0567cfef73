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

#include "common.cuh"
#include "wgmma.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

namespace ffi = xla::ffi;

namespace {

using namespace jquant;

constexpr int kBK = 128;      // K columns per pipeline stage
constexpr int kBN = 128;      // weight rows per block: 2 warpgroups x 64
constexpr int kOutPad = 4;    // f32 padding of the epilogue's shared rows
constexpr int kMaxSmem = 227 * 1024;

template <int BM>
struct WTile {
  static constexpr int kHalfBytes = BM * 128;        // one 64-column half of the x tile
  static constexpr int kXBytes = 2 * kHalfBytes;
  static constexpr int kWBytes = kBN * kBK / 2;      // code tile, 64 B per weight row
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kOutBytes = BM * (kBN + kOutPad) * 4;
  static constexpr int kAcc = BM / 2;                // f32 accumulators per thread
  static_assert(kStageBytes % 1024 == 0, "swizzle atoms must stay 1024-byte aligned");
};

// Dynamic shared memory: the ring (its start reused by the epilogue's f32 tile), then the mbarriers.
template <int BM>
__host__ __device__ constexpr size_t ring_bytes(int stages) {
  const size_t ring = static_cast<size_t>(stages) * WTile<BM>::kStageBytes;
  return ring > WTile<BM>::kOutBytes ? ring : WTile<BM>::kOutBytes;
}
template <int BM>
constexpr size_t smem_bytes(int stages) {
  return ring_bytes<BM>(stages) + 2 * stages * sizeof(uint64_t);  // + full / empty mbarriers per slot
}

// Byte offset of 16-byte chunk `ch` (0..15, along K) of activation row `row` in a step's x tile.
template <int BM>
__device__ __forceinline__ int x_offset(int row, int ch) {
  return (ch >> 3) * WTile<BM>::kHalfBytes + row * 128 + (((ch & 7) ^ (row & 7)) << 4);
}

// wgmma descriptor of a K-major 128B-swizzled operand at shared address `addr`: leading byte offset
// unused for swizzled K-major layouts (1 by convention), stride byte offset 1024 (8 rows x 128 B),
// swizzle mode 1 (128B) in bits 62-63.
__device__ __forceinline__ uint64_t desc_128b(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) |
         (1ull << 62);
}

// The A fragments of one 128-column step (8 k16 slices) from the 16 code bytes this thread holds of
// each of its 2 weight rows (w[j]: row wrow + 8 j): one LOP3 per pair, exact zero subtraction, one
// scale multiply (w4a16_gemm.cu's dequantization; the K order it gives is undone by fragment order).
template <typename T>
__device__ __forceinline__ void dequant_step(uint32_t (&a)[kBK / 16][4], const uint4 (&w)[2],
                                             const typename Half2Traits<T>::T2 (&s2)[2],
                                             const typename Half2Traits<T>::T2 (&z2)[2]) {
#pragma unroll
  for (int sl = 0; sl < kBK / 16; ++sl) {
    const int i = sl >> 1, h = sl & 1;
    const uint32_t w0 = i == 0 ? w[0].x : i == 1 ? w[0].y : i == 2 ? w[0].z : w[0].w;
    const uint32_t w1 = i == 0 ? w[1].x : i == 1 ? w[1].y : i == 2 ? w[1].z : w[1].w;
    a[sl][0] = dequant_pair<T>(w0, 8 * h, z2[0], s2[0]);
    a[sl][1] = dequant_pair<T>(w1, 8 * h, z2[1], s2[1]);
    a[sl][2] = dequant_pair<T>(w0, 8 * h + 4, z2[0], s2[0]);
    a[sl][3] = dequant_pair<T>(w1, 8 * h + 4, z2[1], s2[1]);
  }
}

// The 2 rows' scales and (MAGIC + zero) as half2 pairs; zeros packed one byte per row in `z`.
template <typename T, typename ST>
__device__ __forceinline__ void scale_zero_pairs(const ST (&sc)[2], uint32_t z, int bias,
                                                 typename Half2Traits<T>::T2 (&s2)[2],
                                                 typename Half2Traits<T>::T2 (&z2)[2]) {
  using Tr = Half2Traits<T>;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    s2[j] = Tr::from_float(to_float(sc[j]));
    z2[j] = Tr::from_float(Tr::kMagicF + static_cast<float>(static_cast<int>((z >> (8 * j)) & 0xFF) + bias));
  }
}

// mbarrier helpers (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier").
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival on `bar` once all of this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra WAIT_%=;\n}\n" ::"r"(
          bar),
      "r"(parity)
      : "memory");
}
// Tells `bar` to expect `bytes` more of asynchronous (TMA) copies this phase, and arrives once.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// TMA: the box of `map` at coordinates (c0 innermost, c1) -> shared `dst`, completion counted in bytes on `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// Named barriers 1.. (0 is __syncthreads): `count` threads, some syncing and some arriving.
__device__ __forceinline__ void named_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // setmaxnreg: 128 x 40 + 256 x 232 <= 64K
constexpr int kBarEpilogue = 1, kBarTurn = 2;           // named barriers (kBarTurn + consumer index)

// The kernel (see the header). TMA: x by TMA boxes through `xmap`, else by the producer's cp.async.
template <typename T, typename ST, typename OutT, int BM, int STAGES, bool TMA>
__global__ void __launch_bounds__(kThreads, 1)
    w4a16_wgmma_kernel(const T* __restrict__ x, const __grid_constant__ CUtensorMap xmap,
                       const uint8_t* __restrict__ codes, const ST* __restrict__ scale,
                       const uint8_t* __restrict__ zero, OutT* __restrict__ out, int m, int n, int k, int group,
                       int ks, int bias, int has_zero) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tr = Half2Traits<T>;
  using T2 = typename Tr::T2;
  using Tl = WTile<BM>;
  constexpr int kAcc = Tl::kAcc;
  extern __shared__ __align__(1024) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t full0 = smem_base + static_cast<uint32_t>(ring_bytes<BM>(STAGES));
  const uint32_t empty0 = full0 + STAGES * 8;

  const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127;
  const int n0 = blockIdx.x * kBN, m0 = blockIdx.y * BM;
  const int split = blockIdx.z, k0 = split * ks;
  const int steps = min(ks, k - k0) / kBK;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      // one (cp.async-completion) arrival per producer thread, + the TMA issuer's expect_tx
      mbar_init(full0 + 8 * s, TMA ? 129 : 128);
      mbar_init(empty0 + 8 * s, 256);  // one arrival per consumer thread
    }
  }
  __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    // This thread copies 16-byte chunk xch of x rows xr0 + 8 i and chunk wch of code rows wr0 + 32 i.
    // Every one of its x rows has the same swizzle (row % 8 == xr0 % 8), so the shared offsets step
    // by 1024 bytes and the global ones by 8 rows; rows past M or N are not copied (their garbage
    // only reaches outputs that are never stored: out^T's row n / column m depends on weight row n
    // and activation row m alone).
    const int xr0 = tid >> 4, xch = tid & 15;
    const int wr0 = tid >> 2, wch = tid & 3;
    const int x_rows = max(0, (m - m0 - xr0 + 7) / 8), w_rows = max(0, (n - n0 - wr0 + 31) / 32);
    const T* xsrc = x + static_cast<size_t>(m0 + xr0) * k + k0 + xch * 8;
    const uint8_t* wsrc = codes + static_cast<size_t>(n0 + wr0) * (k / 2) + k0 / 2 + wch * 16;
    const int xdst = x_offset<BM>(xr0, xch), wdst = Tl::kXBytes + (wr0 * 4 + wch) * 16;
    for (int step = 0; step < steps; ++step) {
      const int slot = step % STAGES;
      if (step >= STAGES) mbar_wait(empty0 + 8 * slot, ((step / STAGES) & 1) ^ 1);
      uint8_t* st = smem + slot * Tl::kStageBytes;
      if constexpr (TMA) {  // x: two 64-column boxes, 128B-swizzled by the copy engine; rows past M zero-filled
        if (tid == 0) {
          mbar_arrive_expect_tx(full0 + 8 * slot, Tl::kXBytes);
          const uint32_t dst = smem_base + slot * Tl::kStageBytes;
          tma_load_2d(dst, &xmap, k0 + step * kBK, m0, full0 + 8 * slot);
          tma_load_2d(dst + Tl::kHalfBytes, &xmap, k0 + step * kBK + 64, m0, full0 + 8 * slot);
        }
      } else {
        const T* xs = xsrc + step * kBK;
#pragma unroll 4
        for (int i = 0; i < BM / 8; ++i, xs += 8 * static_cast<size_t>(k))
          if (i < x_rows) cp_async16(st + xdst + 1024 * i, xs);
      }
      const uint8_t* ws = wsrc + step * (kBK / 2);
#pragma unroll
      for (int i = 0; i < 4; ++i, ws += 32 * static_cast<size_t>(k / 2))
        if (i < w_rows) cp_async16(st + wdst + 32 * 64 * i, ws);
      cp_async_arrive(full0 + 8 * slot);
    }
    return;
  }

  // consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
  const int c = wg - 1;  // consumer index: weight rows 64 c .. 64 c + 63
  const int lane = tid & 31, q = lane & 3, r = lane >> 2;
  const int wrow = c * 64 + (tid >> 5) * 16 + r;
  const int groups = k / group;
  int srow[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) srow[j] = min(n0 + wrow + 8 * j, n - 1) * groups;
  ST s_next[2];
  uint32_t z_next;
  auto load_scales = [&](int step) {
    const int g = (k0 + step * kBK + 32 * q) / group;
    z_next = 0;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      s_next[j] = __ldg(scale + srow[j] + g);
      if (has_zero) z_next |= static_cast<uint32_t>(__ldg(zero + srow[j] + g)) << (8 * j);
    }
  };
  load_scales(0);
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  uint32_t a[kBK / 16][4];
  if (c == 1) named_arrive(kBarTurn + 0, 256);  // consumer 0 issues first

  for (int step = 0; step < steps; ++step) {
    const int slot = step % STAGES;
    mbar_wait(full0 + 8 * slot, (step / STAGES) & 1);
    // cp.async writes of x -> visible to wgmma's async proxy (TMA writes through that proxy already)
    if constexpr (!TMA) fence_proxy_async_shared();
    T2 s2[2], z2[2];
    scale_zero_pairs<T>(s_next, z_next, bias, s2, z2);
    if (step + 1 < steps) load_scales(step + 1);
    const uint8_t* wst = smem + slot * Tl::kStageBytes + Tl::kXBytes;
    uint4 w[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) w[j] = *reinterpret_cast<const uint4*>(wst + (wrow + 8 * j) * 64 + q * 16);
    wgmma_wait<0>();  // this consumer's wgmmas of step - 1 are done: a[] and that slot are free
    if (step > 0) mbar_arrive(empty0 + 8 * ((step - 1) % STAGES));
    dequant_step<T>(a, w, s2, z2);
#pragma unroll
    for (int i = 0; i < kAcc; ++i) fence_operand(acc[i]);
    named_sync(kBarTurn + c, 256);  // my turn to issue (the other consumer has issued its step)
    wgmma_fence();
    const uint32_t st = smem_base + slot * Tl::kStageBytes;
#pragma unroll
    for (int sl = 0; sl < kBK / 16; ++sl)
      WgmmaRS<T, BM>::mma(acc, a[sl], desc_128b(st + (sl >> 2) * Tl::kHalfBytes + (sl & 3) * 32));
    wgmma_commit();
    if (!(c == 1 && step == steps - 1)) named_arrive(kBarTurn + (c ^ 1), 256);  // the other consumer's turn
#pragma unroll
    for (int i = 0; i < kAcc; ++i) fence_operand(acc[i]);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < kAcc; ++i) fence_operand(acc[i]);
  named_sync(kBarEpilogue, 256);  // both consumers are done with the ring (the producer has nothing in flight)

  float* os = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int j = 0; j < BM / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      os[(8 * j + 2 * q + (e & 1)) * (kBN + kOutPad) + wrow + (e >= 2 ? 8 : 0)] = acc[4 * j + e];
  named_sync(kBarEpilogue, 256);
  store_out_tile<BM, kBN, kBN + kOutPad, 256>(os, out, split, m0, n0, m, n, threadIdx.x - 128);
#else
  __trap();
#endif
}

struct Launch {
  cudaStream_t stream;
  const void *x, *codes, *scale, *zero;
  void* out;
  int m, n, k, group, ks, bias, bm, stages, variant;
  bool has_zero, f32_out;
};

// x [M, K] as a TMA tensor map: boxes of 64 columns (128 bytes, the swizzle span) x BM rows.
template <typename T>
cudaError_t make_x_map(CUtensorMap* map, const void* x, int m, int k, int bm) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {cuuint64_t(k), cuuint64_t(m)}, strides[1] = {cuuint64_t(k) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(bm)}, elem[2] = {1, 1};
  const CUresult r = encode(map, std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                            2, const_cast<void*>(x), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// variant 0: x by the producer's cp.async; 1: x by TMA.
template <typename T, typename ST, typename OutT, int BM, int STAGES>
cudaError_t launch_typed(const Launch& a) {
  static_assert(smem_bytes<BM>(STAGES) <= kMaxSmem, "stage ring exceeds shared memory");
  const dim3 grid((a.n + kBN - 1) / kBN, (a.m + BM - 1) / BM, (a.k + a.ks - 1) / a.ks);
  CUtensorMap map{};
  cudaError_t err;
  if (a.variant == 1 && (err = make_x_map<T>(&map, a.x, a.m, a.k, BM)) != cudaSuccess) return err;
  auto kernel = a.variant == 1 ? w4a16_wgmma_kernel<T, ST, OutT, BM, STAGES, true>
                               : w4a16_wgmma_kernel<T, ST, OutT, BM, STAGES, false>;
  const size_t smem = smem_bytes<BM>(STAGES);
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))) != cudaSuccess)
    return err;
  kernel<<<grid, kThreads, smem, a.stream>>>(static_cast<const T*>(a.x), map, static_cast<const uint8_t*>(a.codes),
                                               static_cast<const ST*>(a.scale), static_cast<const uint8_t*>(a.zero),
                                               static_cast<OutT*>(a.out), a.m, a.n, a.k, a.group, a.ks, a.bias,
                                               a.has_zero ? 1 : 0);
  return cudaGetLastError();
}

// The configurations instantiated (w4a16_wgmma.py `STAGES`): bm -> the deepest ring that fits.
template <typename T, typename ST, typename OutT>
cudaError_t launch_cfg(const Launch& a) {
  if (a.bm == 64) return launch_typed<T, ST, OutT, 64, 6>(a);
  if (a.bm == 128) return launch_typed<T, ST, OutT, 128, 5>(a);
  return launch_typed<T, ST, OutT, 256, 3>(a);
}

bool config_built(int64_t bm, int64_t stages) {
  return (bm == 64 && stages == 6) || (bm == 128 && stages == 5) || (bm == 256 && stages == 3);
}

template <typename T, typename ST>
cudaError_t launch_out(const Launch& a) {
  return a.f32_out ? launch_cfg<T, ST, float>(a) : launch_cfg<T, ST, T>(a);
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
                          int64_t bias, int64_t has_zero, int64_t bm, int64_t stages, int64_t variant) {
  constexpr const char* kName = "jquant_w4a16_wgmma: ";
  GemmDims d;
  std::string why = check_gemm_operands(x, codes, scale, zero, *out, group, k_split, has_zero, kBK, d);
  if (why.empty() && !config_built(bm, stages))
    why = "no kernel for bm=" + std::to_string(bm) + " stages=" + std::to_string(stages);
  if (why.empty() && (variant < 0 || variant > 1)) why = "variant must be 0 or 1, got " + std::to_string(variant);
  if (why.empty()) why = device_problem();
  if (!why.empty()) return ffi::Error::InvalidArgument(kName + why);
  Launch a{stream,       x.untyped_data(), codes.untyped_data(), scale.untyped_data(), zero.untyped_data(),
           out->untyped_data(),
           int(d.m),     int(d.n),         int(d.k),             int(group),           int(k_split),
           int(bias),    int(bm),          int(stages),          int(variant),         has_zero != 0,
           d.f32_out};
  const cudaError_t err = x.element_type() == ffi::DataType::BF16 ? launch_scale<__nv_bfloat16>(scale.element_type(), a)
                                                                  : launch_scale<__half>(scale.element_type(), a);
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
      .template Attr<int64_t>("variant");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16Wgmma, W4A16WgmmaImpl, wgmma_binding(bind_stream_and_4_buffers()),
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16WgmmaPoisoned, WithPoisonedOut<W4A16WgmmaImpl>::Call,
                              wgmma_binding(bind_stream_and_4_buffers().Arg<ffi::AnyBuffer>()),
                              {ffi::Traits::kCmdBufferCompatible});
