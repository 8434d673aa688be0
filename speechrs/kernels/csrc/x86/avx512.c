/* Weight-only int8 and int4 matmuls on AVX-512 BF16: the "avx512" variant (speechrs/kernels/ builds and calls
   them; docs/kernels.md has their layouts, prefetch distances and measurements).

   int8 keeps avx2.c's blocked layout, read 16 lanes wide; int4 has a 16-row layout of its own, which the AMX
   kernel (amx.c) reads too. The weights are made exact bf16 in registers and multiplied by the bf16 activations as
   they come with vdpbf16ps (16 lanes, each a pair of k: two exact products added in fp32), so x is never widened
   and one instruction does 32 multiply-adds. Every output is again one fixed chain whatever the tile
   (batch-invariant). Each function carries its own target (AVX512, kernels.h) and runs only where kernels/ has
   read the CPU's avx512_bf16 flag; SPEECHRS_NO_AVX512 (a compiler too old for them) leaves them out. */
#include <stdlib.h>

#include "../kernels.h"

#ifndef SPEECHRS_NO_AVX512
/* int8's code stream prefetched 8 KiB ahead (faster than 1-2 KiB at 1-4 rows: docs/kernels.md) */
#define PREFETCH_AVX512 8192

/* int8, one block of 8 output rows times MR rows of x: a step of 8 along K is 64 code bytes, rows 0-3 then 4-7,
   made into two bf16 vectors whose 32-bit lane l holds row l/4's codes at k + 2(l%4), k + 2(l%4) + 1; the 8
   activations at k, broadcast to the four 128-bit lanes, line up with them. A row's sum is its 4 lanes'. */
AVX512 static inline __attribute__((always_inline)) void tile8_avx512(const uint16_t *x, int64_t K,
                                                                     const int8_t *block, const float *scale,
                                                                     uint16_t *y, int64_t N, int64_t left,
                                                                     int MR) {
    __m512 acc[16];
    for (int a = 0; a < 2 * MR; a++) acc[a] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        const int8_t *p = block + k * 8;
        _mm_prefetch((const char *)(p + PREFETCH_AVX512), _MM_HINT_T0);
        __m512 f[4];
        for (int j = 0; j < 4; j++)
            f[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * j))));
        const __m512bh w0 = _mm512_cvtne2ps_pbh(f[1], f[0]), w1 = _mm512_cvtne2ps_pbh(f[3], f[2]);
        for (int i = 0; i < MR; i++) {
            const __m512bh xv = (__m512bh)_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(x + i * K + k)));
            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], w0, xv);
            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], w1, xv);
        }
    }
    float t[32];
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(t, acc[2 * i]);
        _mm512_storeu_ps(t + 16, acc[2 * i + 1]);
        for (int r = 0; r < 8 && r < left; r++)
            y[i * N + r] = bf16_round(((t[4 * r] + t[4 * r + 1]) + (t[4 * r + 2] + t[4 * r + 3])) * scale[r]);
    }
}

/* As speechrs_int8_linear (same arguments, same layout); x is read as bf16, not widened. */
AVX512 int speechrs_int8_linear_avx512(const uint16_t *x, int64_t M, int64_t K, const int8_t *codes,
                                       const float *scale, int64_t n_blocks, int64_t n_out, uint16_t *y,
                                       int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int8_t *block = codes + b * 8 * K;
        const float *s = scale + b * 8;
        const int64_t left = n_out - b * 8;
        for (int64_t m = 0; m < M;) {
            const int64_t rows = M - m >= 8 ? 8 : M - m;
            const uint16_t *xm = x + m * K;
            uint16_t *ym = y + m * n_out + b * 8;
            switch (rows) { /* each a tile unrolled for its row count */
            case 8: tile8_avx512(xm, K, block, s, ym, n_out, left, 8); break;
            case 7: tile8_avx512(xm, K, block, s, ym, n_out, left, 7); break;
            case 6: tile8_avx512(xm, K, block, s, ym, n_out, left, 6); break;
            case 5: tile8_avx512(xm, K, block, s, ym, n_out, left, 5); break;
            case 4: tile8_avx512(xm, K, block, s, ym, n_out, left, 4); break;
            case 3: tile8_avx512(xm, K, block, s, ym, n_out, left, 3); break;
            case 2: tile8_avx512(xm, K, block, s, ym, n_out, left, 2); break;
            default: tile8_avx512(xm, K, block, s, ym, n_out, left, 1); break;
            }
            m += rows;
        }
    }
    return 0;
}

/* int4 on AVX-512 BF16 has a layout of its own (quant.Int4Linear blocks the portable codes for it at load):
   16 output rows to a block, and per block and chunk of 8 along K 64 bytes [16 rows][4 bytes], byte t of row j
   being row j's portable byte t of the chunk (k = 8c + 2t low nibble, 8c + 2t + 1 high). scale_zero is
   [N/16][K/group][scale, zero][16 rows] bf16.

   One 64-byte load gives 128 weights: read as 32 words, each word's low 4 bits index the table of q - 8 (vpermw
   reads 5 bits: the table is written twice, so bit 4 is ignored), so the words themselves, shifted by 8, 4 and 12,
   give four vectors whose 32-bit lane j holds row j's pair (k0, k4), (k2, k6), (k1, k5), (k3, k7) of the chunk.
   The activations are reordered once per call so each of those pairs is one 32-bit word, broadcast to all 16
   lanes. Against the first layout (8 rows, each 16 code bytes widened to 16 lanes) this takes 4 shuffles and 3
   shifts per 128 weights instead of 16 operations.
   Per row and block two sums ((k0, k4) + (k2, k6) and (k1, k5) + (k3, k7)) run through a group, then
   y += scale * (sum0 + sum1) + zero * sum(x over the group): the same chain whatever the tile. The code stream is
   prefetched PREFETCH_INT4 ahead (kernels.h). */
AVX512 static inline __attribute__((always_inline)) void tile4_avx512(const uint16_t *xp, const float *xsum,
                                                                     int64_t K, const uint8_t *codes,
                                                                     const uint16_t *sz, int64_t group,
                                                                     uint16_t *y, int64_t N, int64_t left,
                                                                     int MR, int NB) {
    const int64_t G = K / group, C = K / 8, per_group = group / 8;
    const __m512i table = int4_table();
    __m512 total[8];
    for (int a = 0; a < MR * NB; a++) total[a] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m512 acc0[8], acc1[8];
        for (int a = 0; a < MR * NB; a++) acc0[a] = acc1[a] = _mm512_setzero_ps();
        for (int64_t c = g * per_group; c < (g + 1) * per_group; c++) {
            for (int b = 0; b < NB; b++) {
                const uint8_t *p = codes + (b * C + c) * 64;
                _mm_prefetch((const char *)(p + PREFETCH_INT4), _MM_HINT_T0);
                const __m512i v = _mm512_loadu_si512((const void *)p);
                const __m512bh w04 = (__m512bh)_mm512_permutexvar_epi16(v, table);
                const __m512bh w26 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), table);
                const __m512bh w15 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table);
                const __m512bh w37 = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table);
                for (int i = 0; i < MR; i++) {
                    int32_t xq[4]; /* the chunk's activation pairs (x0 x4) (x2 x6) (x1 x5) (x3 x7) */
                    memcpy(xq, xp + i * K + 8 * c, 16);
                    const int a = i * NB + b;
                    acc0[a] = _mm512_dpbf16_ps(acc0[a], w04, (__m512bh)_mm512_set1_epi32(xq[0]));
                    acc1[a] = _mm512_dpbf16_ps(acc1[a], w15, (__m512bh)_mm512_set1_epi32(xq[2]));
                    acc0[a] = _mm512_dpbf16_ps(acc0[a], w26, (__m512bh)_mm512_set1_epi32(xq[1]));
                    acc1[a] = _mm512_dpbf16_ps(acc1[a], w37, (__m512bh)_mm512_set1_epi32(xq[3]));
                }
            }
        }
        for (int b = 0; b < NB; b++) {
            const uint16_t *s = sz + (b * G + g) * 32; /* 16 scales, then 16 zeros */
            const __m512 scale = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s)), 16));
            const __m512 zero = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 16))), 16));
            for (int i = 0; i < MR; i++) {
                const int a = i * NB + b;
                total[a] = _mm512_fmadd_ps(_mm512_add_ps(acc0[a], acc1[a]), scale, total[a]);
                total[a] = _mm512_fmadd_ps(_mm512_set1_ps(xsum[i * G + g]), zero, total[a]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        for (int b = 0; b < NB; b++) {
            float out[16];
            _mm512_storeu_ps(out, total[i * NB + b]);
            for (int j = 0; j < 16 && b * 16 + j < left; j++) y[i * N + b * 16 + j] = bf16_round(out[j]);
        }
}

/* kernels.h: the int4 kernels' activations, reordered as the converted codes' pairs, and each group's sum */
int speechrs_int4_activations(const uint16_t *x, int64_t M, int64_t K, int64_t group, uint16_t **xp_out,
                              float **xsum_out) {
    static const int order[8] = {0, 4, 2, 6, 1, 5, 3, 7};
    const int64_t G = K / group;
    float *xsum = malloc((size_t)(M * G + 1) * sizeof(float));
    uint16_t *xp = malloc((size_t)(M * K + 1) * sizeof(uint16_t));
    if (!xsum || !xp) {
        free(xsum);
        free(xp);
        return -1;
    }
    *xp_out = xp;
    *xsum_out = xsum;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k += 8)
            for (int t = 0; t < 8; t++) xp[m * K + k + t] = x[m * K + k + order[t]];
        for (int64_t g = 0; g < G; g++) {
            float s = 0.0f;
            for (int64_t k = g * group; k < (g + 1) * group; k++) {
                uint32_t u = (uint32_t)x[m * K + k] << 16;
                float f;
                memcpy(&f, &u, 4);
                s += f;
            }
            xsum[m * G + g] = s;
        }
    }
    return 0;
}

/* As speechrs_int4_linear, over the layout above: n_blocks blocks of 16 rows, group % 8 == 0. */
AVX512 int speechrs_int4_linear_avx512(const uint16_t *x, int64_t M, int64_t K, const uint8_t *codes,
                                       const uint16_t *scale_zero, int64_t group, int64_t n_blocks, int64_t n_out,
                                       uint16_t *y, int threads) {
    const int64_t G = K / group;
    uint16_t *xp;
    float *xsum;
    if (speechrs_int4_activations(x, M, K, group, &xp, &xsum)) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < (n_blocks + 3) / 4; t++) {
        const int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
        for (int64_t m = 0; m < M;) {
            const int64_t rows = M - m >= 4 ? 4 : M - m;
            const int64_t step = rows == 1 ? 4 : rows == 2 ? 2 : 1; /* blocks a tile takes: 24 sums at most */
            for (int64_t b = 0; b < nb; b += step) {
                const int64_t nt = nb - b < step ? nb - b : step;
                const uint8_t *c = codes + (b0 + b) * K * 8;
                const uint16_t *s = scale_zero + (b0 + b) * G * 32;
                uint16_t *ym = y + m * n_out + (b0 + b) * 16;
                const int64_t left = n_out - (b0 + b) * 16;
                const uint16_t *xm = xp + m * K;
                const float *sm = xsum + m * G;
#define TILE4(MR, NB) tile4_avx512(xm, sm, K, c, s, group, ym, n_out, left, MR, NB)
                if (rows == 1 && nt == 4) TILE4(1, 4);
                else if (rows == 1 && nt == 3) TILE4(1, 3);
                else if (rows == 1 && nt == 2) TILE4(1, 2);
                else if (rows == 1) TILE4(1, 1);
                else if (rows == 2 && nt == 2) TILE4(2, 2);
                else if (rows == 2) TILE4(2, 1);
                else if (rows == 3) TILE4(3, 1);
                else TILE4(4, 1);
#undef TILE4
            }
            m += rows;
        }
    }
    free(xsum);
    free(xp);
    return 0;
}

/* The int4 weights of blocks [b0, b1) (of 16 rows, the layout above) made bf16 for a GEMM (quant.Int4Linear's
   prefill path): out (16 (b1 - b0), K), w = (q - 8) * scale + zero with a multiply and an add, each rounded in fp32
   (torch's order, so this equals Int4Linear.dequantized() rounded to bf16; the library is built with
   -ffp-contract=off), then to bf16 (nearest even). Per row and group the 16 values a code can take are made once
   into a vpermw table; each 16 code bytes (4 chunks) of the row then give its next 32 weights in order. group %
   32 == 0. */
AVX512 int speechrs_int4_weights_avx512(const uint8_t *codes, const uint16_t *scale_zero, int64_t K, int64_t group,
                                        int64_t b0, int64_t b1, uint16_t *out, int threads) {
    const int64_t G = K / group, C = K / 8;
    const __m512 q8 = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *block = codes + b * C * 64;
        for (int j = 0; j < 16; j++) {
            uint16_t *o = out + ((b - b0) * 16 + j) * K;
            for (int64_t g = 0; g < G; g++) {
                const uint16_t *s = scale_zero + (b * G + g) * 32;
                uint32_t us = (uint32_t)s[j] << 16, uz = (uint32_t)s[16 + j] << 16;
                float scale, zero;
                memcpy(&scale, &us, 4);
                memcpy(&zero, &uz, 4);
                __m512 w = _mm512_add_ps(_mm512_mul_ps(q8, _mm512_set1_ps(scale)), _mm512_set1_ps(zero));
                __m256i half = (__m256i)_mm512_cvtneps_pbh(w);
                const __m512i table = _mm512_inserti64x4(_mm512_castsi256_si512(half), half, 1);
                for (int64_t c = g * group / 8; c < (g + 1) * group / 8; c += 4) {
                    int32_t bytes[4]; /* the row's 4 code bytes of chunks c .. c + 3 */
                    for (int i = 0; i < 4; i++) memcpy(bytes + i, block + (c + i) * 64 + 4 * j, 4);
                    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
                    __m512i index = _mm512_or_si512(v, _mm512_slli_epi32(v, 12)); /* low word k, high word k + 1 */
                    _mm512_storeu_si512((void *)(o + 8 * c), _mm512_permutexvar_epi16(index, table));
                }
            }
        }
    }
    return 0;
}
#endif
