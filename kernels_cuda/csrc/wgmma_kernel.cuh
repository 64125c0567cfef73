// The W4A16 wgmma kernel (sm_90a) for every 4-bit code kind, shared by the translation units that
// instantiate it (w4a16_wgmma.cu: integer codes and the FFI handler; wgmma_kinds.cu: float zeros and
// codebooks). How the work is cut: w4a16_wgmma.cu's header comment.
#pragma once

#include <type_traits>

#include "codes.cuh"
#include "common.cuh"
#include "wgmma.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

namespace jquant::wgmma {

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
// each of its 2 weight rows (w[j]: row wrow + 8 j), dequantized and scaled in registers, rounded once
// to T. Integer codes: one LOP3 per pair (magic number), exact zero subtraction, one scale multiply
// (kInt) or fused multiply-subtract of the float zero (kFloatZero); the pairs come out (8i, 8i + 4)
// ... as w4a16_gemm.cu's. Codebooks: `codebook_pairs` (natural pairs (8i, 8i + 1) ...), one scale
// multiply. Either K order is undone by the activations' fragment order (w4a16_gemm.py).
// z2: (MAGIC + zero + bias) for kInt, -zero for kFloatZero; mb2: MAGIC + bias. SUBS = 2: groups of
// 16, words 0-1 of a row's 16 bytes in its first group and words 2-3 in the second.
template <typename T, int KIND, int SUBS>
__device__ __forceinline__ void dequant_step(uint32_t (&a)[kBK / 16][4], const uint4 (&w)[2],
                                             const typename Half2Traits<T>::T2 (&s2)[2][SUBS],
                                             const typename Half2Traits<T>::T2 (&z2)[2][SUBS],
                                             typename Half2Traits<T>::T2 mb2, const Codebook& cb) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int u = SUBS == 2 ? i / 2 : 0;
    uint32_t p[2][4];  // per row: [a0 (h = 0), a2 (h = 0), a0 (h = 1), a2 (h = 1)]
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint32_t wj = i == 0 ? w[j].x : i == 1 ? w[j].y : i == 2 ? w[j].z : w[j].w;
      raw_pairs<T, KIND>(wj, cb, p[j]);
      dequant_pairs<T, KIND>(p[j], s2[j][u], z2[j][u], mb2);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      a[2 * i + h][0] = p[0][2 * h];
      a[2 * i + h][1] = p[1][2 * h];
      a[2 * i + h][2] = p[0][2 * h + 1];
      a[2 * i + h][3] = p[1][2 * h + 1];
    }
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
// KIND / SUBS: the code kind (codes.cuh) and the scale groups per 32-code chunk (2: groups of 16).
template <typename T, typename ST, typename OutT, int BM, int STAGES, bool TMA, int KIND, int SUBS>
__global__ void __launch_bounds__(kThreads, 1)
    w4a16_wgmma_kernel(const T* __restrict__ x, const __grid_constant__ CUtensorMap xmap,
                       const uint8_t* __restrict__ codes, const ST* __restrict__ scale,
                       const void* __restrict__ zero, OutT* __restrict__ out, int m, int n, int k, int group,
                       int ks, int bias, int has_zero, Codebook cb) {
  static_assert(KIND != kInt || SUBS == 1, "integer codes with uint8 zeros: groups of >= 32");
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
  using ZT = std::conditional_t<KIND == kFloatZero, ST, uint8_t>;
  const ZT* zp = static_cast<const ZT*>(zero);
  ST s_next[2][SUBS];
  ZT z_next[2][SUBS];
  auto load_scales = [&](int step) {
    const int g = (k0 + step * kBK + 32 * q) / group;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int u = 0; u < SUBS; ++u) {
        s_next[j][u] = load_scale(scale + srow[j] + g + u);
        if constexpr (KIND == kFloatZero)
          z_next[j][u] = load_scale(zp + srow[j] + g + u);
        else if constexpr (KIND == kInt)
          z_next[j][u] = has_zero ? __ldg(zp + srow[j] + g + u) : uint8_t(0);
        else
          z_next[j][u] = ZT{};
      }
    }
  };
  const T2 mb2 = Tr::from_float(Tr::kMagicF + static_cast<float>(bias));
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
    T2 s2[2][SUBS], z2[2][SUBS];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int u = 0; u < SUBS; ++u) {
        s2[j][u] = Tr::from_float(to_float(s_next[j][u]));
        if constexpr (KIND == kInt)
          z2[j][u] = Tr::from_float(Tr::kMagicF + static_cast<float>(static_cast<int>(z_next[j][u]) + bias));
        else if constexpr (KIND == kFloatZero)
          z2[j][u] = Tr::from_float(-to_float(z_next[j][u]));
        else
          z2[j][u] = s2[j][u];  // unused
      }
    }
    if (step + 1 < steps) load_scales(step + 1);
    const uint8_t* wst = smem + slot * Tl::kStageBytes + Tl::kXBytes;
    uint4 w[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) w[j] = *reinterpret_cast<const uint4*>(wst + (wrow + 8 * j) * 64 + q * 16);
    wgmma_wait<0>();  // this consumer's wgmmas of step - 1 are done: a[] and that slot are free
    if (step > 0) mbar_arrive(empty0 + 8 * ((step - 1) % STAGES));
    dequant_step<T, KIND, SUBS>(a, w, s2, z2, mb2, cb);
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
  Codebook cb;
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

// variant 0: x by the producer's cp.async; 1: x by TMA (the only one built for other kinds than kInt).
template <typename T, typename ST, typename OutT, int BM, int STAGES, int KIND, int SUBS>
cudaError_t launch_typed(const Launch& a) {
  static_assert(smem_bytes<BM>(STAGES) <= kMaxSmem, "stage ring exceeds shared memory");
  const dim3 grid((a.n + kBN - 1) / kBN, (a.m + BM - 1) / BM, (a.k + a.ks - 1) / a.ks);
  CUtensorMap map{};
  cudaError_t err;
  if (a.variant == 1 && (err = make_x_map<T>(&map, a.x, a.m, a.k, BM)) != cudaSuccess) return err;
  auto kernel = w4a16_wgmma_kernel<T, ST, OutT, BM, STAGES, true, KIND, SUBS>;
  if constexpr (KIND == kInt) {
    if (a.variant == 0) kernel = w4a16_wgmma_kernel<T, ST, OutT, BM, STAGES, false, KIND, SUBS>;
  } else if (a.variant == 0) {
    return cudaErrorInvalidValue;
  }
  const size_t smem = smem_bytes<BM>(STAGES);
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem))) != cudaSuccess)
    return err;
  kernel<<<grid, kThreads, smem, a.stream>>>(static_cast<const T*>(a.x), map, static_cast<const uint8_t*>(a.codes),
                                               static_cast<const ST*>(a.scale), a.zero, static_cast<OutT*>(a.out),
                                               a.m, a.n, a.k, a.group, a.ks, a.bias, a.has_zero ? 1 : 0, a.cb);
  return cudaGetLastError();
}

// The configurations instantiated (w4a16_wgmma.py `STAGES`): bm -> the deepest ring that fits.
template <typename T, typename ST, typename OutT, int KIND, int SUBS>
cudaError_t launch_cfg(const Launch& a) {
  if (a.bm == 64) return launch_typed<T, ST, OutT, 64, 6, KIND, SUBS>(a);
  if (a.bm == 128) return launch_typed<T, ST, OutT, 128, 5, KIND, SUBS>(a);
  return launch_typed<T, ST, OutT, 256, 3, KIND, SUBS>(a);
}

template <typename T, typename ST, int KIND, int SUBS>
cudaError_t launch_out(const Launch& a) {
  return a.f32_out ? launch_cfg<T, ST, float, KIND, SUBS>(a) : launch_cfg<T, ST, T, KIND, SUBS>(a);
}

// Per kind (integer codes here in w4a16_wgmma.cu, the others in wgmma_kinds.cu, compiled in
// parallel): the launch for activation dtype T, scale storage `st` and group size.
template <typename T>
cudaError_t launch_int(ScaleType st, const Launch& a);
template <typename T>
cudaError_t launch_float_zero(ScaleType st, const Launch& a);
template <typename T>
cudaError_t launch_codebook(ScaleType st, const Launch& a);

}  // namespace jquant::wgmma
