// jquant CPU qmatmul: y[M, N] = x[M, K] @ dequantize(w)[N, K]^T in f32, reading the canonical QArray as stored.
//
// Weight (per-row groups, block (1, G)):  w[n, j] = v(code[n, j]) * s[n, j/G] + c[n, j/G]
//   v: 4-bit codes through a 16-entry f32 table (int codes minus bias, or a codebook: NF4, IQ4_NL, ...);
//      8-bit codes as (int)code - bias (uint8 unsigned or int8 two's complement storage).
//   c: 0 (no zero), -z*s (uint8 integer zero points: (v - z)*s), or -z (float zeros: v*s - z).
// 4-bit packing: element 2i in the low nibble of byte i of the row (jquant.core.packing).
//
// Two kernel families, f32 activations and f32 accumulation, nothing materialized or repacked:
// * decode (M <= 2, groups of 32k columns): factored, x.w = sum_g s_g * (v_g . x_g) + c_g * sum(x_g):
//   raw codes converted to f32 (or looked up in the table for codebooks) meet x directly, the scale is
//   applied once per group and the offsets through per-call group sums of x (integer biases fold in).
// * tiled (any M, and groups of 16 for 8-bit codes): the weight dequantized in registers with the
//   spec's formula (one FMA per value) and reused by up to 8 (AVX-512) / 4 (AVX2) activation rows.
// Both differ from the spec only by f32 rounding (summation order, factoring), well inside the
// suite's sqrt(K)-scaled tolerance. For 4-bit codes the activations are de-interleaved once per call
// (per 32-column block: even columns, then odd ones) so that the low and high nibbles of 16 bytes
// meet 16 contiguous activations each.
//
// Threads: row chunks are taken from an atomic counter by the calling thread and by the helpers of a
// small persistent pool (`Pool`: they spin 200 us after a job, then sleep; XLA's own FFI thread pool
// wakes a sleeping thread per call, which cost more than a decode call on the 2-core machine measured).
// The caller waits only for chunks that were taken, so helpers that start late find nothing to do
// (never a deadlock), and a second call arriving while one is in flight runs on its caller alone.
// Every output row is computed by one thread with the same code: results do not depend on threads.
//
// ISA: AVX-512 (F+BW+VL), AVX2+FMA+F16C, or portable scalar code, picked at load time from the CPU
// (cpuid), overridable with JQUANT_CPU_ISA=avx512|avx2|scalar or jquant_cpu_set_isa(). The library is
// compiled without -march: each path is a function with its own target attribute.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define JQ_X86 1
#else
#define JQ_X86 0
#endif

// JQ_NO_FFI: the library without the XLA FFI handler (no jaxlib headers needed), for the Torch bridge,
// which calls the plain C entry point jquant_cpu_qmatmul_raw through ctypes.
#ifndef JQ_NO_FFI
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
#endif

namespace {

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kU8 = 3, kNone = 4 };

int detect_isa() {
#if JQ_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

int initial_isa() {
  int best = detect_isa();
  const char* e = std::getenv("JQUANT_CPU_ISA");
  if (e == nullptr || *e == 0) return best;
  std::string s(e);
  int want = s == "avx512" ? kAvx512 : s == "avx2" ? kAvx2 : kScalar;
  return std::min(want, best);  // never run instructions the CPU lacks
}

std::atomic<int> g_isa{initial_isa()};
std::atomic<int> g_threads{[] {
  const char* e = std::getenv("JQUANT_CPU_THREADS");
  return e ? std::atoi(e) : 0;
}()};

// Opt-in int8 activations (JQUANT_CPU_ACT=int8 / jquant_cpu_set_act(1)); see rowsq_avx512. Only where the
// CPU has AVX-512 VNNI.
bool has_vnni() {
#if JQ_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") && detect_isa() == kAvx512;
#else
  return false;
#endif
}
std::atomic<int> g_act_int8{[] {
  const char* e = std::getenv("JQUANT_CPU_ACT");
  return e != nullptr && std::string(e) == "int8" && has_vnni() ? 1 : 0;
}()};

// ---- scalar conversions ---------------------------------------------------------------------------
inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        man <<= 1;
        ++e;
      } while ((man & 0x400) == 0);
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// One row's group scales and offsets as f32: s[g], c[g] (w = v*s + c).
void row_scale_offset(const void* scale, int sdt, const void* zero, int zdt, int64_t row, int64_t ng, float* s,
                      float* c) {
  const int64_t o = row * ng;
  switch (sdt) {
    case kF32:
      std::memcpy(s, (const float*)scale + o, ng * 4);
      break;
    case kF16: {
      const uint16_t* p = (const uint16_t*)scale + o;
      for (int64_t g = 0; g < ng; ++g) s[g] = half_to_float(p[g]);
      break;
    }
    default: {
      const uint16_t* p = (const uint16_t*)scale + o;
      for (int64_t g = 0; g < ng; ++g) s[g] = bf16_to_float(p[g]);
    }
  }
  switch (zdt) {
    case kNone:
      for (int64_t g = 0; g < ng; ++g) c[g] = 0.f;
      break;
    case kU8: {
      const uint8_t* p = (const uint8_t*)zero + o;
      for (int64_t g = 0; g < ng; ++g) c[g] = -(float)p[g] * s[g];
      break;
    }
    case kF32: {
      const float* p = (const float*)zero + o;
      for (int64_t g = 0; g < ng; ++g) c[g] = -p[g];
      break;
    }
    case kF16: {
      const uint16_t* p = (const uint16_t*)zero + o;
      for (int64_t g = 0; g < ng; ++g) c[g] = -half_to_float(p[g]);
      break;
    }
    default: {
      const uint16_t* p = (const uint16_t*)zero + o;
      for (int64_t g = 0; g < ng; ++g) c[g] = -bf16_to_float(p[g]);
    }
  }
}

struct Problem {
  const float* x;      // [M, K] (4-bit: de-interleaved per 32-column block)
  const uint8_t* w;    // [N, K*bits/8]
  const void* scale;   // [N, ng]
  const void* zero;    // [N, ng] or null
  const float* table;  // [16] (4-bit)
  float* y;            // [M, N]
  const float* xsum;   // [M, ng]: sums of x over each group (factored kernels)
  float tbias;         // 4-bit codes with an affine table (table[i] = i - tbias): the bias; else NAN
  int64_t m, n, k, group, ng;
  int bits, bias, is_signed, sdt, zdt;
  const int8_t* xq;    // int8 activations (opt-in, see rowsq_avx512) [M, K] in pair order, else null
  const float* dx;     // their per-32-block scales [M, K/32]
};

// Per-row scale / offset of every sub-block of `unit` columns (32 for 4-bit codes, 16 for 8-bit ones),
// expanded from the row's groups in place (back to front: sub-block b reads group b*unit/G <= b).
inline void expand_groups(const Problem& p, int unit, float* s, float* c) {
  const int64_t nb = p.k / unit;
  if (p.group == unit) return;
  for (int64_t b = nb - 1; b >= 0; --b) {
    const int64_t g = b * unit / p.group;
    s[b] = s[g], c[b] = c[g];
  }
}

inline int unit_of(const Problem& p) { return p.bits == 4 ? 32 : 16; }

// ---- scalar ------------------------------------------------------------------------------------------
void rows_scalar(const Problem& p, int64_t r0, int64_t r1, int64_t, float* s, float* c) {
  const int64_t rb = p.k * p.bits / 8;
  const int unit = unit_of(p);
  for (int64_t n = r0; n < r1; ++n) {
    row_scale_offset(p.scale, p.sdt, p.zero, p.zdt, n, p.ng, s, c);
    expand_groups(p, unit, s, c);
    const uint8_t* d = p.w + n * rb;
    for (int64_t m = 0; m < p.m; ++m) {
      const float* x = p.x + m * p.k;
      float acc = 0.f;
      for (int64_t j = 0; j < p.k; ++j) {
        float v;
        if (p.bits == 4) {
          v = p.table[(d[j >> 1] >> ((j & 1) * 4)) & 15];
        } else {
          v = (float)((p.is_signed ? (int)(int8_t)d[j] : (int)d[j]) - p.bias);
        }
        const int64_t b = j / unit;
        // 4-bit: x is de-interleaved per 32-column block (even columns, then odd ones)
        const int64_t xj = p.bits == 4 ? (j & ~int64_t(31)) + (j & 1) * 16 + ((j & 31) >> 1) : j;
        acc += std::fma(v, s[b], c[b]) * x[xj];
      }
      p.y[m * p.n + n] = acc;
    }
  }
}

#if JQ_X86
// ---- AVX-512 -----------------------------------------------------------------------------------------
#define JQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

JQ_AVX512 inline __m512 load16_f32(const void* base, int dt, int64_t i, __mmask16 mk) {
  switch (dt) {
    case kF32: return _mm512_maskz_loadu_ps(mk, (const float*)base + i);
    case kF16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t*)base + i));
    case kBF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const uint16_t*)base + i)), 16));
    default: return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, (const uint8_t*)base + i)));
  }
}

// s[b], c[b] of row n for every sub-block b (w = v*s + c).
JQ_AVX512 inline void row_sc_avx512(const Problem& p, int64_t n, int unit, float* s, float* c) {
  const int64_t o = n * p.ng;
  for (int64_t g = 0; g < p.ng; g += 16) {
    const __mmask16 mk = (__mmask16)((p.ng - g >= 16) ? 0xffff : ((1u << (p.ng - g)) - 1));
    const __m512 sv = load16_f32(p.scale, p.sdt, o + g, mk);
    __m512 cv = _mm512_setzero_ps();
    if (p.zdt == kU8) {
      cv = _mm512_sub_ps(cv, _mm512_mul_ps(load16_f32(p.zero, kU8, o + g, mk), sv));
    } else if (p.zdt != kNone) {
      cv = _mm512_sub_ps(cv, load16_f32(p.zero, p.zdt, o + g, mk));
    }
    _mm512_mask_storeu_ps(s + g, mk, sv);
    _mm512_mask_storeu_ps(c + g, mk, cv);
  }
  expand_groups(p, unit, s, c);
}

template <int MT>
JQ_AVX512 void rows4_avx512(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const int64_t rb = p.k / 2, nb = p.k / 32;
  const __m512 tab = _mm512_loadu_ps(p.table);
  constexpr int A = MT == 1 ? 2 : 1;  // independent accumulator pairs per activation row
  for (int64_t n = r0; n < r1; ++n) {
    row_sc_avx512(p, n, 32, s, c);
    const uint8_t* d = p.w + n * rb;
    __m512 acc[MT][2 * A];
    for (int i = 0; i < MT; ++i)
      for (int a = 0; a < 2 * A; ++a) acc[i][a] = _mm512_setzero_ps();
    const float* x0 = p.x + m0 * p.k;
    int64_t b = 0;
    for (; b + A <= nb; b += A) {
      for (int u = 0; u < A; ++u) {
        const int64_t j = (b + u) * 32;
        const __m512 sv = _mm512_set1_ps(s[b + u]), cv = _mm512_set1_ps(c[b + u]);
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(d + j / 2)));
        const __m512 wl = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, tab), sv, cv);  // reads bits 0..3 of q
        const __m512 wh = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab), sv, cv);
        for (int i = 0; i < MT; ++i) {
          acc[i][2 * u] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(x0 + i * p.k + j), acc[i][2 * u]);
          acc[i][2 * u + 1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(x0 + i * p.k + j + 16), acc[i][2 * u + 1]);
        }
      }
    }
    for (; b < nb; ++b) {
      const int64_t j = b * 32;
      const __m512 sv = _mm512_set1_ps(s[b]), cv = _mm512_set1_ps(c[b]);
      const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(d + j / 2)));
      const __m512 wl = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, tab), sv, cv);
      const __m512 wh = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab), sv, cv);
      for (int i = 0; i < MT; ++i) {
        acc[i][0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(x0 + i * p.k + j), acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(x0 + i * p.k + j + 16), acc[i][1]);
      }
    }
    for (int i = 0; i < MT; ++i) {
      __m512 t = _mm512_add_ps(acc[i][0], acc[i][1]);
      if (A == 2) t = _mm512_add_ps(t, _mm512_add_ps(acc[i][2 * A - 2], acc[i][2 * A - 1]));
      p.y[(m0 + i) * p.n + n] = _mm512_reduce_add_ps(t);
    }
  }
}

template <int MT>
JQ_AVX512 void rows8_avx512(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const __m512i bias = _mm512_set1_epi32(p.bias);
  const int64_t nb = p.k / 16;
  for (int64_t n = r0; n < r1; ++n) {
    row_sc_avx512(p, n, 16, s, c);
    const uint8_t* d = p.w + n * p.k;
    __m512 acc[MT][2];
    for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    const float* x0 = p.x + m0 * p.k;
    for (int64_t b = 0; b < nb; b += 2) {  // K is a multiple of 32: sub-blocks come in pairs
      for (int u = 0; u < 2; ++u) {
        const int64_t j = (b + u) * 16;
        const __m128i raw = _mm_loadu_si128((const __m128i*)(d + j));
        const __m512i q = p.is_signed ? _mm512_cvtepi8_epi32(raw) : _mm512_cvtepu8_epi32(raw);
        const __m512 w =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(q, bias)), _mm512_set1_ps(s[b + u]), _mm512_set1_ps(c[b + u]));
        for (int i = 0; i < MT; ++i) acc[i][u] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x0 + i * p.k + j), acc[i][u]);
      }
    }
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
  }
}

// Factored decode kernels (M <= 2): w = v*s + c per group g, so x.w = sum_g s_g * (v_g . x_g) + c_g * sum(x_g).
// The code part v . x runs on raw codes (an integer bias folds into the offset), and the scale is applied
// once per group instead of once per weight. Each output differs from the spec by f32 rounding only.

// Row scales and offsets of the row's groups (no expansion), like row_sc_avx512.
JQ_AVX512 inline void row_groups_avx512(const Problem& p, int64_t n, float* s, float* c) {
  const int64_t o = n * p.ng;
  for (int64_t g = 0; g < p.ng; g += 16) {
    const __mmask16 mk = (__mmask16)((p.ng - g >= 16) ? 0xffff : ((1u << (p.ng - g)) - 1));
    const __m512 sv = load16_f32(p.scale, p.sdt, o + g, mk);
    __m512 cv = _mm512_setzero_ps();
    if (p.zdt == kU8) {
      cv = _mm512_sub_ps(cv, _mm512_mul_ps(load16_f32(p.zero, kU8, o + g, mk), sv));
    } else if (p.zdt != kNone) {
      cv = _mm512_sub_ps(cv, load16_f32(p.zero, p.zdt, o + g, mk));
    }
    _mm512_mask_storeu_ps(s + g, mk, sv);
    _mm512_mask_storeu_ps(c + g, mk, cv);
  }
}

// Per activation row i: a 16-lane partial of sum_g (c_g - bias*s_g) * sum(x_g), added to the accumulators.
JQ_AVX512 inline void row_corr_avx512(const Problem& p, const float* s, const float* c, float bias, int64_t m0,
                                      int mt, __m512* corr) {
  const __m512 bv = _mm512_set1_ps(bias);
  for (int i = 0; i < mt; ++i) {
    const float* xs = p.xsum + (m0 + i) * p.ng;
    __m512 a = _mm512_setzero_ps();
    for (int64_t g = 0; g < p.ng; g += 16) {
      const __mmask16 mk = (__mmask16)((p.ng - g >= 16) ? 0xffff : ((1u << (p.ng - g)) - 1));
      const __m512 off = _mm512_fnmadd_ps(bv, _mm512_maskz_loadu_ps(mk, s + g), _mm512_maskz_loadu_ps(mk, c + g));
      a = _mm512_fmadd_ps(off, _mm512_maskz_loadu_ps(mk, xs + g), a);
    }
    corr[i] = a;
  }
}

// v . x of one 32-column block of 4-bit codes (x de-interleaved), added to t.
template <bool AFFINE>
JQ_AVX512 inline __m512 dot32_4bit(const uint8_t* d, const float* x, __m512 tab, __m512 t) {
  const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)d));
  __m512 vl, vh;
  if (AFFINE) {
    vl = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(15)));
    vh = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
  } else {
    vl = _mm512_permutexvar_ps(q, tab);  // reads bits 0..3 of q
    vh = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab);
  }
  return _mm512_fmadd_ps(vh, _mm512_loadu_ps(x + 16), _mm512_fmadd_ps(vl, _mm512_loadu_ps(x), t));
}

// v . x of one 32-column block of 8-bit codes, added to t.
JQ_AVX512 inline __m512 dot32_8bit(const uint8_t* d, const float* x, bool is_signed, __m512 t) {
  const __m128i r0 = _mm_loadu_si128((const __m128i*)d), r1 = _mm_loadu_si128((const __m128i*)(d + 16));
  const __m512 v0 = _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(r0) : _mm512_cvtepu8_epi32(r0));
  const __m512 v1 = _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(r1) : _mm512_cvtepu8_epi32(r1));
  return _mm512_fmadd_ps(v1, _mm512_loadu_ps(x + 16), _mm512_fmadd_ps(v0, _mm512_loadu_ps(x), t));
}

// One group of the factored kernel: t = v . x over its 32-column blocks, then acc[i][a] += t * s_g.
template <int MT, int BITS, bool AFFINE>
JQ_AVX512 __attribute__((always_inline)) inline void group_dot(const Problem& p, const uint8_t* d, const float* x0,
                                                               __m512 tab, const float* s, int64_t g,
                                                               __m512 (&acc)[MT][2], int a) {
  const int64_t j0 = g * p.group, j1 = std::min(p.k, j0 + p.group);
  __m512 t[MT];
  for (int i = 0; i < MT; ++i) t[i] = _mm512_setzero_ps();
  for (int64_t j = j0; j < j1; j += 32)
    for (int i = 0; i < MT; ++i)
      t[i] = BITS == 4 ? dot32_4bit<AFFINE>(d + j / 2, x0 + i * p.k + j, tab, t[i])
                       : dot32_8bit(d + j, x0 + i * p.k + j, p.is_signed, t[i]);
  const __m512 sv = _mm512_set1_ps(s[g]);
  for (int i = 0; i < MT; ++i) acc[i][a] = _mm512_fmadd_ps(t[i], sv, acc[i][a]);
}

// BITS: 4 or 8; AFFINE: 4-bit table is code - bias (integer codes: convert instead of a table lookup).
// The group is a multiple of 32 here (the 8-bit group-of-16 case takes the direct kernel).
template <int MT, int BITS, bool AFFINE>
JQ_AVX512 void rowsf_avx512(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const int64_t rb = p.k * BITS / 8;
  const __m512 tab = _mm512_loadu_ps(p.table);
  const float bias = BITS == 8 ? (float)p.bias : AFFINE ? p.tbias : 0.f;
  for (int64_t n = r0; n < r1; ++n) {
    row_groups_avx512(p, n, s, c);
    __m512 acc[MT][2], corr[MT];
    row_corr_avx512(p, s, c, bias, m0, MT, corr);
    for (int i = 0; i < MT; ++i) acc[i][0] = _mm512_setzero_ps(), acc[i][1] = corr[i];
    const uint8_t* d = p.w + n * rb;
    const float* x0 = p.x + m0 * p.k;
    int64_t g = 0;
    for (; g + 2 <= p.ng; g += 2) {  // two accumulator chains
      group_dot<MT, BITS, AFFINE>(p, d, x0, tab, s, g, acc, 0);
      group_dot<MT, BITS, AFFINE>(p, d, x0, tab, s, g + 1, acc, 1);
    }
    if (g < p.ng) group_dot<MT, BITS, AFFINE>(p, d, x0, tab, s, g, acc, 0);
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
  }
}

// ---- int8 activations (opt-in), AVX-512 VNNI ------------------------------------------------------------
// llama.cpp's scheme (ggml-cpu's Q4_0 x Q8_0 / Q4_1 x Q8_1 dot products): each 32-column block b of x is
// quantized to int8, xq = round(x / dx_b), dx_b = max|x_b| / 127, and the codes meet xq with vpdpbusd
// (u8 x s8 -> s32, 64 products per instruction). The result is x^ @ dequantize(w).T for x^ = dx * xq (the
// block sums in the offset term are x^'s too), up to f32 rounding: NOT the spec's f32 function (the
// activations lose ~8 bits), hence opt-in. Decode only (M <= 2), groups of 32k columns, integer codes
// (affine 4-bit tables, int8 / uint8 with a bias), AVX-512 VNNI. Blocks go in pairs (64 codes per
// vpdpbusd); xq is laid out per pair to match the codes' register order (see quantize_x).
#define JQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

template <int MT, int BITS>
JQ_VNNI void rowsq_avx512(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const int64_t rb = p.k * BITS / 8, nb = p.k / 32;
  const int flip = BITS == 8 && p.is_signed;  // int8 codes: code ^ 0x80 = code + 128 as u8, bias 128
  const float bias = BITS == 8 ? (flip ? 128.f : (float)p.bias) : p.tbias;
  // lanes of a pair's 16 s32 sums -> block (0: first, 1: second) of the pair
  const __m512i idx = BITS == 4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1)
                                : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i m4 = _mm512_set1_epi8(15), f8 = _mm512_set1_epi8((char)0x80);
  for (int64_t n = r0; n < r1; ++n) {
    row_groups_avx512(p, n, s, c);
    __m512 acc[MT], corr[MT];
    row_corr_avx512(p, s, c, bias, m0, MT, corr);
    for (int i = 0; i < MT; ++i) acc[i] = corr[i];
    // ws[i][b] = s_{g(b)} * dx_b (c is free now: the offsets are in corr)
    const int64_t per = p.group / 32;  // blocks per group
    for (int i = 0; i < MT; ++i) {
      const float* dx = p.dx + (m0 + i) * nb;
      float* ws = c + i * nb;
      if (per == 1) {  // GGUF: one block per group, 16 at a time
        for (int64_t b = 0; b < nb; b += 16) {
          const __mmask16 mk = (__mmask16)((nb - b >= 16) ? 0xffff : ((1u << (nb - b)) - 1));
          _mm512_mask_storeu_ps(ws + b, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, s + b), _mm512_maskz_loadu_ps(mk, dx + b)));
        }
      } else {
        for (int64_t g = 0, b = 0; b < nb; ++g)
          for (int64_t u = 0; u < per && b < nb; ++u, ++b) ws[b] = s[g] * dx[b];
      }
    }
    const uint8_t* d = p.w + n * rb;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      __m512i q;
      if (BITS == 4) {
        const __m256i raw = _mm256_loadu_si256((const __m256i*)(d + b * 16));
        const __m512i r = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
        q = _mm512_and_si512(r, m4);  // [b even | b+1 even | b odd | b+1 odd]
      } else {
        q = _mm512_loadu_si512((const void*)(d + b * 32));
        if (flip) q = _mm512_xor_si512(q, f8);
      }
      for (int i = 0; i < MT; ++i) {
        const __m512i xv = _mm512_loadu_si512((const void*)(p.xq + (m0 + i) * p.k + b * 32));
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xv);
        const __m512 sv = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double*)(c + i * nb + b)))));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sv, acc[i]);
      }
    }
    if (b < nb) {  // odd block count: the last block alone (256-bit)
      __m256i q;
      if (BITS == 4) {
        const __m128i raw = _mm_loadu_si128((const __m128i*)(d + b * 16));
        q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
      } else {
        q = _mm256_loadu_si256((const __m256i*)(d + b * 32));
        if (flip) q = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
      }
      for (int i = 0; i < MT; ++i) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(p.xq + (m0 + i) * p.k + b * 32));
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xv);
        const __m512 f = _mm512_cvtepi32_ps(_mm512_zextsi256_si512(dot));
        acc[i] = _mm512_fmadd_ps(f, _mm512_set1_ps(c[i * nb + b]), acc[i]);
      }
    }
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = _mm512_reduce_add_ps(acc[i]);
  }
}

// ---- AVX2 --------------------------------------------------------------------------------------------
#define JQ_AVX2 __attribute__((target("avx2,fma,f16c")))

JQ_AVX2 inline float hsum256(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

JQ_AVX2 inline __m256 lookup16(__m256i idx, __m256 tlo, __m256 thi) {
  const __m256 lo = _mm256_permutevar8x32_ps(tlo, idx), hi = _mm256_permutevar8x32_ps(thi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign bit
}

template <int MT>
JQ_AVX2 void rows4_avx2(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const int64_t rb = p.k / 2, nb = p.k / 32;
  const __m256 tlo = _mm256_loadu_ps(p.table), thi = _mm256_loadu_ps(p.table + 8);
  const __m128i lowmask = _mm_set1_epi8(15);
  for (int64_t n = r0; n < r1; ++n) {
    row_scale_offset(p.scale, p.sdt, p.zero, p.zdt, n, p.ng, s, c);
    expand_groups(p, 32, s, c);
    const uint8_t* d = p.w + n * rb;
    __m256 acc[MT][2];
    for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float* x0 = p.x + m0 * p.k;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t j = b * 32;
      const __m256 sv = _mm256_set1_ps(s[b]), cv = _mm256_set1_ps(c[b]);
      const __m128i raw = _mm_loadu_si128((const __m128i*)(d + j / 2));
      const __m128i lo = _mm_and_si128(raw, lowmask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), lowmask);
      const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
      for (int t = 0; t < 4; ++t) {
        const __m256 w = _mm256_fmadd_ps(lookup16(_mm256_cvtepu8_epi32(parts[t]), tlo, thi), sv, cv);
        for (int i = 0; i < MT; ++i)
          acc[i][t & 1] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + i * p.k + j + 8 * t), acc[i][t & 1]);
      }
    }
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = hsum256(_mm256_add_ps(acc[i][0], acc[i][1]));
  }
}

template <int MT>
JQ_AVX2 void rows8_avx2(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const __m256i bias = _mm256_set1_epi32(p.bias);
  const int64_t nb = p.k / 16;
  for (int64_t n = r0; n < r1; ++n) {
    row_scale_offset(p.scale, p.sdt, p.zero, p.zdt, n, p.ng, s, c);
    expand_groups(p, 16, s, c);
    const uint8_t* d = p.w + n * p.k;
    __m256 acc[MT][2];
    for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const float* x0 = p.x + m0 * p.k;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t j = b * 16;
      const __m256 sv = _mm256_set1_ps(s[b]), cv = _mm256_set1_ps(c[b]);
      const __m128i raw = _mm_loadu_si128((const __m128i*)(d + j));
      const __m128i parts[2] = {raw, _mm_srli_si128(raw, 8)};
      for (int t = 0; t < 2; ++t) {
        const __m256i q = p.is_signed ? _mm256_cvtepi8_epi32(parts[t]) : _mm256_cvtepu8_epi32(parts[t]);
        const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias)), sv, cv);
        for (int i = 0; i < MT; ++i)
          acc[i][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + i * p.k + j + 8 * t), acc[i][t]);
      }
    }
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = hsum256(_mm256_add_ps(acc[i][0], acc[i][1]));
  }
}
// Factored decode kernels for AVX2 (see the AVX-512 ones): groups of 32-column blocks, scale per group.
JQ_AVX2 inline void row_groups_avx2(const Problem& p, int64_t n, float* s, float* c) {
  const int64_t o = n * p.ng;
  if (p.sdt == kF16 && (p.zdt == kF16 || p.zdt == kNone)) {  // GGUF's common case, with F16C
    int64_t g = 0;
    for (; g + 8 <= p.ng; g += 8) {
      _mm256_storeu_ps(s + g, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)p.scale + o + g))));
      const __m256 z = p.zdt == kNone ? _mm256_setzero_ps()
                                      : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)p.zero + o + g)));
      _mm256_storeu_ps(c + g, _mm256_sub_ps(_mm256_setzero_ps(), z));
    }
    for (; g < p.ng; ++g) {
      s[g] = half_to_float(((const uint16_t*)p.scale)[o + g]);
      c[g] = p.zdt == kNone ? 0.f : -half_to_float(((const uint16_t*)p.zero)[o + g]);
    }
    return;
  }
  row_scale_offset(p.scale, p.sdt, p.zero, p.zdt, n, p.ng, s, c);
}

template <int MT, int BITS, bool AFFINE>
JQ_AVX2 void rowsf_avx2(const Problem& p, int64_t r0, int64_t r1, int64_t m0, float* s, float* c) {
  const int64_t rb = p.k * BITS / 8;
  const __m256 tlo = _mm256_loadu_ps(p.table), thi = _mm256_loadu_ps(p.table + 8);
  const __m128i lowmask = _mm_set1_epi8(15);
  const float bias = BITS == 8 ? (float)p.bias : AFFINE ? p.tbias : 0.f;
  for (int64_t n = r0; n < r1; ++n) {
    row_groups_avx2(p, n, s, c);
    float corr[MT];
    for (int i = 0; i < MT; ++i) {
      const float* xs = p.xsum + (m0 + i) * p.ng;
      float a = 0.f;
      for (int64_t g = 0; g < p.ng; ++g) a += (c[g] - bias * s[g]) * xs[g];
      corr[i] = a;
    }
    const uint8_t* d = p.w + n * rb;
    const float* x0 = p.x + m0 * p.k;
    __m256 acc[MT][2];
    for (int i = 0; i < MT; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < p.ng; ++g) {
      const int64_t j0 = g * p.group, j1 = std::min(p.k, j0 + p.group);
      __m256 t[MT][2];
      for (int i = 0; i < MT; ++i) t[i][0] = t[i][1] = _mm256_setzero_ps();
      for (int64_t j = j0; j < j1; j += 32) {
        __m256 v[4];
        if (BITS == 4) {
          const __m128i raw = _mm_loadu_si128((const __m128i*)(d + j / 2));
          const __m128i lo = _mm_and_si128(raw, lowmask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), lowmask);
          const __m256i q[4] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                                _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
          for (int u = 0; u < 4; ++u) v[u] = AFFINE ? _mm256_cvtepi32_ps(q[u]) : lookup16(q[u], tlo, thi);
        } else {
          for (int u = 0; u < 4; ++u) {
            const __m128i raw = _mm_loadl_epi64((const __m128i*)(d + j + 8 * u));
            v[u] = _mm256_cvtepi32_ps(p.is_signed ? _mm256_cvtepi8_epi32(raw) : _mm256_cvtepu8_epi32(raw));
          }
        }
        for (int i = 0; i < MT; ++i) {
          const float* x = x0 + i * p.k + j;
          t[i][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(x), t[i][0]);
          t[i][1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + 8), t[i][1]);
          t[i][0] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(x + 16), t[i][0]);
          t[i][1] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + 24), t[i][1]);
        }
      }
      const __m256 sv = _mm256_set1_ps(s[g]);
      for (int i = 0; i < MT; ++i) {
        acc[i][0] = _mm256_fmadd_ps(t[i][0], sv, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(t[i][1], sv, acc[i][1]);
      }
    }
    for (int i = 0; i < MT; ++i) p.y[(m0 + i) * p.n + n] = hsum256(_mm256_add_ps(acc[i][0], acc[i][1])) + corr[i];
  }
}
#endif  // JQ_X86

using RowsFn = void (*)(const Problem&, int64_t, int64_t, int64_t, float*, float*);

#if JQ_X86
template <int MT>
struct R4x512 {
  static constexpr RowsFn f = rows4_avx512<MT>;
};
template <int MT>
struct R8x512 {
  static constexpr RowsFn f = rows8_avx512<MT>;
};
template <int MT>
struct R4x2 {
  static constexpr RowsFn f = rows4_avx2<MT>;
};
template <int MT>
struct R8x2 {
  static constexpr RowsFn f = rows8_avx2<MT>;
};
#endif

// Tile heights: AVX-512 keeps 2*MT accumulators in its 32 registers up to MT = 8; AVX2 (16 registers) to 4.
template <template <int> class R>
RowsFn tile_fn(int mt) {
  switch (mt) {
    case 1: return R<1>::f;
    case 2: return R<2>::f;
    case 3: return R<3>::f;
    case 4: return R<4>::f;
    case 5: return R<5>::f;
    case 6: return R<6>::f;
    case 7: return R<7>::f;
    default: return R<8>::f;
  }
}

int max_tile(int isa) { return isa == kAvx512 ? 8 : 4; }

RowsFn pick(int isa, int bits, int mt, bool affine = false, bool factored = false) {
#if JQ_X86
  if (isa == kAvx512 && mt <= 2 && factored) {  // decode: the factored kernels
    if (bits == 8) return mt == 1 ? rowsf_avx512<1, 8, false> : rowsf_avx512<2, 8, false>;
    if (affine) return mt == 1 ? rowsf_avx512<1, 4, true> : rowsf_avx512<2, 4, true>;
    return mt == 1 ? rowsf_avx512<1, 4, false> : rowsf_avx512<2, 4, false>;
  }
  if (isa == kAvx512) return bits == 4 ? tile_fn<R4x512>(mt) : tile_fn<R8x512>(mt);
  if (isa == kAvx2 && mt <= 2 && factored) {
    if (bits == 8) return mt == 1 ? rowsf_avx2<1, 8, false> : rowsf_avx2<2, 8, false>;
    if (affine) return mt == 1 ? rowsf_avx2<1, 4, true> : rowsf_avx2<2, 4, true>;
    return mt == 1 ? rowsf_avx2<1, 4, false> : rowsf_avx2<2, 4, false>;
  }
  if (isa == kAvx2) return bits == 4 ? tile_fn<R4x2>(std::min(mt, 4)) : tile_fn<R8x2>(std::min(mt, 4));
#endif
  return nullptr;
}

// Rows [r0, r1) for every activation row.
void run_rows(const Problem& p, int isa, int64_t r0, int64_t r1, float* s, float* c) {
#if JQ_X86
  if (p.xq != nullptr) {  // int8 activations (run_problem checked the conditions)
    if (p.bits == 4) return (p.m == 1 ? rowsq_avx512<1, 4> : rowsq_avx512<2, 4>)(p, r0, r1, 0, s, c);
    return (p.m == 1 ? rowsq_avx512<1, 8> : rowsq_avx512<2, 8>)(p, r0, r1, 0, s, c);
  }
#endif
  if (isa == kScalar || pick(isa, p.bits, 1) == nullptr) return rows_scalar(p, r0, r1, 0, s, c);
  const int mt = max_tile(isa);
  // m-tiles outermost within a chunk: each tile re-reads the chunk's codes from L1/L2, not memory.
  for (int64_t m0 = 0; m0 < p.m; m0 += mt) {
    const int t = (int)std::min<int64_t>(mt, p.m - m0);
    pick(isa, p.bits, t, !std::isnan(p.tbias), p.group % 32 == 0)(p, r0, r1, m0, s, c);
  }
}

struct Shared {
  Problem p;
  int isa;
  int64_t rows_per_chunk, chunks;
  std::atomic<int64_t> next{0}, done{0};
};

void work(Shared& sh) {
  const int64_t cap = std::max(sh.p.ng, sh.p.k / 16);  // groups, then sub-blocks
  float stack_buf[2 * 512];
  std::vector<float> heap_buf;
  float* sc = stack_buf;
  if (cap > 512) {
    heap_buf.resize(2 * cap);
    sc = heap_buf.data();
  }
  for (;;) {
    const int64_t i = sh.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= sh.chunks) return;
    const int64_t r0 = i * sh.rows_per_chunk, r1 = std::min(sh.p.n, r0 + sh.rows_per_chunk);
    run_rows(sh.p, sh.isa, r0, r1, sc, sc + cap);
    sh.done.fetch_add(1, std::memory_order_release);
  }
}

inline void cpu_relax() {
#if JQ_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// A small persistent pool of helper threads that spin for 200 us after each job (decode calls come
// back to back: waking a sleeping thread per call costs more than the call), then sleep.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: helpers may outlive static destruction
    return *pool;
  }

  // Runs `sh` on the caller plus up to `helpers` pool threads; returns when every chunk is done.
  void run(const std::shared_ptr<Shared>& sh, int helpers) {
    std::unique_lock<std::mutex> submit(submit_mu_, std::try_to_lock);
    if (helpers > 0 && submit.owns_lock()) {  // another call in flight: run this one alone
      ensure(helpers);
      {
        std::lock_guard<std::mutex> g(mu_);
        job_ = sh;
        wanted_ = helpers;
        gen_.fetch_add(1, std::memory_order_release);
      }
      if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    }
    work(*sh);
    // Wait for chunks helpers took; yield now and then so a helper descheduled on a busy machine can run.
    for (int spins = 1; sh->done.load(std::memory_order_acquire) < sh->chunks; ++spins) {
      cpu_relax();
      if (spins % 256 == 0) std::this_thread::yield();
    }
    if (submit.owns_lock()) {
      std::lock_guard<std::mutex> g(mu_);
      job_.reset();
    }
  }

 private:
  void ensure(int n) {
    while ((int)threads_.size() < n) {
      const int id = (int)threads_.size();
      threads_.emplace_back([this, id] { loop(id); });
      threads_.back().detach();
    }
  }

  void loop(int id) {
    uint64_t seen = gen_.load(std::memory_order_acquire);
    for (;;) {
      auto t0 = std::chrono::steady_clock::now();
      int spins = 0;
      while (gen_.load(std::memory_order_acquire) == seen) {
        cpu_relax();
        if (++spins % 1024 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs)) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1);
          cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
          sleepers_.fetch_sub(1);
          break;
        }
      }
      std::shared_ptr<Shared> sh;
      {
        std::lock_guard<std::mutex> g(mu_);
        seen = gen_.load(std::memory_order_acquire);
        if (id < wanted_) sh = job_;
      }
      if (sh) work(*sh);
    }
  }

  static constexpr int kSpinUs = 200;
  std::mutex submit_mu_, mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::shared_ptr<Shared> job_;
  int wanted_ = 0;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> sleepers_{0};
};

// int8 activations: per 32-column block b of each row, dx_b = max|x_b| / 127 and xq = round(x / dx_b),
// stored per block pair in the order the codes sit in registers (4-bit: [b even | b+1 even | b odd |
// b+1 odd], a lone last block [even | odd]; 8-bit: natural order). xsum[g] becomes x^'s group sums.
void quantize_x(const float* src, int64_t m, int64_t k, int bits, std::vector<int8_t>& xq, std::vector<float>& dx,
                float* xsum, int64_t group) {
  const int64_t nb = k / 32, ng = (k + group - 1) / group;
  xq.assign(m * k, 0);
  dx.assign(m * nb, 0.f);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t g = 0; g < ng; ++g) xsum[r * ng + g] = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const float* x = src + r * k + b * 32;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
      const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
      dx[r * nb + b] = d;
      int sum = 0;
      int8_t* out = xq.data() + r * k + (b & ~int64_t(1)) * 32;
      const bool paired = bits == 4 && (b | 1) < nb;  // 4-bit, part of a full pair
      for (int j = 0; j < 32; ++j) {
        const int v = (int)std::nearbyint(x[j] * inv);
        sum += v;
        int pos;
        if (bits == 8) {
          pos = (b & 1) * 32 + j;
        } else if (paired) {  // even columns at 16*(b&1) + j/2, odd ones 32 further
          pos = (j & 1) * 32 + (b & 1) * 16 + (j >> 1);
        } else {  // the lone last block: [even | odd]
          pos = (j & 1) * 16 + (j >> 1);
        }
        out[pos] = (int8_t)v;
      }
      xsum[r * ng + b * 32 / group] += d * (float)sum;
    }
  }
}

// Runs y = x @ w.T for a filled-in Problem (p.x = the caller's activations [M, K], row-major f32).
void run_problem(Problem p) {
  const int64_t m = p.m, k = p.k, ng = p.ng, group = p.group, n = p.n, bits = p.bits;
  auto sh = std::make_shared<Shared>();
  std::vector<float> xbuf(bits == 4 ? m * k : 0), xsum(m * ng);
  const float* src = p.x;
  if (bits == 4) {  // de-interleave each 32-column block: even columns, then odd ones
    for (int64_t r = 0; r < m * k; r += 32)
      for (int i = 0; i < 16; ++i) xbuf[r + i] = src[r + 2 * i], xbuf[r + 16 + i] = src[r + 2 * i + 1];
    p.x = xbuf.data();
  } else {
    p.x = src;
  }
  for (int64_t r = 0; r < m; ++r) {  // x summed over each group (the factored kernels' offsets)
    for (int64_t g = 0; g < ng; ++g) {
      float acc = 0.f;
      for (int64_t j = g * group; j < std::min(k, (g + 1) * group); ++j) acc += src[r * k + j];
      xsum[r * ng + g] = acc;
    }
  }
  p.xsum = xsum.data();
  p.tbias = NAN;
  if (bits == 4) {
    bool affine = true;
    for (int i = 0; i < 16; ++i) affine = affine && p.table[i] == p.table[0] + (float)i;
    if (affine) p.tbias = -p.table[0];
  }
  std::vector<int8_t> xq;
  std::vector<float> dx;
  p.xq = nullptr, p.dx = nullptr;
  if (g_act_int8.load(std::memory_order_relaxed) && g_isa.load(std::memory_order_relaxed) == kAvx512 && m <= 2 &&
      group % 32 == 0 && (bits == 8 || !std::isnan(p.tbias))) {
    quantize_x(src, m, k, bits, xq, dx, xsum.data(), group);
    p.xq = xq.data(), p.dx = dx.data();
  }
  sh->p = p;
  sh->isa = g_isa.load(std::memory_order_relaxed);

  int64_t threads = g_threads.load(std::memory_order_relaxed);
  if (threads <= 0) threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  // >= 8 chunks per thread for balance, <= 256 KiB of codes per chunk, >= 4 rows
  const int64_t row_bytes = k * bits / 8;
  int64_t rpc = std::max<int64_t>(4, (n + threads * 8 - 1) / (threads * 8));
  rpc = std::min<int64_t>(rpc, std::max<int64_t>(4, (256 << 10) / std::max<int64_t>(1, row_bytes)));
  if (threads == 1 || n * row_bytes * std::max<int64_t>(1, m) < (16 << 10)) rpc = n;  // tiny: no split
  sh->rows_per_chunk = rpc;
  sh->chunks = (n + rpc - 1) / rpc;
  Pool::get().run(sh, (int)std::min<int64_t>(threads - 1, sh->chunks - 1));
}

#ifndef JQ_NO_FFI
int dtype_code(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return kF32;
    case ffi::DataType::F16: return kF16;
    case ffi::DataType::BF16: return kBF16;
    case ffi::DataType::U8: return kU8;
    default: return -1;
  }
}

// w, scale, zero: [N, ...] or stacked [L, N, ...] (layers of a scanned model); `layer` (int32 scalar)
// picks one of the L without the copy a dynamic slice outside the call would make.
ffi::Error QmatmulImpl(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::AnyBuffer scale, ffi::AnyBuffer zero,
                       ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::S32> layer, ffi::ResultBuffer<ffi::F32> y,
                       int64_t bits, int64_t group, int64_t bias, int64_t has_zero) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || (wd.size() != 2 && wd.size() != 3)) return ffi::Error::InvalidArgument("x must be 2-D, w 2-D or 3-D");
  const bool stacked = wd.size() == 3;
  const int64_t layers = stacked ? wd[0] : 1, m = xd[0], k = xd[1], n = wd[stacked], wcols = wd[stacked + 1];
  if (bits != 4 && bits != 8) return ffi::Error::InvalidArgument("bits must be 4 or 8");
  if (wcols * 8 / bits != k) return ffi::Error::InvalidArgument("w's packed width does not match K");
  if (k % 32 || group % (bits == 4 ? 32 : 16) || group <= 0)
    return ffi::Error::InvalidArgument("K must be a multiple of 32 and the group of 32 (4-bit) / 16 (8-bit)");
  const int64_t ng = (k + group - 1) / group;
  auto sd = scale.dimensions();
  if (sd.size() != wd.size() || sd[stacked] != n || sd[stacked + 1] != ng || (stacked && sd[0] != layers))
    return ffi::Error::InvalidArgument("scale must be [(L,) N, ceil(K/G)]");
  const int64_t l = stacked ? (int64_t)layer.typed_data()[0] : 0;
  if (l < 0 || l >= layers) return ffi::Error::InvalidArgument("layer index out of range");
  Problem p{};
  p.sdt = dtype_code(scale.element_type());
  p.zdt = has_zero ? dtype_code(zero.element_type()) : kNone;
  if (p.sdt < 0 || p.sdt == kU8 || p.zdt < 0) return ffi::Error::InvalidArgument("unsupported scale/zero dtype");
  if (has_zero && zero.element_count() != layers * n * ng)
    return ffi::Error::InvalidArgument("zero must be [(L,) N, ceil(K/G)]");
  p.is_signed = w.element_type() == ffi::DataType::S8;
  p.m = m, p.n = n, p.k = k, p.group = group, p.ng = ng, p.bits = (int)bits, p.bias = (int)bias;
  const int64_t sz = p.sdt == kF32 ? 4 : 2, zsz = p.zdt == kF32 ? 4 : p.zdt == kU8 ? 1 : 2;
  p.w = (const uint8_t*)w.untyped_data() + l * n * wcols;
  p.scale = (const uint8_t*)scale.untyped_data() + l * n * ng * sz;
  p.zero = has_zero ? (const uint8_t*)zero.untyped_data() + l * n * ng * zsz : nullptr;
  p.table = table.typed_data();
  p.y = y->typed_data();
  p.x = x.typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  run_problem(p);
  return ffi::Error::Success();
}

#endif  // JQ_NO_FFI

}  // namespace

#ifndef JQ_NO_FFI
XLA_FFI_DEFINE_HANDLER_SYMBOL(JquantCpuQmatmul, QmatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("bits")
                                  .Attr<int64_t>("group")
                                  .Attr<int64_t>("bias")
                                  .Attr<int64_t>("has_zero"));
#endif  // JQ_NO_FFI

// ---- plain C entry points (ctypes): ISA and thread control, and the bandwidth probe -----------------
extern "C" {

int jquant_cpu_detected_isa() { return detect_isa(); }
int jquant_cpu_get_isa() { return g_isa.load(); }
int jquant_cpu_set_isa(int isa) {
  const int v = std::max(0, std::min(isa, detect_isa()));
  g_isa.store(v);
  return v;
}
int jquant_cpu_get_threads() { return g_threads.load(); }
// 1: int8 activations (opt-in, AVX-512 VNNI only); returns the mode in effect (0 where unsupported).
int jquant_cpu_set_act(int int8) {
  g_act_int8.store(int8 && has_vnni() ? 1 : 0);
  return g_act_int8.load();
}
int jquant_cpu_get_act() { return g_act_int8.load(); }

// The kernel without XLA, for callers that hold raw pointers (the Torch bridge, through ctypes):
// y[M, N] = x[M, K] @ dequantize(w)^T, f32 row-major x and y, w / scale / zero of one layer laid out
// as in the FFI handler (codes [N, K*bits/8], scale and zero [N, ceil(K/G)]). sdt / zdt: 0 f32,
// 1 f16, 2 bf16, 3 u8 (zero only), 4 none. Returns 0, or -1 for arguments the kernel cannot read
// (the caller checks them first and names the tensor).
int jquant_cpu_qmatmul_raw(const float* x, float* y, int64_t m, int64_t n, int64_t k, const uint8_t* w,
                           int is_signed, const void* scale, int sdt, const void* zero, int zdt,
                           const float* table, int bits, int64_t group, int bias) {
  if ((bits != 4 && bits != 8) || k % 32 || group <= 0 || group % (bits == 4 ? 32 : 16)) return -1;
  if (sdt < kF32 || sdt > kBF16 || zdt < kF32 || zdt > kNone || (zdt != kNone && zero == nullptr)) return -1;
  Problem p{};
  p.m = m, p.n = n, p.k = k, p.group = group, p.ng = (k + group - 1) / group;
  p.bits = bits, p.bias = bias, p.is_signed = is_signed, p.sdt = sdt, p.zdt = zdt;
  p.w = w, p.scale = scale, p.zero = zdt == kNone ? nullptr : zero, p.table = table, p.y = y, p.x = x;
  if (m > 0 && n > 0) run_problem(p);
  return 0;
}
void jquant_cpu_set_threads(int t) { g_threads.store(t); }

// Streaming read bandwidth in bytes/s: `threads` threads each sum their slice of a `bytes` buffer
// (touched first), `reps` times; the best repetition counts.
#if JQ_X86
__attribute__((target("avx2"))) static uint64_t sum_slice_avx2(const uint64_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i*)(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i*)(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i*)(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i*)(p + i + 12)));
  }
  a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  uint64_t out[4];
  _mm256_storeu_si256((__m256i*)out, a0);
  uint64_t s = out[0] + out[1] + out[2] + out[3];
  for (; i < n; ++i) s += p[i];
  return s;
}
#endif
static uint64_t sum_slice(const uint64_t* p, size_t n) {
#if JQ_X86
  if (detect_isa() >= kAvx2) return sum_slice_avx2(p, n);
#endif
  uint64_t s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

double jquant_cpu_read_bandwidth(size_t bytes, int threads, int reps) {
  const size_t words = bytes / 8;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
  for (size_t i = 0; i < words; ++i) buf[i] = i;
  double best = 0;
  std::atomic<uint64_t> sink{0};
  for (int r = 0; r < reps; ++r) {
    std::vector<std::thread> ts;
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t a = words * t / threads, b = words * (t + 1) / threads;
        sink += sum_slice(buf.get() + a, b - a);
      });
    }
    for (auto& t : ts) t.join();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, (double)(words * 8) / dt);
  }
  return sink.load() == 42 ? best + 1e-9 : best;
}

}  // extern "C"
