// Memory side of the W4A16 decode kernel, alone (issue 16): which way of streaming 4-bit codes
// [N, K/2] (canonical layout, rows K/2 bytes apart) reaches >= 80% of the copy bandwidth on the
// Llama-3-8B / 70B layer shapes, before a persistent decode kernel is built on it.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o membench bench/gpu/membench.cu && ./membench
//
// Every variant reads each code byte exactly once and XORs it into one word (checked against a plain
// grid-stride XOR of the buffer: "ok" or "MISMATCH"), with no dequantization and no math:
//   ring    the decode kernel's loads today (kernels_cuda/csrc/decode.cuh, -DJQUANT_EXPERIMENT_NO_MATH):
//           a warp owns 32 rows, lane (r, q) copies 16 B of rows r + 8j (j < 4) per 128-column step
//           (a quad reads 64 contiguous bytes of a row) through a per-thread cp.async ring of 4 steps
//           (.L2::256B); grid (N / 256 rows, K splits)
//   ldg     the same mapping with ld.global.nc.L1::no_allocate.L2::256B.v4 into registers, 4 steps
//           in flight per thread
//   bulk    per warp, lane i copies row i's next CH bytes with one 1-D cp.async.bulk into a 4-stage
//           per-warp ring (an mbarrier per stage counts the bytes); long contiguous row segments
//   tma     per warp, one 2-D TMA box [32 rows x CH bytes] per stage, 4 stages
//           bulk / tma: each warp walks an equal, contiguous share of the (32-row group, CH-byte chunk)
//           tiles in row-major order (a K range of one or two row groups), 2 x the resident warps;
//   *-p     persistent: as many warps as fit at once (one wave, no tail)
// Time: cudaEvent over 40 back-to-back calls cycling through enough copies of the buffer to exceed
// 4x L2, so every call reads from DRAM; "copy" is a 1 GiB cudaMemcpyAsync (read + write counted).

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

constexpr int kStages = 4;

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ uint32_t xor4(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// --- mbarrier / bulk-copy helpers (as kernels_cuda/csrc/wgmma_kernel.cuh) -------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred p;\nWAIT_%=:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n@!p bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar), "l"(0x14F0000000000000ull)  // evict-first: streamed once
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ uint4 ldg_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__global__ void xor_reference(const uint4* p, size_t n16, uint32_t* out) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n16; i += size_t(gridDim.x) * blockDim.x)
    acc ^= xor4(p[i]);
  atomicXor(out, acc);
}

// ring / ldg: the decode kernel's mapping. Block = 8 warps = 256 rows; blockIdx.y = K split of `ks` columns.
template <bool kLdg>
__global__ void __launch_bounds__(256) decode_mapping(const uint8_t* codes, int n, int k, int ks, uint32_t* out) {
  extern __shared__ uint4 ring_raw[];  // [kStages][4][256]: 64 KB, past the static limit
  auto ring = reinterpret_cast<uint4(*)[4][256]>(ring_raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, q = lane & 3, r = lane >> 2;
  const int k0 = blockIdx.y * ks, steps = min(ks, k - k0) / 128;
  const int row0 = (blockIdx.x * 8 + warp) * 32 + r;
  const uint8_t* w[4];
  bool ok[4];
  for (int j = 0; j < 4; ++j) {
    ok[j] = row0 + 8 * j < n;
    w[j] = codes + size_t(min(row0 + 8 * j, n - 1)) * (k / 2) + k0 / 2 + q * 16;
  }
  uint32_t acc = 0;
  if constexpr (kLdg) {
    uint4 v[kStages][4];
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
#pragma unroll
      for (int j = 0; j < 4; ++j) v[s][j] = s < steps ? ldg_stream(w[j] + s * 64) : make_uint4(0, 0, 0, 0);
    for (int step = 0; step < steps; step += kStages) {
#pragma unroll
      for (int u = 0; u < kStages; ++u) {  // registers indexed by constants only
        const int s = step + u;
        if (s + kStages - 1 < steps)
#pragma unroll
          for (int j = 0; j < 4; ++j) v[(u + kStages - 1) % kStages][j] = ldg_stream(w[j] + (s + kStages - 1) * 64);
        if (s < steps)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc ^= ok[j] ? xor4(v[u][j]) : 0u;
      }
    }
  } else {
    auto issue = [&](int s) {
      if (s < steps)
        for (int j = 0; j < 4; ++j) cp_async16(&ring[s % kStages][j][threadIdx.x], w[j] + s * 64);
      cp_async_commit();
    };
    for (int s = 0; s < kStages - 1; ++s) issue(s);
    for (int step = 0; step < steps; ++step) {
      issue(step + kStages - 1);
      cp_async_wait<kStages - 1>();
      for (int j = 0; j < 4; ++j) acc ^= ok[j] ? xor4(ring[step % kStages][j][threadIdx.x]) : 0u;
    }
    cp_async_wait<0>();
  }
  atomicXor(out, acc);
}

// bulk / tma, persistent or not: each warp streams tiles (32-row group g, CH-byte chunk c) of the
// (n/32) x (k/2/CH) tile grid, tiles [t0, t1) in row-major order, through its own 4-stage ring.
// Warps per block: 4 stages x 32 rows x CH bytes per warp must fit 227 KB per block.
template <int CH>
constexpr int kStreamWarps = CH >= 256 ? 4 : 8;

template <bool kTma, int CH>
__global__ void __launch_bounds__(256) warp_stream(const uint8_t* codes, const __grid_constant__ CUtensorMap map, int n,
                                                   int k, long tiles_per_warp, long tiles, uint32_t* out) {
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ __align__(8) uint64_t bars[kStreamWarps<CH>][kStages];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint8_t* ring = smem + size_t(warp) * kStages * 32 * CH;  // [stage][32 rows][CH]
  const long gw = long(blockIdx.x) * (blockDim.x / 32) + warp;
  const long t0 = min(tiles, gw * tiles_per_warp), t1 = min(tiles, t0 + tiles_per_warp);
  const int chunks = k / 2 / CH;
  if (lane == 0)
    for (int s = 0; s < kStages; ++s) mbar_init(smem_u32(&bars[warp][s]), 1);
  __syncwarp();
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  auto issue = [&](long t) {
    if (t >= t1) return;
    const int s = int((t - t0) % kStages), g = int(t / chunks), c = int(t % chunks);
    const uint32_t bar = smem_u32(&bars[warp][s]), dst = smem_u32(ring + size_t(s) * 32 * CH);
    if constexpr (kTma) {
      if (lane == 0) {
        mbar_arrive_expect_tx(bar, 32 * CH);
        tma_load_2d(dst, &map, c * CH, g * 32, bar);
      }
    } else {  // (a TMA box counts its out-of-range rows as bytes too; bulk copies only what exists)
      if (lane == 0) mbar_arrive_expect_tx(bar, min(32, n - g * 32) * CH);
      __syncwarp();
      const int row = g * 32 + lane;
      if (row < n) bulk_load(dst + lane * CH, codes + size_t(row) * (k / 2) + size_t(c) * CH, CH, bar);
    }
  };
  uint32_t acc = 0;
  for (long t = t0; t < t0 + kStages - 1; ++t) issue(t);
  for (long t = t0; t < t1; ++t) {
    issue(t + kStages - 1);
    const int s = int((t - t0) % kStages), phase = int(((t - t0) / kStages) & 1);
    mbar_wait(smem_u32(&bars[warp][s]), phase);
    const uint4* tile = reinterpret_cast<const uint4*>(ring + size_t(s) * 32 * CH);
    const int rows = min(32, n - int(t / chunks) * 32);
    for (int i = lane; i < rows * CH / 16; i += 32) acc ^= xor4(tile[i]);
    __syncwarp();  // the slot is refilled by issue(t + kStages) only after every lane read it
  }
  atomicXor(out, acc);
}

struct Shape {
  const char* name;
  int n, k;
};

int main() {
  int dev = 0, sms = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("# %s, %d SMs, L2 %d MiB\n", prop.name, sms, prop.l2CacheSize >> 20);
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult qr;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &qr) == cudaSuccess &&
        qr == cudaDriverEntryPointSuccess)
      encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  uint32_t* d_out;
  CK(cudaMalloc(&d_out, 4));

  // copy bandwidth: 1 GiB device -> device, read + write counted
  const size_t big = size_t(1) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, big));
  CK(cudaMalloc(&b, big));
  CK(cudaMemcpyAsync(b, a, big, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e0));
  for (int i = 0; i < 5; ++i) CK(cudaMemcpyAsync(b, a, big, cudaMemcpyDeviceToDevice));
  CK(cudaEventRecord(e1));
  CK(cudaEventSynchronize(e1));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  const double copy_tbs = 2.0 * big * 5 / (ms * 1e-3) / 1e12;
  CK(cudaFree(a));
  CK(cudaFree(b));
  std::printf("# copy bandwidth %.2f TB/s (1 GiB, read + write)\n", copy_tbs);
  std::printf("| shape | variant | config | us | TB/s | %% of copy | check |\n|---|---|---|---|---|---|---|\n");

  const Shape shapes[] = {{"8b_qkv", 6144, 4096},     {"8b_o", 4096, 4096},    {"8b_gate_up", 28672, 4096},
                          {"8b_down", 4096, 14336},   {"70b_o", 8192, 8192},   {"70b_gate_up", 57344, 8192}};
  for (const Shape& sh : shapes) {
    const size_t bytes = size_t(sh.n) * sh.k / 2;
    const int copies = int(std::max<size_t>(2, (size_t(4) * prop.l2CacheSize + bytes - 1) / bytes));
    std::vector<uint8_t*> bufs(copies);
    std::vector<uint8_t> host(bytes);
    for (size_t i = 0; i < bytes; ++i) host[i] = uint8_t((i * 2654435761u) >> 13);
    for (auto& p : bufs) {
      CK(cudaMalloc(&p, bytes));
      CK(cudaMemcpy(p, host.data(), bytes, cudaMemcpyHostToDevice));
    }
    CK(cudaMemset(d_out, 0, 4));
    xor_reference<<<4 * sms, 256>>>(reinterpret_cast<const uint4*>(bufs[0]), bytes / 16, d_out);
    uint32_t want = 0;
    CK(cudaMemcpy(&want, d_out, 4, cudaMemcpyDeviceToHost));

    // Each variant: a launcher for buffer i; checked once on buffer 0, then timed.
    auto run = [&](const char* variant, const char* cfg, auto&& launch) {
      CK(cudaMemset(d_out, 0, 4));
      launch(0);
      CK(cudaGetLastError());
      uint32_t got = 0;
      CK(cudaMemcpy(&got, d_out, 4, cudaMemcpyDeviceToHost));
      for (int i = 0; i < copies; ++i) launch(i);
      CK(cudaEventRecord(e0));
      const int iters = 40;
      for (int i = 0; i < iters; ++i) launch(i % copies);
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float t = 0;
      CK(cudaEventElapsedTime(&t, e0, e1));
      const double us = 1e3 * t / iters, tbs = bytes / (us * 1e-6) / 1e12;
      std::printf("| %s | %s | %s | %.2f | %.2f | %.0f%% | %s |\n", sh.name, variant, cfg, us, tbs, 100 * tbs / copy_tbs,
                  got == want ? "ok" : "MISMATCH");
      std::fflush(stdout);
    };

    const int row_blocks = (sh.n + 255) / 256;
    const int ring_bytes = kStages * 4 * 256 * 16;
    CK(cudaFuncSetAttribute(decode_mapping<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_bytes));
    for (int splits : {1, 2, 4, 8}) {
      const int steps = sh.k / 128, per = (steps + splits - 1) / splits, ks = per * 128, s_eff = (steps + per - 1) / per;
      char cfg[64];
      std::snprintf(cfg, sizeof cfg, "%d blocks (%d splits)", row_blocks * s_eff, s_eff);
      run("ring", cfg,
          [&](int i) { decode_mapping<false><<<dim3(row_blocks, s_eff), 256, ring_bytes>>>(bufs[i], sh.n, sh.k, ks, d_out); });
      run("ldg", cfg, [&](int i) { decode_mapping<true><<<dim3(row_blocks, s_eff), 256>>>(bufs[i], sh.n, sh.k, ks, d_out); });
    }
    auto streams = [&](auto kernel, const char* name, int ch, bool tma, bool persistent) {
      const long tiles = long((sh.n + 31) / 32) * (sh.k / 2 / ch);
      const int wpb = ch >= 256 ? 4 : 8;  // kStreamWarps
      const size_t smem = size_t(wpb) * kStages * 32 * ch;
      CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      int per_sm = 0;
      CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * wpb, smem));
      // persistent: every resident warp gets an equal share; else twice as many warps (two waves)
      const long warps = (persistent ? 1 : 2) * long(sms) * std::max(per_sm, 1) * wpb;
      const long per_warp = (tiles + warps - 1) / warps;
      const int blocks = int((warps + wpb - 1) / wpb);
      CUtensorMap map{};
      if (tma) {
        if (encode == nullptr) return;
        const cuuint64_t dims[2] = {cuuint64_t(sh.k / 2), cuuint64_t(sh.n)}, strides[1] = {cuuint64_t(sh.k / 2)};
        const cuuint32_t box[2] = {cuuint32_t(ch), 32}, elem[2] = {1, 1};
        if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, bufs[0], dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                   CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                   CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
          return;
      }
      std::vector<CUtensorMap> maps(copies, map);
      if (tma)
        for (int i = 1; i < copies; ++i) {
          const cuuint64_t dims[2] = {cuuint64_t(sh.k / 2), cuuint64_t(sh.n)}, strides[1] = {cuuint64_t(sh.k / 2)};
          const cuuint32_t box[2] = {cuuint32_t(ch), 32}, elem[2] = {1, 1};
          encode(&maps[i], CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, bufs[i], dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                 CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        }
      char cfg[96];
      std::snprintf(cfg, sizeof cfg, "%d blocks x %d warps, %d B chunks, %ld tiles/warp, %d/SM", blocks, wpb, ch, per_warp,
                    per_sm);
      run(name, cfg, [&](int i) { kernel<<<blocks, 32 * wpb, smem>>>(bufs[i], maps[i], sh.n, sh.k, per_warp, tiles, d_out); });
    };
    streams(warp_stream<false, 128>, "bulk", 128, false, false);
    streams(warp_stream<false, 256>, "bulk", 256, false, false);
    streams(warp_stream<false, 128>, "bulk-p", 128, false, true);
    streams(warp_stream<false, 256>, "bulk-p", 256, false, true);
    streams(warp_stream<true, 128>, "tma", 128, true, false);
    streams(warp_stream<true, 256>, "tma", 256, true, false);
    streams(warp_stream<true, 128>, "tma-p", 128, true, true);
    streams(warp_stream<true, 256>, "tma-p", 256, true, true);
    for (auto p : bufs) CK(cudaFree(p));
  }
  return 0;
}
