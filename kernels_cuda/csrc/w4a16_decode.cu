// W4A16 decode GEMM for jquant's canonical int4 layout, exposed to JAX through the XLA FFI.
//
//   partial[s, m, n] = sum_{k in split s} x[m, k] * (v[n, k] - z[n, k/G]) * scale[n, k/G]
//
// Shapes and dtypes (all row-major, as jquant's canonical QArray stores them; nothing is repacked):
//   x      [M, K]      bf16 or f16 activations, M <= 16, K % 128 == 0
//   codes  [N, K/2]    uint8, two 4-bit codes per byte along K, low nibble first
//                      (jquant/core/packing.py), unsigned (two's complement codes are declined)
//   scale  [N, K/G]    f32, f16 or bf16; G (the group) a multiple of 32 dividing K (G == K: per channel)
//   zero   [N, K/G]    uint8 zero-point codes when `has_zero`, else ignored; without zeros the
//                      code's bias (8 for GPTQ's uint4b8) plays the zero's role
//   out    [S, M, N]   f32 partial sums, one slab per K split; the caller sums over S
//
// How the work is cut (a Marlin-style decode kernel without a repacked layout):
//   * A warp owns 32 weight rows (two m16 tiles of mma.sync.m16n8k16) and walks its K split in
//     steps of 128 columns. Per step each thread loads 16 contiguous bytes (32 codes) from each of
//     its 4 rows, so a quad of threads reads 64 contiguous bytes of a row and the warp 2 KB
//     (or, in the tiled layout derived at load, 512 contiguous bytes per load instruction).
//     Those loads run ahead of the math in a register ring of STAGES steps, which keeps
//     (STAGES - 1) * 64 bytes in flight per thread.
//   * The weight is the mma's A operand, dequantized straight into registers: the magic-number
//     trick turns a nibble q into the 16-bit float MAGIC + q with one LOP3 (bf16 0x4300 = 128,
//     f16 0x6400 = 1024). For groups of >= 128 columns these raw values go straight into the mma
//     and the scale and zero are applied once per step to the f32 partial sums (`ScaleOnAcc`);
//     for groups of 32 / 64, (MAGIC + q) - (MAGIC + z) is exact and one multiply applies the
//     scale, two values per instruction, before the mma.
//   * A dot product does not care about the order of its K terms, only that both operands use
//     the same one. The fragment that a thread owns in the mma (columns 2t, 2t+1, 2t+8, 2t+9 of
//     a k16 slice) is mapped to the codes that thread loaded: word i of its 16 bytes gives the
//     pairs (8i+0, 8i+4), (8i+1, 8i+5), (8i+2, 8i+6), (8i+3, 8i+7) after the LOP3, and those
//     pairs feed the A registers of mma 2i (pairs 0, 1) and 2i+1 (pairs 2, 3). The activations
//     are staged once per block in shared memory in exactly that order (`stage_x`), so the B
//     fragment of every mma is one conflict-free 8-byte shared load.
//   * Split-K over blockIdx.y keeps >= 4 blocks per SM on small N; the partials are summed by
//     the caller (one small fused XLA reduction).
// References: PTX ISA, "Matrix Fragments for mma.m16n8k16" (fragment ownership); the LOP3 magic
// number conversion follows FasterTransformer / Marlin (IST-DASLab/marlin, `dequant`).

#include <utility>

#include "common.cuh"

namespace ffi = xla::ffi;

namespace {

using namespace jquant;

constexpr int kStepK = 128;          // K columns per warp step (a quad reads 64 bytes per row)
constexpr int kRowsPerWarp = 32;     // two m16 tiles
constexpr int kMaxSplitBytes = 48 * 1024;  // shared memory for the staged activations of one split

// Stage x[:M, k0:k0+ks] into shared memory in B-fragment order (see the header comment):
//   xs[((((t * 4 + i) * 2 + h) * NT + nt) * 32 + lane)] = uint2{pack(x0, x4), pack(x1, x5)} (h = 0)
//                                                       or uint2{pack(x2, x6), pack(x3, x7)} (h = 1)
// where x0..x7 = x[nt * 8 + lane / 4, k0 + t * 128 + (lane % 4) * 32 + 8 * i + 0..7]; rows >= M are 0.
// Also xsum[t * NT * 8 + n] = sum of x[n, k0 + t * 128 : k0 + t * 128 + 128] in f32, summed in a fixed
// order by one thread (deterministic), for the zero-point correction of `ScaleOnAcc`.
template <typename T, int NT>
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
      xs[base] = make_uint2(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632));
      xs[base + NT * 32] = make_uint2(__byte_perm(u.y, u.w, 0x5410), __byte_perm(u.y, u.w, 0x7632));
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
// ScaleOnAcc (G % 128 == 0, so one step lies in one group for every thread): the mma runs on the raw
// (MAGIC + q) values and the group's scale and zero are applied to the f32 partial sums of the step:
//   sum_k (q - z) s x_k = s * (sum_k (MAGIC + q) x_k - (MAGIC + z) * sum_k x_k)
// (products exact in the mma, f32 sums; the MAGIC term cancels up to f32 rounding of ~2^-17 relative).
// Otherwise (G = 32, 64) every value is dequantized in registers before the mma.
template <typename T, typename ST, int NT, int STAGES, bool ScaleOnAcc>
__global__ void __launch_bounds__(256, 1) w4a16_decode_kernel(const T* __restrict__ x,
                                                              const uint8_t* __restrict__ codes,
                                                              const ST* __restrict__ scale,
                                                              const uint8_t* __restrict__ zero,
                                                              float* __restrict__ out, int m, int n, int k, int group,
                                                              int ks, int bias, int has_zero, int tiled) {
  using Tr = Half2Traits<T>;
  using T2 = typename Tr::T2;
  extern __shared__ uint2 xs[];

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int q = lane & 3, r = lane >> 2;
  const int split = blockIdx.y;
  const int k0 = split * ks;
  const int steps = min(ks, k - k0) / kStepK;
  const int warp_global = blockIdx.x * (blockDim.x / 32) + warp;
  const int row_base = warp_global * kRowsPerWarp + r;
  const int groups = k / group;
  float* xsum = reinterpret_cast<float*>(xs + static_cast<size_t>(steps) * 4 * 2 * NT * 32);

  // The 4 rows this thread reads: row_base + {0, 8, 16, 24} (clamped for scales and canonical codes;
  // out-of-range rows are computed on a duplicate and never stored).
  const uint8_t* wptr[4];
  const ST* srow[4];
  const uint8_t* zrow[4];
  const int step_bytes = tiled ? 4 * 512 : kStepK / 2;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int row = min(row_base + 8 * j, n - 1);
    if (tiled)
      wptr[j] = codes + ((static_cast<size_t>(warp_global) * (k / kStepK) + k0 / kStepK) * 4 + j) * 512 + lane * 16;
    else
      wptr[j] = codes + static_cast<size_t>(row) * (k / 2) + k0 / 2 + q * 16;
    srow[j] = scale + static_cast<size_t>(row) * groups;
    zrow[j] = zero + (has_zero ? static_cast<size_t>(row) * groups : 0);
  }
  // Group of this thread's codes at the step being loaded: ScaleOnAcc walks whole groups of
  // `gsteps` steps (a counter, no division per step); otherwise 128 / G groups per step and the
  // thread's 32 codes sit in group g0 + step * (128 / G).
  const int gsteps = ScaleOnAcc ? group / kStepK : 1;
  int g_ld = ScaleOnAcc ? (k0 / kStepK) / gsteps : (k0 + q * 32) / group;
  int left_ld = ScaleOnAcc ? gsteps - (k0 / kStepK) % gsteps : 0;
  const int g_per_step = ScaleOnAcc ? 0 : kStepK / group;

  // Codes stream through a per-thread ring of STAGES steps in shared memory, filled by cp.async
  // (no registers held by loads in flight, so STAGES - 1 steps = (STAGES - 1) * 64 bytes per thread
  // stay in flight at any occupancy). Each thread only reads back what it copied itself, so
  // cp.async.wait_group is the only synchronization. Scales and zeros use a 2-deep register ring.
  uint4* ring = reinterpret_cast<uint4*>(xsum + steps * NT * 8);  // [STAGES][4][blockDim.x]
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
  ST s_cur[4], s_next[4];
  uint8_t z_cur[4], z_next[4];
  auto load_scales = [&](ST(&sv)[4], uint8_t(&zv)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      sv[j] = __ldg(srow[j] + g_ld);
      zv[j] = has_zero ? __ldg(zrow[j] + g_ld) : uint8_t(0);
    }
    if (ScaleOnAcc) {
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
  load_scales(s_cur, z_cur);

  stage_x<T, NT>(xs, xsum, x, m, k, k0, steps);
  __syncthreads();

  float acc[2][NT][4];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < NT; ++b)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.0f;

  for (int step = 0; step < steps; ++step) {
    {
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
      acc[0][0][0] += __uint_as_float((w[0][0] ^ w[1][1] ^ w[2][2] ^ w[3][3]) & 0x007FFFFFu) + to_float(s_cur[0]);
      s_cur[0] = s_next[0];
      continue;
#endif
      {
        float sf[4], zf[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          sf[j] = to_float(s_cur[j]);
          zf[j] = Tr::kMagicF + static_cast<float>(static_cast<int>(z_cur[j]) + bias);
          s_cur[j] = s_next[j];
          z_cur[j] = z_next[j];
        }
        const uint2* xf = xs + static_cast<size_t>(step) * (4 * 2 * NT * 32) + lane;
        // ScaleOnAcc: the raw (MAGIC + q) values go into per-step partial sums, scaled below;
        // otherwise each pair is dequantized before the mma and accumulated directly.
        T2 s2[4], z2[4];
        if constexpr (!ScaleOnAcc) {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            s2[j] = Tr::from_float(sf[j]);
            z2[j] = Tr::from_float(zf[j]);
          }
        }
        auto a_pair = [&](int j, int i, int shift) {
          if constexpr (ScaleOnAcc)
            return magic_pair<T>(w[j][i], shift);
          else
            return dequant_pair<T>(w[j][i], shift, z2[j], s2[j]);
        };
        float part[2][NT][4];
        float(&sum)[2][NT][4] = ScaleOnAcc ? part : acc;
        if constexpr (ScaleOnAcc) {
#pragma unroll
          for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < NT; ++b)
#pragma unroll
              for (int c = 0; c < 4; ++c) part[a][b][c] = 0.0f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            uint2 b[NT];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) b[nt] = xf[((i * 2 + h) * NT + nt) * 32];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
              const int ja = 2 * mt, jb = 2 * mt + 1;  // rows r (+16 mt) and r + 8 (+16 mt)
              const uint32_t a0 = a_pair(ja, i, 8 * h), a1 = a_pair(jb, i, 8 * h);
              const uint32_t a2 = a_pair(ja, i, 8 * h + 4), a3 = a_pair(jb, i, 8 * h + 4);
#pragma unroll
              for (int nt = 0; nt < NT; ++nt) mma_16816<T>(sum[mt][nt], a0, a1, a2, a3, b[nt].x, b[nt].y);
            }
          }
        }
        if constexpr (ScaleOnAcc) {
          const float* xs_step = xsum + step * NT * 8;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const float2 xv = *reinterpret_cast<const float2*>(xs_step + nt * 8 + 2 * q);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                const int j = 2 * mt + (c >> 1);
                acc[mt][nt][c] += sf[j] * fmaf(-zf[j], (c & 1) ? xv.y : xv.x, part[mt][nt][c]);
              }
            }
          }
        }
      }
    }
  }
  cp_async_wait<0>();

  // Accumulator fragment: c0, c1 -> (row r, cols 2q, 2q+1); c2, c3 -> (row r + 8, same cols).
  float* o = out + static_cast<size_t>(split) * m * n;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int row = row_base + 16 * mt + (c >= 2 ? 8 : 0);
        const int col = nt * 8 + 2 * q + (c & 1);
        if (row < n && col < m) o[static_cast<size_t>(col) * n + row] = acc[mt][nt][c];
      }
    }
  }
}

struct Launch {
  cudaStream_t stream;
  const void *x, *codes, *scale, *zero;
  float* out;
  int m, n, k, group, ks, bias, warps;
  bool has_zero, tiled;
  int* blocks_per_sm = nullptr;  // when set: report the kernel's occupancy instead of launching
};

// x fragments + x sums per step (see stage_x), then the code ring: STAGES x 4 pieces x 16 B per thread.
size_t smem_bytes(int ks, int nt, int stages, int threads) {
  return static_cast<size_t>(ks / kStepK) * (kStepK * 16 + 8 * 4) * nt + static_cast<size_t>(stages) * 64 * threads;
}

template <typename T, typename ST, int NT, int STAGES, bool ScaleOnAcc>
cudaError_t launch_typed(const Launch& a) {
  if (a.blocks_per_sm)
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(a.blocks_per_sm,
                                                         w4a16_decode_kernel<T, ST, NT, STAGES, ScaleOnAcc>,
                                                         a.warps * 32, smem_bytes(a.ks, NT, STAGES, a.warps * 32));
  const int splits = (a.k + a.ks - 1) / a.ks;
  const int rows_per_block = a.warps * kRowsPerWarp;
  dim3 grid((a.n + rows_per_block - 1) / rows_per_block, splits);
  const size_t smem = smem_bytes(a.ks, NT, STAGES, a.warps * 32);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(w4a16_decode_kernel<T, ST, NT, STAGES, ScaleOnAcc>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  w4a16_decode_kernel<T, ST, NT, STAGES, ScaleOnAcc><<<grid, a.warps * 32, smem, a.stream>>>(
      static_cast<const T*>(a.x), static_cast<const uint8_t*>(a.codes), static_cast<const ST*>(a.scale),
      static_cast<const uint8_t*>(a.zero), a.out, a.m, a.n, a.k, a.group, a.ks, a.bias, a.has_zero ? 1 : 0,
      a.tiled ? 1 : 0);
  return cudaGetLastError();
}

template <typename T, typename ST, int NT, int STAGES>
cudaError_t launch_acc(const Launch& a) {
  if (a.group % kStepK == 0) return launch_typed<T, ST, NT, STAGES, true>(a);
  return launch_typed<T, ST, NT, STAGES, false>(a);
}

template <typename T, typename ST, int NT>
cudaError_t launch_stages(int stages, const Launch& a) {
  if (stages <= 4) return launch_acc<T, ST, NT, 4>(a);
  return launch_acc<T, ST, NT, 8>(a);
}

template <typename T, typename ST>
cudaError_t launch_nt(int stages, const Launch& a) {
  if (a.m <= 8) return launch_stages<T, ST, 1>(stages, a);
  return launch_stages<T, ST, 2>(stages, a);
}

template <typename T>
cudaError_t launch_scale(ffi::DataType sdt, int stages, const Launch& a) {
  switch (sdt) {
    case ffi::DataType::F32:
      return launch_nt<T, float>(stages, a);
    case ffi::DataType::F16:
      return launch_nt<T, __half>(stages, a);
    default:
      return launch_nt<T, __nv_bfloat16>(stages, a);
  }
}

ffi::Error W4A16DecodeImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer codes, ffi::AnyBuffer scale,
                           ffi::AnyBuffer zero, ffi::Result<ffi::AnyBuffer> out, int64_t group, int64_t k_split,
                           int64_t bias, int64_t has_zero, int64_t stages, int64_t warps,
                           int64_t tiled) {
  const auto xd = x.dimensions(), wd = codes.dimensions(), sd = scale.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 2 || sd.size() != 2 || od.size() != 3)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: x, codes, scale must be 2-D and out 3-D");
  const int64_t m = xd[0], k = xd[1], n = sd[0];
  const auto xt = x.element_type();
  if (xt != ffi::DataType::BF16 && xt != ffi::DataType::F16)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: x must be bf16 or f16");
  const bool codes_ok = tiled ? (wd[0] == (n + kRowsPerWarp - 1) / kRowsPerWarp && wd[1] == k * 16)
                              : (wd[0] == n && wd[1] * 2 == k);
  if (codes.element_type() != ffi::DataType::U8 || !codes_ok)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: codes must be uint8 " +
                                       std::string(tiled ? "[ceil(N/32), 16 K]" : "[N, K/2]") + ", got " +
                                       dims_str(wd) + " for N=" + std::to_string(n) + ", K=" + std::to_string(k));
  const auto st = scale.element_type();
  if (st != ffi::DataType::F32 && st != ffi::DataType::F16 && st != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: scale must be f32, f16 or bf16");
  if (m < 1 || m > 16 || k % kStepK != 0 || group % 32 != 0 || k % group != 0 || k_split % kStepK != 0 ||
      k_split < kStepK || warps < 1 || warps > 8)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: unsupported M=" + std::to_string(m) +
                                       " K=" + std::to_string(k) + " group=" + std::to_string(group) +
                                       " k_split=" + std::to_string(k_split));
  if (sd[1] != k / group)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: scale " + dims_str(sd) +
                                       " does not match K/G=" + std::to_string(k / group));
  if (has_zero && (zero.element_type() != ffi::DataType::U8 || zero.element_count() != size_t(n * (k / group))))
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: zero must be uint8 with the scale's shape");
  const int64_t splits = (k + k_split - 1) / k_split;
  const int nt = m > 8 ? 2 : 1;
  if (od[0] != splits || od[1] != m || od[2] != n || out->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: out must be f32 [S, M, N] = (" +
                                       std::to_string(splits) + ", " + std::to_string(m) + ", " + std::to_string(n) +
                                       "), got " + dims_str(od));
  if (smem_bytes(int(k_split), nt, 0, 0) > kMaxSplitBytes)
    return ffi::Error::InvalidArgument("jquant_w4a16_decode: k_split too large for shared memory");
  Launch a{stream,         x.untyped_data(), codes.untyped_data(), scale.untyped_data(), zero.untyped_data(),
           static_cast<float*>(out->untyped_data()),
           int(m),         int(n),           int(k),               int(group),           int(k_split),
           int(bias),      int(warps),       has_zero != 0,        tiled != 0};
  const cudaError_t err =
      xt == ffi::DataType::BF16 ? launch_scale<__nv_bfloat16>(st, int(stages), a) : launch_scale<__half>(st, int(stages), a);
  if (err != cudaSuccess) return ffi::Error::Internal(std::string("jquant_w4a16_decode: ") + cudaGetErrorString(err));
  return ffi::Error::Success();
}

// x [M, K], codes (canonical [N, K/2] or tiled), scale [N, K/G], zero (uint8 [N, K/G] or a 1-element
// dummy) -> partial sums [S, M, N] f32, plus the launch attributes.
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
      .template Attr<int64_t>("tiled");
}

}  // namespace

// Blocks of the kernel one SM holds at once for a launch configuration (for the host-side choice
// of the K split, `kernels_cuda.w4a16.decode_config`): x_dtype 0 = bf16, 1 = f16; scale_dtype
// 0 = f32, 1 = f16, 2 = bf16. Returns -1 on a CUDA error (no device, ...).
extern "C" int JquantW4A16BlocksPerSM(int x_dtype, int scale_dtype, int m, int group, int k_split, int stages,
                                      int warps) {
  int blocks = 0;
  Launch a{};
  a.m = m;
  a.group = group;
  a.ks = k_split;
  a.warps = warps;
  a.blocks_per_sm = &blocks;
  const ffi::DataType sdt =
      scale_dtype == 0 ? ffi::DataType::F32 : (scale_dtype == 1 ? ffi::DataType::F16 : ffi::DataType::BF16);
  const cudaError_t err =
      x_dtype == 0 ? launch_scale<__nv_bfloat16>(sdt, stages, a) : launch_scale<__half>(sdt, stages, a);
  return err == cudaSuccess ? blocks : -1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16Decode, W4A16DecodeImpl,
                              decode_binding(bind_stream_and_4_buffers()),
                              // Only stream work in the handler: XLA may record it into a CUDA graph
                              // (command buffer) together with the neighbouring fusions.
                              {ffi::Traits::kCmdBufferCompatible});
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantW4A16DecodePoisoned, WithPoisonedOut<W4A16DecodeImpl>::Call,
                              decode_binding(bind_stream_and_4_buffers().Arg<ffi::AnyBuffer>()),
                              {ffi::Traits::kCmdBufferCompatible});
