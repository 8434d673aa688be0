/* Weight quantization at load, AVX2 (speechrs/kernels/ builds this file with the x86/ kernels and calls it).

   The same numbers as quant.py's torch reference, bit for bit: every step below is the fp32 operation torch
   performs (true division, not a reciprocal; round half to even; the scale rounded to bf16 after x (1 + 2^-7)),
   in the same order. The torch ops take ~10 passes over each weight in fp32; here each row is read twice (its
   range, then its codes) from the checkpoint's own dtype, the codes written once, straight into the layout the
   kernel streams.

   int8: per row, s = bf16(max(absmax, 1e-12) / 127 * (1 + 2^-7)); q = clamp(round(w / s), -127, 127).
   int4, per group of g along K: lo, hi = min, max; s = bf16(max((hi - lo) / 15, 1e-12) * (1 + 2^-7));
   zero = bf16(lo + 8 s); q = clamp(round((w - zero) / s + 8), 0, 15). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { BF16 = 0, F16 = 1, F32 = 2 }; /* the weight's dtype, as kernels/ passes it */

static inline float bf16_value(float f) { /* f rounded to bf16 (to nearest even), as torch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t bf16_bits(float f) { /* the top half of a value bf16_value() made: exact */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static inline __m256 load8(const void *w, int dtype, int64_t i) {
    if (dtype == F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (dtype == F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load1(const void *w, int dtype, int64_t i) {
    if (dtype == F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    if (dtype == F16) return _cvtsh_ss(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float hmax(__m256 a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}

static inline float hmin(__m256 a) {
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_min_ss(s, _mm_shuffle_ps(s, s, 1)));
}

#define ROUND_EVEN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* 8 codes of a row, x / s rounded and clamped, as 8 bytes */
static inline uint64_t int8x8(__m256 x, __m256 s) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(x, s), ROUND_EVEN);
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(-127.f)), _mm256_set1_ps(127.f));
    __m256i i32 = _mm256_cvtps_epi32(q);
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    return (uint64_t)_mm_cvtsi128_si64(_mm_packs_epi16(i16, i16));
}

/* w (N rows of K, row stride ld elements, `dtype`) -> int8 codes and scales (N,) fp32 (bf16 values).
   The codes go to `codes` in the layout of `rows` x `cols` blocks: byte (i, k) at
   (i / rows) * K * rows + (k / cols) * rows * cols + (i % rows) * cols + k % cols; rows 1 and cols K is the plain
   (N, K), (8, 8) the AVX2 / AVX-512 kernels' blocks, (16, 1) the AMX kernel's. Rows up to N rounded to `rows`
   get zero codes. K % 8 == 0 unless the layout is plain (then a tail is done one by one). */
void speechrs_quantize_int8(const void *w, int dtype, int64_t N, int64_t K, int64_t ld, int8_t *codes,
                            float *scale, int64_t rows, int64_t cols, int threads) {
    int64_t n_padded = (N + rows - 1) / rows * rows;
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < n_padded; i++) {
        int8_t *base = codes + (i / rows) * K * rows + (i % rows) * cols;
        if (i >= N) {
            for (int64_t k = 0; k < K; k += cols) memset(base + k * rows, 0, cols);
            continue;
        }
        const void *row = (const char *)w + i * ld * (dtype == F32 ? 4 : 2);
        __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), m = _mm256_setzero_ps();
        int64_t k8 = K / 8 * 8;
        for (int64_t k = 0; k < k8; k += 8) m = _mm256_max_ps(m, _mm256_and_ps(load8(row, dtype, k), absmask));
        float amax = hmax(m);
        for (int64_t k = k8; k < K; k++) amax = fmaxf(amax, fabsf(load1(row, dtype, k)));
        float s = bf16_value(fmaxf(amax, 1e-12f) / 127.f * 1.0078125f);
        scale[i] = s;
        __m256 sv = _mm256_set1_ps(s);
        for (int64_t k = 0; k < k8; k += 8) {
            uint64_t q = int8x8(load8(row, dtype, k), sv);
            int8_t *dst = base + (k / cols) * rows * cols + k % cols;
            if (cols >= 8) {
                memcpy(dst, &q, 8);
            } else { /* (16, 1): each k's code 16 bytes after the last */
                for (int j = 0; j < 8; j++) dst[j * rows] = (int8_t)(q >> (8 * j));
            }
        }
        for (int64_t k = k8; k < K; k++) {
            float q = nearbyintf(load1(row, dtype, k) / s);
            base[k] = (int8_t)fminf(fmaxf(q, -127.f), 127.f);
        }
    }
}

/* w (N, K) as above -> int4 codes, two per byte, k even in the low nibble, and a scale and zero per group, laid
   out by `block` (g % 8 == 0):
   0: codes (N, K / 2) uint8 and scale_zero (K / g, N, 2) fp32 (bf16 values), its rows `sz_ld` apart (N, or more
      when these are rows of a larger weight): the portable layout;
   8 or 16: rows row0 .. row0 + N of the layouts speechrs's int4 kernels read (quant.Int4Linear), written in place
      of the portable one and a re-blocking copy: codes [R/8][K/2][8 rows] (AVX2) or [R/16][K/8][16 rows][4 bytes]
      (AVX-512 BF16, AMX), scale_zero [R/b][K/g][scale, zero][b rows] bf16; `sz_ld` unused. */
void speechrs_quantize_int4(const void *w, int dtype, int64_t N, int64_t K, int64_t ld, int64_t g, uint8_t *codes,
                            void *scale_zero, int64_t sz_ld, int64_t block, int64_t row0, int threads) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t i = 0; i < N; i++) {
        const void *row = (const char *)w + i * ld * (dtype == F32 ? 4 : 2);
        for (int64_t k0 = 0; k0 < K; k0 += g) {
            __m256 lo = load8(row, dtype, k0), hi = lo;
            for (int64_t k = k0 + 8; k < k0 + g; k += 8) {
                __m256 x = load8(row, dtype, k);
                lo = _mm256_min_ps(lo, x);
                hi = _mm256_max_ps(hi, x);
            }
            float mn = hmin(lo), mx = hmax(hi);
            float s = bf16_value(fmaxf((mx - mn) / 15.f, 1e-12f) * 1.0078125f);
            float zero = bf16_value(mn + 8.f * s);
            const int64_t R = row0 + i, r = block ? R % block : 0;
            if (block) {
                uint16_t *sz = (uint16_t *)scale_zero + ((R / block) * (K / g) + k0 / g) * 2 * block + r;
                sz[0] = bf16_bits(s), sz[block] = bf16_bits(zero);
            } else {
                float *sz = (float *)scale_zero + ((k0 / g) * sz_ld + i) * 2;
                sz[0] = s, sz[1] = zero;
            }
            __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(zero), eight = _mm256_set1_ps(8.f);
            for (int64_t k = k0; k < k0 + g; k += 8) {
                __m256 q = _mm256_add_ps(_mm256_div_ps(_mm256_sub_ps(load8(row, dtype, k), zv), sv), eight);
                q = _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(q, ROUND_EVEN), _mm256_setzero_ps()), _mm256_set1_ps(15.f));
                __m256i c = _mm256_cvtps_epi32(q); /* 8 codes: pairs (even | odd << 4) into 4 bytes */
                c = _mm256_or_si256(c, _mm256_srli_epi64(c, 28)); /* each 64-bit lane: even + odd << 4 in its low byte */
                __m256i bytes = _mm256_shuffle_epi8(c, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                        -1, -1, -1, -1, 0, 8, -1, -1, -1, -1, -1, -1,
                                                                        -1, -1, -1, -1, -1, -1, -1, -1));
                uint16_t a = (uint16_t)_mm256_extract_epi16(bytes, 0), b = (uint16_t)_mm256_extract_epi16(bytes, 8);
                uint32_t four = (uint32_t)a | (uint32_t)b << 16;
                if (block == 16) /* the 4 bytes of k .. k + 7 together */
                    memcpy(codes + ((R / 16) * (K / 8) + k / 8) * 64 + r * 4, &four, 4);
                else if (block == 8) /* each byte (two k) beside the same byte of the block's other rows */
                    for (int t = 0; t < 4; t++) codes[((R / 8) * (K / 2) + k / 2 + t) * 8 + r] = (uint8_t)(four >> (8 * t));
                else
                    memcpy(codes + i * (K / 2) + k / 2, &four, 4);
            }
        }
    }
}

/* The int4 weights of blocks [b0, b1) of speechrs's AVX2 int4 layout (8 rows to a block: codes [N/8][K/2][8 rows],
   scale_zero [N/8][K/g][scale, zero][8 rows] bf16; x86/avx2.c) made fp32 for a GEMM (quant.Int4Linear's
   prefill path without native bf16): w = (q - 8) * scale + zero, the multiply and the add each rounded in fp32
   (torch's order: Int4Linear.dequantized() exactly). Written k-major, out (K, 8 (b1 - b0)): each step's 8 code
   bytes are 8 rows of two k, so every store is 8 contiguous floats, and the GEMM reads out as the transpose of
   its (rows, K) weight. */
void speechrs_int4_weights_avx2(const uint8_t *codes, const uint16_t *scale_zero, int64_t K, int64_t g, int64_t b0,
                                int64_t b1, float *out, int threads) {
    const int64_t G = K / g, ld = (b1 - b0) * 8;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *c = codes + b * (K / 2) * 8;
        float *o = out + (b - b0) * 8;
        for (int64_t gi = 0; gi < G; gi++) {
            const uint16_t *sz = scale_zero + (b * G + gi) * 16;
            __m256 s = load8(sz, BF16, 0), z = load8(sz, BF16, 8), eight = _mm256_set1_ps(8.f);
            for (int64_t p = gi * g / 2; p < (gi + 1) * g / 2; p++) {
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + p * 8)));
                __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
                __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                _mm256_storeu_ps(o + (2 * p) * ld, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(lo, eight), s), z));
                _mm256_storeu_ps(o + (2 * p + 1) * ld, _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(hi, eight), s), z));
            }
        }
    }
}
