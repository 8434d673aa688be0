/* What the kernels' files share (x86/avx2.c, x86/avx512.c, x86/amx.c, decode.c): bf16 in and out and fp32 sums on
   AVX2, and the AVX-512 BF16 pieces the AMX kernels reuse. */
#ifndef SPEECHRS_CPU_KERNELS_H
#define SPEECHRS_CPU_KERNELS_H
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* fp32 -> bf16, rounded to nearest even as torch rounds */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* one bf16 -> fp32, exactly */
static inline float bf16_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 8 fp32 rounded to bf16 (nearest even, as bf16_round; NaN stays NaN), kept as fp32 with low halves zero */
static inline __m256 bf16_round8(__m256 f) {
    const __m256i u = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    const __m256i nan = _mm256_or_si256(u, _mm256_set1_epi32(0x400000)); /* quiet, payload kept in the top bits */
    const __m256 rounded = _mm256_castsi256_ps(r);
    const __m256 picked = _mm256_blendv_ps(rounded, _mm256_castsi256_ps(nan), _mm256_cmp_ps(f, f, _CMP_UNORD_Q));
    return _mm256_and_ps(picked, _mm256_castsi256_ps(_mm256_set1_epi32((int)0xffff0000u)));
}

/* 8 fp32 already bf16-exact (bf16_round8's) stored as 8 bf16 */
static inline void store_bf16x8(uint16_t *p, __m256 f) {
    const __m256i high = _mm256_srli_epi32(_mm256_castps_si256(f), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(high, high), 0x08); /* qwords 0, 2 */
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}

/* 8 bf16 -> 8 fp32, exactly */
static inline __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* the sum of the 8 lanes, in a fixed order */
static inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* a helper one file defines for another: hidden, not part of the library's interface (ctypes) */
#define SPEECHRS_INTERNAL __attribute__((visibility("hidden")))

/* The AVX-512 BF16 kernels' target (x86/avx512.c, x86/amx.c): the library itself is built for AVX2 + FMA, and
   these functions run only where kernels/ has read the CPU's flags. SPEECHRS_NO_AVX512: a compiler too old for
   AVX-512 BF16 intrinsics (gcc < 10), which then builds the AVX2 kernels alone. */
#ifndef SPEECHRS_NO_AVX512
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* the 16-row int4 layout's code stream (x86/avx512.c, x86/amx.c) prefetched 64 steps of 64 bytes ahead */
#define PREFETCH_INT4 4096

/* q - 8 in bf16 (exact) for q = 0..15, written twice: vpermw reads 5 index bits (see tile4_avx512). */
AVX512 static inline __m512i int4_table(void) {
    __m512i table = _mm512_setzero_si512();
    for (int q = 0; q < 16; q++) {
        float f = (float)(q - 8);
        uint32_t u;
        memcpy(&u, &f, 4);
        table = _mm512_mask_set1_epi16(table, (__mmask32)(0x10001u << q), (short)(u >> 16));
    }
    return table;
}

/* The 16-row int4 kernels' activations (x86/avx512.c): x (M, K) with each chunk of 8 reordered as the pairs (x0 x4)
   (x2 x6) (x1 x5) (x3 x7) that the converted codes line up with, and each group's sum (for the zero points);
   buffers the caller frees; -1 (nothing to free) if none could be had. */
SPEECHRS_INTERNAL int speechrs_int4_activations(const uint16_t *x, int64_t M, int64_t K, int64_t group,
                                                uint16_t **xp_out, float **xsum_out);
#endif

#endif
