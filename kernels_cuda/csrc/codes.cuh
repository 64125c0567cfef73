// What the 4-bit kernels share about codes and scales beyond common.cuh: the three code kinds,
// fp8 scale storage (NVFP4's e4m3 block scales, MX's e8m0 exponents), and the 16-entry codebook
// lookup by byte permutes (NF4, bitsandbytes FP4, IQ4_NL / IQ4_XS, fp4 e2m1).
#pragma once

#include <cuda_fp8.h>

#include <type_traits>

#include "common.cuh"

namespace jquant {

// How a code becomes a value: w = (v - z) * s (kInt), v * s - z (kFloatZero), table[v] * s (kCodebook).
enum Kind : int { kInt = 0, kFloatZero = 1, kCodebook = 2 };
// Scale storage: the 16/32-bit floats, or fp8 bytes (NVFP4's e4m3 block scales, MX's e8m0 exponents).
enum class ScaleType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kE4M3 = 3, kE8M0 = 4 };

// fp8 scale storage, read as bytes.
struct E4M3 {
  uint8_t bits;
};
struct E8M0 {
  uint8_t bits;
};

template <typename ST>
__device__ __forceinline__ ST load_scale(const ST* p) {
  if constexpr (std::is_same_v<ST, E4M3> || std::is_same_v<ST, E8M0>)
    return ST{__ldg(reinterpret_cast<const uint8_t*>(p))};
  else
    return __ldg(p);
}
__device__ __forceinline__ float to_float(E4M3 v) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(v.bits, __NV_E4M3)));
}
// e8m0 = 2^(bits - 127); bits 0 is the f32 subnormal 2^-127 (0xFF, NaN, is refused at load).
__device__ __forceinline__ float to_float(E8M0 v) {
  return __uint_as_float(v.bits ? static_cast<uint32_t>(v.bits) << 23 : 0x00400000u);
}

// The 16 table entries as 16-bit float bits, split into byte planes for PRMT:
// t[0], t[1]: low bytes of entries 0..7; t[2], t[3]: low bytes of 8..15; t[4..7]: the high bytes.
struct Codebook {
  uint32_t t[8];
};

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Eight codes (word w, low nibble first) -> four pairs of 16-bit table values in natural order:
// p[0] = (c0, c1), p[1] = (c2, c3), p[2] = (c4, c5), p[3] = (c6, c7) (low half first).
// PRMT picks 4 bytes out of 8 by 3-bit selectors (the selector nibble's bit 3 would switch on sign
// replication, so it is masked off): one permute looks up 4 codes in one half-table byte plane,
// a third merges the two half-tables by each code's bit 3 (selector i + 4 * bit3), and the low and
// high byte planes are interleaved into 16-bit values. 22 integer instructions per 8 codes.
__device__ __forceinline__ void codebook_pairs(uint32_t w, const Codebook& cb, uint32_t (&p)[4]) {
  const uint32_t sel = w & 0x77777777u;
  const uint32_t upper = (w >> 1) & 0x44444444u;  // code bit 3 -> +4 in its nibble
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t s = half ? sel >> 16 : sel;
    const uint32_t mix = (half ? upper >> 16 : upper) | 0x3210u;
    const uint32_t lo = prmt(prmt(cb.t[0], cb.t[1], s), prmt(cb.t[2], cb.t[3], s), mix);
    const uint32_t hi = prmt(prmt(cb.t[4], cb.t[5], s), prmt(cb.t[6], cb.t[7], s), mix);
    p[2 * half] = prmt(lo, hi, 0x5140u);
    p[2 * half + 1] = prmt(lo, hi, 0x7362u);
  }
}

// The four 16-bit value pairs of one code word w, in the order the mma A fragments take them
// ([a0 (h = 0), a2 (h = 0), a0 (h = 1), a2 (h = 1)]): raw (MAGIC + q) pairs (8i, 8i + 4), ... for
// integer kinds (`magic_pair`), table values in natural pairs for codebooks (`codebook_pairs`).
template <typename T, int KIND>
__device__ __forceinline__ void raw_pairs(uint32_t w, const Codebook& cb, uint32_t (&p)[4]) {
  if constexpr (KIND == kCodebook) {
    codebook_pairs(w, cb, p);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = magic_pair<T>(w, 4 * e);
  }
}

// `raw_pairs` -> weights, two per instruction, rounded once to T: (v - z) * s for kInt (z2 = MAGIC +
// zero + bias: the subtraction is exact), (v - MAGIC - bias) * s - zero for kFloatZero (z2 = -zero,
// mb2 = MAGIC + bias), table[q] * s for kCodebook.
template <typename T, int KIND>
__device__ __forceinline__ void dequant_pairs(uint32_t (&p)[4], typename Half2Traits<T>::T2 s2,
                                              typename Half2Traits<T>::T2 z2, typename Half2Traits<T>::T2 mb2) {
  using T2 = typename Half2Traits<T>::T2;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    T2 v = *reinterpret_cast<T2*>(&p[e]);
    if constexpr (KIND == kInt)
      v = __hmul2(__hsub2(v, z2), s2);
    else if constexpr (KIND == kFloatZero)
      v = __hfma2(__hsub2(v, mb2), s2, z2);
    else
      v = __hmul2(v, s2);
    p[e] = *reinterpret_cast<uint32_t*>(&v);
  }
}

// The handlers' codebook attributes: entry bits two words per int64 (word 2i low, 2i + 1 high).
inline Codebook unpack_codebook(int64_t cb0, int64_t cb1, int64_t cb2, int64_t cb3) {
  const int64_t w[4] = {cb0, cb1, cb2, cb3};
  Codebook cb{};
  for (int i = 0; i < 4; ++i) {
    cb.t[2 * i] = static_cast<uint32_t>(static_cast<uint64_t>(w[i]) & 0xFFFFFFFFu);
    cb.t[2 * i + 1] = static_cast<uint32_t>(static_cast<uint64_t>(w[i]) >> 32);
  }
  return cb;
}

}  // namespace jquant
