// The decode (M <= 16) weight-only GEMM for every 4-bit code type of jquant's canonical QArray:
//
//   partial[s, m, n] = sum_{k in split s} x[m, k] * w[n, k]
//   w[n, k] = (v - z) * s        integer codes, uint8 zero points or the code's bias  (kInt)
//           = v * s - z          integer codes, float zeros (GGUF Q4_1 / K-quant mins)  (kFloatZero)
//           = table[v] * s       16-entry codebook: NF4, bnb FP4, IQ4_NL / IQ4_XS, fp4 e2m1 (kCodebook)
//   with v = code[n, k], s = scale[n, k / G], z = zero[n, k / G].
//
// Shapes and dtypes (all row-major, as the canonical QArray stores them; nothing is repacked):
//   x      [M, K]      bf16 or f16 activations, M <= 16, K % 128 == 0
//   codes  [N, K/2]    uint8, two 4-bit codes per byte along K, low nibble first
//                      (jquant/core/packing.py), or the tiled view of `kernels_cuda.w4a16.tile_codes`
//   scale  [N, K/G]    f32, f16, bf16, fp8 e4m3 or e8m0 (the last two as their uint8 bits);
//                      G = 16, or a multiple of 32 dividing K (G == K: per channel)
//   zero   [N, K/G]    kInt: uint8 codes when `has_zero`, else the code's bias plays the zero's role;
//                      kFloatZero: the scale's dtype; kCodebook: unused
//   out    [S, M, N]   f32 partial sums, one slab per K split; the caller sums over S (and applies
//                      NVFP4's per-tensor second scale)
//
// How the work is cut (a Marlin-style decode kernel without a repacked layout):
//   * A warp owns 32 weight rows (two m16 tiles of mma.sync.m16n8k16) and walks its K split in
//     steps of 128 columns. Per step each thread loads 16 contiguous bytes (32 codes) from each of
//     its 4 rows, so a quad of threads reads 64 contiguous bytes of a row and the warp 2 KB
//     (or, in the tiled layout, 512 contiguous bytes per load instruction). The loads run ahead of
//     the math through a cp.async ring of STAGES steps in shared memory.
//   * The weight is the mma's A operand, dequantized straight into registers. Integer codes use the
//     magic-number trick: one LOP3 turns a nibble q into the 16-bit float MAGIC + q (bf16 0x4300 =
//     128, f16 0x6400 = 1024). Codebook codes are looked up with PRMT byte permutes from a 16-entry
//     table held in 8 registers (`codebook_pairs`). With groups of >= 128 columns (kScaleOnAcc) the
//     raw values go into the mma and the scale (and zero) are applied once per step to the f32
//     partial sums; with smaller groups every value is scaled (and offset) in registers first, two
//     values per instruction, rounded once to the activation dtype.
//   * A dot product does not care about the order of its K terms, only that both operands use the
//     same one. The magic trick yields the code pairs (8i+0, 8i+4), (8i+1, 8i+5), (8i+2, 8i+6),
//     (8i+3, 8i+7) of word i; the table lookup yields natural pairs (8i+0, 8i+1), ... Either way the
//     activations are staged once per block in shared memory in the matching order (`stage_x`),
//     so the B fragment of every mma is one conflict-free 8-byte shared load.
//   * Split-K over blockIdx.y keeps >= 4 blocks per SM on small N; the partials are summed by
//     the caller (one small fused XLA reduction).
//   * Split-K inside the block (`kslices` > 1): the block's warps form warps / kslices row groups
//     of 32 rows, and the kslices warps of a row group walk consecutive parts of the block's K
//     range; their sums meet in shared memory in slice order (deterministic). Small layers then
//     need fewer grid splits, and with one split the block writes x's dtype directly: no partial
//     slabs and no reduction kernel after the call.
// References: PTX ISA, "Matrix Fragments for mma.m16n8k16" (fragment ownership) and "prmt"; the
// LOP3 magic-number conversion follows FasterTransformer / Marlin (IST-DASLab/marlin, `dequant`).
#pragma once

#include <type_traits>

#include "codes.cuh"

namespace jquant::decode {

// How the scale meets the values: once per step on the f32 sums (groups of >= 128 columns, one
// group per step), or per value in registers, with one group (G = 32, 64, ...) or two (G = 16) per
// thread's 32-code chunk.
enum Mode : int { kScaleOnAcc = 0, kOneGroupPerChunk = 1, kTwoGroupsPerChunk = 2 };
constexpr int kStepK = 128;                // K columns per warp step (a quad reads 64 bytes per row)
constexpr int kRowsPerWarp = 32;           // two m16 tiles
constexpr int kMaxSplitBytes = 96 * 1024;  // shared memory for the staged activations of one split

// Stage x[:M, k0:k0+ks] into shared memory in B-fragment order:
//   xs[((((t * 4 + i) * 2 + h) * NT + nt) * 32 + lane)] = the b0, b1 registers of mma (i, h)
// where x0..x7 = x[nt * 8 + lane / 4, k0 + t * 128 + (lane % 4) * 32 + 8 * i + 0..7]; rows >= M are 0.
// Interleaved order (magic-number codes): h = 0: {pack(x0, x4), pack(x1, x5)}, h = 1: {pack(x2, x6),
// pack(x3, x7)}; natural order (codebooks): h = 0: {pack(x0, x1), pack(x2, x3)}, h = 1: {x4.., x6..}.
// Also xsum[t * NT * 8 + n] = sum of x[n, k0 + t * 128 : k0 + t * 128 + 128] in f32, summed in a fixed
// order by one thread (deterministic), for the zero-point correction of kScaleOnAcc.
template <typename T, int NT, bool Natural>
__device__ __forceinline__ void stage_x(uint2* xs, float* xsum, const T* __restrict__ x, int m, int k, int k0,
                                        int steps) {
  for (int task = threadIdx.x; task < NT * 8 * steps; task += blockDim.x) {
    const int n = task % (NT * 8), t = task / (NT * 8);
    const int lane_n = (n % 8) * 4, nt = n / 8;
    float sum = 0.0f;
    // All 16 loads of the task are issued before any is used: one round trip to L2, not four
    // (the first step's mma waits on this staging).
    uint4 us[kStepK / 8];
    const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<size_t>(n) * k + k0 + t * kStepK);
#pragma unroll
    for (int c = 0; c < kStepK / 8; ++c) us[c] = n < m ? __ldg(src + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int c = 0; c < kStepK / 8; ++c) {  // 16 chunks of 8 values
      const uint4 u = us[c];
      const int q = c / 4, i = c % 4;
      const int base = (((t * 4 + i) * 2) * NT + nt) * 32 + lane_n + q;
      if constexpr (Natural) {
        xs[base] = make_uint2(u.x, u.y);
        xs[base + NT * 32] = make_uint2(u.z, u.w);
      } else {
        xs[base] = make_uint2(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632));
        xs[base + NT * 32] = make_uint2(__byte_perm(u.y, u.w, 0x5410), __byte_perm(u.y, u.w, 0x7632));
      }
      const T* v = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += to_float(v[e]);
    }
    xsum[t * NT * 8 + n] = sum;
  }
}

// Where a thread's 16-byte pieces live: piece j (rows row_base + 8 j) of step `s` is at
// `base[j] + s * step_bytes`. Canonical layout: base = codes + row * K/2 + k0/2 + q * 16, step 64 B.
// Tiled layout (`tile_codes` in w4a16.py: [N/32, K/128, 4, 32 lanes, 16 B]): every load instruction
// of a warp reads 512 contiguous bytes and a warp's steps are consecutive 2 KB tiles.
//
// kScaleOnAcc (G % 128 == 0, so one step lies in one group for every thread): the mma runs on the
// raw values (MAGIC + q, or table[q]) and the group's scale and zero meet the f32 partial sums:
//   sum_k (q - z) s x_k   = s * (sum_k (MAGIC + q) x_k - (MAGIC + z) * sum_k x_k)          kInt
//   sum_k (q s - z) x_k   = s * (sum_k (MAGIC + q) x_k - MAGIC * sum_k x_k) - z sum_k x_k   kFloatZero
//   sum_k table[q] s x_k  = s * sum_k table[q] x_k                                          kCodebook
// (products exact in the mma, f32 sums; the MAGIC term cancels up to f32 rounding of ~2^-17 relative).
template <typename T, typename ST, int NT, int STAGES, int KIND, int MODE>
__global__ void __launch_bounds__(256, 2) decode_kernel(const T* __restrict__ x, const uint8_t* __restrict__ codes,
                                                        const ST* __restrict__ scale, const void* __restrict__ zero,
                                                        void* __restrict__ out, int m, int n, int k, int group,
                                                        int ks, int bias, int has_zero, int tiled, Codebook cb,
                                                        int kslices, int out_act) {
  using Tr = Half2Traits<T>;
  using T2 = typename Tr::T2;
  using ZT = std::conditional_t<KIND == kFloatZero, ST, uint8_t>;
  constexpr bool kOnAcc = MODE == kScaleOnAcc;
  constexpr int kSubs = MODE == kTwoGroupsPerChunk ? 2 : 1;  // scale groups per 32-code chunk
  extern __shared__ uint2 xs[];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int q = lane & 3, r = lane >> 2;
  const int split = blockIdx.y;
  // The block's K range [kb, kb + block_steps * 128) is staged once; warp `warp` is slice `slice`
  // of row group `rgroup` and walks `steps` of it from step `s0` (column k0). Its row group's
  // other slices hold the rest; a slice past the end has no steps.
  const int kb = split * ks;
  const int block_steps = min(ks, k - kb) / kStepK;
  int s0, steps, warp_global;
  {
    const int rgroups = (blockDim.x >> 5) / kslices, rgroup = warp % rgroups, slice = warp / rgroups;
    const int per_slice = (block_steps + kslices - 1) / kslices;
    s0 = min(block_steps, slice * per_slice);
    steps = min(block_steps, s0 + per_slice) - s0;
    warp_global = blockIdx.x * rgroups + rgroup;
  }
  const int k0 = kb + s0 * kStepK;
  const int row_base = warp_global * kRowsPerWarp + r;
  const int groups = k / group;
  float* xsum = reinterpret_cast<float*>(xs + static_cast<size_t>(block_steps) * 4 * 2 * NT * 32);

  // The 4 rows this thread reads: row_base + {0, 8, 16, 24} (clamped for scales and canonical codes;
  // out-of-range rows are computed on a duplicate and never stored).
  const uint8_t* wptr[4];
  const ST* srow[4];
  const ZT* zrow[4];
  const int step_bytes = tiled ? 4 * 512 : kStepK / 2;
  const int tile = min(warp_global, (n - 1) / kRowsPerWarp);
  const bool zeros = KIND == kFloatZero || (KIND == kInt && has_zero);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int row = min(row_base + 8 * j, n - 1);
    if (tiled)  // (a warp past the last 32-row tile reads the last one, like the clamped rows)
      wptr[j] = codes + ((static_cast<size_t>(tile) * (k / kStepK) + k0 / kStepK) * 4 + j) * 512 + lane * 16;
    else
      wptr[j] = codes + static_cast<size_t>(row) * (k / 2) + k0 / 2 + q * 16;
    srow[j] = scale + static_cast<size_t>(row) * groups;
    zrow[j] = static_cast<const ZT*>(zero) + (zeros ? static_cast<size_t>(row) * groups : 0);
  }
  // Group of this thread's codes at the step being loaded: kScaleOnAcc walks whole groups of
  // `gsteps` steps (a counter, no division per step); otherwise 128 / G groups per step and the
  // thread's 32 codes sit in groups g0 + step * (128 / G) (+ 1 for G = 16).
  const int gsteps = kOnAcc ? group / kStepK : 1;
  int g_ld = kOnAcc ? (k0 / kStepK) / gsteps : (k0 + q * 32) / group;
  int left_ld = kOnAcc ? gsteps - (k0 / kStepK) % gsteps : 0;
  const int g_per_step = kOnAcc ? 0 : kStepK / group;

  // Codes stream through a per-thread ring of STAGES steps in shared memory, filled by cp.async
  // (no registers held by loads in flight, so STAGES - 1 steps = (STAGES - 1) * 64 bytes per thread
  // stay in flight at any occupancy). Each thread only reads back what it copied itself, so
  // cp.async.wait_group is the only synchronization. Scales and zeros use a 2-deep register ring.
  uint4* ring = reinterpret_cast<uint4*>(xsum + block_steps * NT * 8);  // [STAGES][4][blockDim.x]
  const int nthreads = blockDim.x;
  auto issue = [&](int step) {
    if (step < steps) {
      const int slot = step % STAGES;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        cp_async16(ring + (slot * 4 + j) * nthreads + threadIdx.x, wptr[j] + static_cast<size_t>(step) * step_bytes);
    }
    cp_async_commit();  // an empty group past the end keeps the group count uniform
  };
  ST s_cur[4][kSubs], s_next[4][kSubs];
  ZT z_cur[4][kSubs], z_next[4][kSubs];
  auto load_scales = [&](ST(&sv)[4][kSubs], ZT(&zv)[4][kSubs]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int u = 0; u < kSubs; ++u) {
        sv[j][u] = load_scale(srow[j] + g_ld + u);
        if constexpr (KIND == kFloatZero)
          zv[j][u] = load_scale(zrow[j] + g_ld + u);
        else if constexpr (KIND == kInt)
          zv[j][u] = has_zero ? __ldg(zrow[j] + g_ld + u) : uint8_t(0);
        else
          zv[j][u] = ZT{};
      }
    }
    if constexpr (kOnAcc) {
      if (--left_ld == 0) {
        ++g_ld;
        left_ld = gsteps;
      }
    } else {
      g_ld += g_per_step;
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) issue(s);
  if (steps > 0) load_scales(s_cur, z_cur);  // (an empty slice would read past its row's scales)

  stage_x<T, NT, KIND == kCodebook>(xs, xsum, x, m, k, kb, block_steps);
  __syncthreads();

  // MAGIC + the code's bias: what (MAGIC + q) loses to become q - bias.
  const float magic_bias = Tr::kMagicF + static_cast<float>(bias);
  const T2 magic_bias2 = Tr::from_float(magic_bias);

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;

  // This warp's part of the staged activations and their sums.
  const uint2* xs_w = xs + static_cast<size_t>(s0) * (4 * 2 * NT * 32);
  const float* xsum_w = xsum + s0 * NT * 8;
  for (int step = 0; step < steps; ++step) {
    issue(step + STAGES - 1);
    if (step + 1 < steps) load_scales(s_next, z_next);
    cp_async_wait<STAGES - 1>();  // this step's group (issued STAGES - 1 groups ago) has landed
    uint32_t w[4][4];
    {
      const int slot = step % STAGES;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint4 v = ring[(slot * 4 + j) * nthreads + threadIdx.x];
        w[j][0] = v.x;
        w[j][1] = v.y;
        w[j][2] = v.z;
        w[j][3] = v.w;
      }
    }
#ifdef JQUANT_EXPERIMENT_NO_MATH
    // Timing experiment only (bench/profile_cuda_decode.py --no-math): consume the codes and
    // scales without dequantizing or multiplying, to measure the memory side alone.
    acc[0][0][0] += __uint_as_float((w[0][0] ^ w[1][1] ^ w[2][2] ^ w[3][3]) & 0x007FFFFFu) + to_float(s_cur[0][0]);
    s_cur[0][0] = s_next[0][0];
    continue;
#endif
    // sf: the scale; zf: what multiplies sum_k x_k (kScaleOnAcc) or is subtracted from each value
    // before scaling (kInt), in f32; zo: the float zero (kFloatZero).
    float sf[4][kSubs], zf[4][kSubs], zo[4][kSubs];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int u = 0; u < kSubs; ++u) {
        sf[j][u] = to_float(s_cur[j][u]);
        if constexpr (KIND == kInt) {
          zf[j][u] = magic_bias + static_cast<float>(z_cur[j][u]);
          zo[j][u] = 0.0f;
        } else if constexpr (KIND == kFloatZero) {
          zf[j][u] = magic_bias;
          zo[j][u] = to_float(z_cur[j][u]);
        } else {
          zf[j][u] = 0.0f;
          zo[j][u] = 0.0f;
        }
        s_cur[j][u] = s_next[j][u];
        z_cur[j][u] = z_next[j][u];
      }
    }
    const uint2* xf = xs_w + static_cast<size_t>(step) * (4 * 2 * NT * 32) + lane;
    // Per-value dequantization constants (not kScaleOnAcc), as pairs of T.
    T2 s2[4][kSubs], z2[4][kSubs];
    if constexpr (!kOnAcc) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int u = 0; u < kSubs; ++u) {
          s2[j][u] = Tr::from_float(sf[j][u]);
          z2[j][u] = Tr::from_float(KIND == kInt ? zf[j][u] : -zo[j][u]);
        }
      }
    }
    float part[2][NT][4];
    float(&sum)[2][NT][4] = kOnAcc ? part : acc;
    if constexpr (kOnAcc) {
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < NT; ++b)
#pragma unroll
          for (int c = 0; c < 4; ++c) part[a][b][c] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // The four A pairs of each row piece for word i: [a0 (h = 0), a2 (h = 0), a0 (h = 1), a2 (h = 1)].
      uint32_t a[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        raw_pairs<T, KIND>(w[j][i], cb, a[j]);
        if constexpr (!kOnAcc) {
          const int u = kSubs == 2 ? i / 2 : 0;  // G = 16: words 0, 1 in the chunk's first group
          dequant_pairs<T, KIND>(a[j], s2[j][u], z2[j][u], magic_bias2);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint2 b[NT];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) b[nt] = xf[((i * 2 + h) * NT + nt) * 32];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int ja = 2 * mt, jb = 2 * mt + 1;  // rows r (+16 mt) and r + 8 (+16 mt)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
            mma_16816<T>(sum[mt][nt], a[ja][2 * h], a[jb][2 * h], a[ja][2 * h + 1], a[jb][2 * h + 1], b[nt].x,
                         b[nt].y);
        }
      }
    }
    if constexpr (kOnAcc) {
      const float* xs_step = xsum_w + step * NT * 8;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 xv = *reinterpret_cast<const float2*>(xs_step + nt * 8 + 2 * q);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int j = 2 * mt + (c >> 1);
            const float xsv = (c & 1) ? xv.y : xv.x;
            if constexpr (KIND == kCodebook)
              acc[mt][nt][c] = fmaf(sf[j][0], part[mt][nt][c], acc[mt][nt][c]);
            else
              acc[mt][nt][c] += sf[j][0] * fmaf(-zf[j][0], xsv, part[mt][nt][c]) - zo[j][0] * xsv;
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  if (kslices > 1) {
    // Slices 1.. hand their sums to slice 0 through the code ring (no copies are in flight any
    // more): [warp][fragment value][lane], conflict-free; slice 0 adds them in slice order.
    float* red = reinterpret_cast<float*>(xsum + block_steps * NT * 8);
    const int rgroups = (blockDim.x >> 5) / kslices, rgroup = warp % rgroups, slice = warp / rgroups;
    constexpr int kVals = 2 * NT * 4;
    float* sums = &acc[0][0][0];  // the fragment's kVals values (constant indices once unrolled)
    __syncthreads();
    if (slice > 0) {
#pragma unroll
      for (int v = 0; v < kVals; ++v) red[(warp * kVals + v) * 32 + lane] = sums[v];
    }
    __syncthreads();
    if (slice > 0) return;
    for (int sl = 1; sl < kslices; ++sl) {
      const int from = sl * rgroups + rgroup;
#pragma unroll
      for (int v = 0; v < kVals; ++v) sums[v] += red[(from * kVals + v) * 32 + lane];
    }
  }

  // Accumulator fragment: c0, c1 -> (row r, cols 2q, 2q+1); c2, c3 -> (row r + 8, same cols).
  // f32 partial slab `split` of [S, M, N], or (out_act, one split) x's dtype [M, N].
  const size_t slab = static_cast<size_t>(split) * m * n;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int row = row_base + 16 * mt + (c >= 2 ? 8 : 0);
        const int col = nt * 8 + 2 * q + (c & 1);
        if (row >= n || col >= m) continue;
        const size_t at = slab + static_cast<size_t>(col) * n + row;
        if (out_act)
          static_cast<T*>(out)[at] = static_cast<T>(acc[mt][nt][c]);
        else
          static_cast<float*>(out)[at] = acc[mt][nt][c];
      }
    }
  }
}

struct Launch {
  cudaStream_t stream;
  const void *x, *codes, *scale, *zero;
  void* out;  // f32 [S, M, N], or x's dtype [1, M, N] when out_act
  int m, n, k, group, ks, bias, warps;
  bool has_zero, tiled;
  Codebook cb;
  int kslices = 1;  // warps per row group along K (divides warps)
  bool out_act = false;
  int* blocks_per_sm = nullptr;  // when set: report the kernel's occupancy instead of launching
};

// x fragments + x sums per step (see stage_x), then the code ring: STAGES x 4 pieces x 16 B per thread.
inline size_t smem_bytes(int ks, int nt, int stages, int threads) {
  return static_cast<size_t>(ks / kStepK) * (kStepK * 16 + 8 * 4) * nt + static_cast<size_t>(stages) * 64 * threads;
}

inline int mode_for(int group) {
  return group % kStepK == 0 ? kScaleOnAcc : (group == 16 ? kTwoGroupsPerChunk : kOneGroupPerChunk);
}

template <typename T, typename ST, int NT, int STAGES, int KIND, int MODE>
cudaError_t launch_typed(const Launch& a) {
  auto kernel = decode_kernel<T, ST, NT, STAGES, KIND, MODE>;
  const size_t smem = smem_bytes(a.ks, NT, STAGES, a.warps * 32);
  if (a.blocks_per_sm) return cudaOccupancyMaxActiveBlocksPerMultiprocessor(a.blocks_per_sm, kernel, a.warps * 32, smem);
  const int splits = (a.k + a.ks - 1) / a.ks;
  const int rows_per_block = a.warps / a.kslices * kRowsPerWarp;
  dim3 grid((a.n + rows_per_block - 1) / rows_per_block, splits);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, a.warps * 32, smem, a.stream>>>(static_cast<const T*>(a.x), static_cast<const uint8_t*>(a.codes),
                                                 static_cast<const ST*>(a.scale), a.zero, a.out, a.m, a.n, a.k,
                                                 a.group, a.ks, a.bias, a.has_zero ? 1 : 0, a.tiled ? 1 : 0, a.cb,
                                                 a.kslices, a.out_act ? 1 : 0);
  return cudaGetLastError();
}

template <typename T, typename ST, int NT, int STAGES, int KIND>
cudaError_t launch_mode(const Launch& a) {
  switch (mode_for(a.group)) {
    case kScaleOnAcc:
      return launch_typed<T, ST, NT, STAGES, KIND, kScaleOnAcc>(a);
    case kTwoGroupsPerChunk:
      return launch_typed<T, ST, NT, STAGES, KIND, kTwoGroupsPerChunk>(a);
    default:
      return launch_typed<T, ST, NT, STAGES, KIND, kOneGroupPerChunk>(a);
  }
}

// Ring depth: 4 or 8 steps for integer codes (the launch-config sweeps), 4 for the other kinds.
template <typename T, typename ST, int KIND>
cudaError_t launch_nt(int stages, const Launch& a) {
  if constexpr (KIND == kInt) {
    if (stages > 4) return a.m <= 8 ? launch_mode<T, ST, 1, 8, KIND>(a) : launch_mode<T, ST, 2, 8, KIND>(a);
  } else {
    if (stages != 4) return cudaErrorInvalidValue;
  }
  return a.m <= 8 ? launch_mode<T, ST, 1, 4, KIND>(a) : launch_mode<T, ST, 2, 4, KIND>(a);
}

// Per kind, one translation unit each (decode_int.cu, decode_float_zero.cu, decode_codebook.cu), so
// that they compile in parallel: the launch for activation dtype T and scale storage `st`.
template <typename T>
cudaError_t launch_int(ScaleType st, int stages, const Launch& a);
template <typename T>
cudaError_t launch_float_zero(ScaleType st, int stages, const Launch& a);
template <typename T>
cudaError_t launch_codebook(ScaleType st, int stages, const Launch& a);

}  // namespace jquant::decode
