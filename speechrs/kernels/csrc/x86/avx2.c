/* Weight-only int8 and int4 matmuls, and a bf16 one, on AVX2 + FMA: the "avx2" variant (speechrs/kernels/ builds
   and calls them; docs/kernels.md has their layouts, prefetch distances and measurements).

   Activations come in and results go out in bf16, the contract of torch's weight-only kernels that quant.py
   follows everywhere: x is widened to fp32 once per call, sums run in fp32, each result is rounded to bf16
   (to nearest even, as torch rounds). Doing both here saves three torch ops per call.

   int8: y (M, N) = (x (M, K) @ codes (N, K)^T) * scale (N,)

   The codes are blocked by quant.Int8Linear at load: [N/8][K/8][8 rows][8 k], so one block of 8 output rows is
   one contiguous stream of 64 bytes per step of 8 along K (8 rows read as 8 separate streams were slower), read
   with a software prefetch ahead.

   Every output is the same chain of FMAs over K in steps of 8 (one 8-lane accumulator) and the same horizontal
   sum, whatever the tile that computes it: a row's result does not depend on the rows beside it (batching). */
#include <stdlib.h>

#include "../kernels.h"

#define PREFETCH_BYTES 1024 /* the int4 kernel's prefetch distance along a block's codes (tile4) */
/* the int8 kernel's prefetch, 64 lines ahead, and the k a pass takes before the next pass's turn (block_rows):
   the fastest of those measured (docs/kernels.md) */
#define INT8_PREFETCH_BYTES 4096
#define INT8_CHUNK 256

/* x (M, K) bf16 -> fp32, in a buffer the caller frees (NULL if none could be had). 64-byte aligned: a row's
   32-byte loads never straddle two cache lines (K % 8 == 0), where malloc's 16-byte alignment split half of them
   and the speed varied with the buffer's address. */
static float *widen(const uint16_t *x, int64_t n) {
    size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64; /* aligned_alloc wants a multiple */
    float *out = aligned_alloc(64, bytes);
    if (out)
        for (int64_t i = 0; i < n; i++) out[i] = bf16_float(x[i]);
    return out;
}

/* Accumulators acc[i * NR + j] (MR * NR <= 8) for MR rows of x times NR of the block's 8 weight rows (from row
   j0), over k in [k0, k1): with NR converted weights and one x vector they fit AVX2's 16 registers. `prefetch`:
   this pass is the first over these lines, so it asks for the lines INT8_PREFETCH_BYTES ahead. */
static inline __attribute__((always_inline)) void tile(const float *x, int64_t K, const int8_t *block, __m256 *acc,
                                                       int MR, int NR, int j0, int64_t k0, int64_t k1, int prefetch) {
    __m256 a[8];
    for (int q = 0; q < MR * NR; q++) a[q] = acc[q];
    for (int64_t k = k0; k < k1; k += 8) {
        const int8_t *p = block + k * 8 + j0 * 8;
        if (prefetch) _mm_prefetch((const char *)(p + INT8_PREFETCH_BYTES), _MM_HINT_T0);
        __m256 w[8];
        for (int j = 0; j < NR; j++)
            w[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * j))));
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * K + k);
            for (int j = 0; j < NR; j++) a[i * NR + j] = _mm256_fmadd_ps(xv, w[j], a[i * NR + j]);
        }
    }
    for (int q = 0; q < MR * NR; q++) acc[q] = a[q];
}

/* MR rows of x times one block's 8 weight rows, in 8 / NR passes of NR rows each. The passes take turns every
   INT8_CHUNK k, so each 64-byte line is read from memory once (by the first pass) and from L1 by the others; a
   pass over the whole K before the next would bring a large block back from L2, its lines half used by each pass.
   One row takes two passes of 4 too, which measured faster than one pass of 8. */
static inline __attribute__((always_inline)) void block_rows(const float *x, int64_t K, const int8_t *block,
                                                             const float *scale, uint16_t *y, int64_t N,
                                                             int64_t left, int MR, int NR) {
    __m256 acc[32]; /* [pass][MR * NR] */
    for (int q = 0; q < 8 * MR; q++) acc[q] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += INT8_CHUNK) {
        const int64_t k1 = K - k0 < INT8_CHUNK ? K : k0 + INT8_CHUNK;
        for (int j0 = 0; j0 < 8; j0 += NR) tile(x, K, block, acc + j0 * MR, MR, NR, j0, k0, k1, j0 == 0);
    }
    for (int j0 = 0; j0 < 8; j0 += NR)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR && j0 + j < left; j++)
                y[i * N + j0 + j] = bf16_round(hsum(acc[j0 * MR + i * NR + j]) * scale[j0 + j]);
}

/* x (M, K) bf16, codes blocked as above for 8 * n_blocks rows, scale (8 * n_blocks,) fp32, y (M, n_out) bf16
   where n_out <= 8 * n_blocks (the padded rows are not written); K % 8 == 0. Returns 0, or -1 if out of memory. */
int speechrs_int8_linear(const uint16_t *x_bf16, int64_t M, int64_t K, const int8_t *codes, const float *scale,
                         int64_t n_blocks, int64_t n_out, uint16_t *y, int threads) {
    float *x = widen(x_bf16, M * K);
    if (!x) return -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int8_t *block = codes + b * 8 * K;
        const float *s = scale + b * 8;
        const int64_t left = n_out - b * 8;
        for (int64_t m = 0; m < M;) {
            const float *xm = x + m * K;
            uint16_t *ym = y + m * n_out + b * 8;
            if (M - m >= 4) {
                block_rows(xm, K, block, s, ym, n_out, left, 4, 2);
                m += 4;
            } else if (M - m >= 2) {
                block_rows(xm, K, block, s, ym, n_out, left, 2, 4);
                m += 2;
            } else {
                block_rows(xm, K, block, s, ym, n_out, left, 1, 4);
                m += 1;
            }
        }
    }
    free(x);
    return 0;
}

/* Weight-only int4 in groups along K, the "tinygemm" convention of quant.Int4Linear: w = (q - 8) * scale + zero,
   q in 0..15, one scale and zero per group of `group` k and output row.

   y (M, N) = sum over groups g of scale_g * (x_g . q_g) + (zero_g - 8 scale_g) * sum(x_g)

   Here the 8 lanes of a vector are 8 output rows (not 8 k as for int8): codes blocked [N/8][K/2][8 rows], each
   byte holding a row's q at k (low nibble) and k + 1 (high nibble), which is quant.int4_codes's portable byte;
   scale_zero blocked [N/8][K/group][scale, zero][8 rows] bf16. A step reads 8 bytes (16 weights), widens them to
   8 lanes, and the two nibbles are the weights of k and k + 1 for those rows: no horizontal sums, and the group's
   scales multiply a whole vector. Every output is the same chain (two partial dots per group, even and odd k,
   then the group's terms) whatever the tile that computes it.

   The high nibble is not taken apart from the byte: with f = lo + 16 hi (the whole byte, converted as it is),
   xe lo + xo hi = (xe - xo / 16) lo + (xo / 16) f, so the activations are made (xe - xo / 16, xo / 16) once per
   call and a step converts two vectors (lo, f) for 4 vector ops per 16 weights instead of 5. */

/* MR rows of x times NB blocks of 8 output rows: 3 * MR * NB <= 12 accumulators. */
static inline __attribute__((always_inline)) void tile4(const float *x, const float *xsum, int64_t K,
                                                        const uint8_t *codes, const uint16_t *sz, int64_t group,
                                                        uint16_t *y, int64_t N, int64_t left, int MR, int NB) {
    const int64_t G = K / group;
    const __m256i low = _mm256_set1_epi32(15);
    const __m256 minus8 = _mm256_set1_ps(-8.0f);
    __m256 total[4];
    for (int a = 0; a < MR * NB; a++) total[a] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        __m256 even[4], odd[4];
        for (int a = 0; a < MR * NB; a++) even[a] = odd[a] = _mm256_setzero_ps();
        for (int64_t p = g * group / 2; p < (g + 1) * group / 2; p++) {
            for (int b = 0; b < NB; b++) {
                const uint8_t *c = codes + b * K * 4 + p * 8;
                _mm_prefetch((const char *)(c + PREFETCH_BYTES), _MM_HINT_T0);
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c));
                __m256 q0 = _mm256_cvtepi32_ps(_mm256_and_si256(v, low));
                __m256 q1 = _mm256_cvtepi32_ps(v); /* lo + 16 hi: the odd k's activation is xo / 16 */
                for (int i = 0; i < MR; i++) {
                    even[i * NB + b] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + i * K + 2 * p), q0, even[i * NB + b]);
                    odd[i * NB + b] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + i * K + 2 * p + 1), q1, odd[i * NB + b]);
                }
            }
        }
        for (int b = 0; b < NB; b++) {
            const uint16_t *s = sz + b * G * 16 + g * 16;
            __m256 scale = bf16x8(s), zero = _mm256_fmadd_ps(minus8, scale, bf16x8(s + 8));
            for (int i = 0; i < MR; i++) {
                int a = i * NB + b;
                total[a] = _mm256_fmadd_ps(_mm256_add_ps(even[a], odd[a]), scale, total[a]);
                total[a] = _mm256_fmadd_ps(_mm256_set1_ps(xsum[i * G + g]), zero, total[a]);
            }
        }
    }
    float out[8];
    for (int i = 0; i < MR; i++)
        for (int b = 0; b < NB; b++) {
            _mm256_storeu_ps(out, total[i * NB + b]);
            for (int j = 0; j < 8 && b * 8 + j < left; j++) y[i * N + b * 8 + j] = bf16_round(out[j]);
        }
}

/* x (M, K) bf16, codes and scale_zero blocked as above for 8 * n_blocks rows, y (M, n_out) bf16 (n_out <=
   8 * n_blocks); K % group == 0, group even. Returns 0, or -1 if out of memory. */
int speechrs_int4_linear(const uint16_t *x_bf16, int64_t M, int64_t K, const uint8_t *codes,
                         const uint16_t *scale_zero, int64_t group, int64_t n_blocks, int64_t n_out, uint16_t *y,
                         int threads) {
    const int64_t G = K / group;
    float *x = widen(x_bf16, M * K), *xsum = malloc((size_t)(M * G + 1) * sizeof(float));
    if (!x || !xsum) {
        free(x);
        free(xsum);
        return -1;
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float s = 0.0f;
            for (float *e = x + m * K + g * group, *end = e + group; e < end; e += 2) {
                s += e[0];
                s += e[1];
                e[1] *= 0.0625f; /* then (xe, xo) -> (xe - xo / 16, xo / 16): tile4's (lo, f) */
                e[0] -= e[1];
            }
            xsum[m * G + g] = s;
        }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < (n_blocks + 3) / 4; t++) {
        const int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
        for (int64_t m = 0; m < M;) {
            const float *xm = x + m * K, *sm = xsum + m * G;
            uint16_t *ym = y + m * n_out + b0 * 8;
            const uint8_t *c = codes + b0 * K * 4;
            const uint16_t *s = scale_zero + b0 * G * 16;
            const int64_t left = n_out - b0 * 8;
#define TILE(b, MR, NB) tile4(xm, sm, K, c + (b) * K * 4, s + (b) * G * 16, group, ym + (b) * 8, n_out, left - (b) * 8, MR, NB)
            if (M - m >= 4) {
                for (int b = 0; b < nb; b++) TILE(b, 4, 1);
                m += 4;
            } else if (M - m >= 2) {
                int b = 0;
                for (; b + 2 <= nb; b += 2) TILE(b, 2, 2);
                for (; b < nb; b++) TILE(b, 2, 1);
                m += 2;
            } else {
                if (nb == 4)
                    TILE(0, 1, 4);
                else
                    for (int b = 0; b < nb; b++) TILE(b, 1, 1);
                m += 1;
            }
#undef TILE
        }
    }
    free(x);
    free(xsum);
    return 0;
}

/* bf16 weights as they are, (N, K) rows `ld` elements apart (a view into a fused weight too): for the decode
   steps of a bf16 model on a CPU without native bf16, where torch's bf16 Linear reads well below the memory's
   bandwidth. y (M, N) bf16 = x (M, K) bf16 @ w^T, fp32 sums, K % 8 == 0. The 8 rows of a tile are 8 streams, each
   prefetched a line at a time 16 KiB ahead (faster than 1 KiB: docs/kernels.md). Where a row is shorter than that
   (K = 2048) the prefetch reaches into the rows the next pass reads. */
#define BF16_PREFETCH 8192 /* elements */

static inline __attribute__((always_inline)) void tile_bf16(const float *x, int64_t K, const uint16_t *w, int64_t ld,
                                                            uint16_t *y, int64_t N, int MR, int NR) {
    __m256 acc[8];
    for (int a = 0; a < MR * NR; a++) acc[a] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 wv[8];
        for (int j = 0; j < NR; j++) {
            const uint16_t *p = w + j * ld + k;
            if ((k & 31) == 0) _mm_prefetch((const char *)(p + BF16_PREFETCH), _MM_HINT_T0);
            wv[j] = bf16x8(p);
        }
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * K + k);
            for (int j = 0; j < NR; j++) acc[i * NR + j] = _mm256_fmadd_ps(xv, wv[j], acc[i * NR + j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) y[i * N + j] = bf16_round(hsum(acc[i * NR + j]));
}

int speechrs_bf16_linear(const uint16_t *x_bf16, int64_t M, int64_t K, const uint16_t *w, int64_t ld, int64_t N,
                         uint16_t *y, int threads) {
    float *x = widen(x_bf16, M * K);
    if (!x) return -1;
    const int64_t n_blocks = (N + 7) / 8;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n_blocks; b++) {
        const int64_t n0 = b * 8, rows = N - n0 < 8 ? N - n0 : 8;
        const uint16_t *wb = w + n0 * ld;
        for (int64_t m = 0; m < M;) {
            const float *xm = x + m * K;
            uint16_t *ym = y + m * N + n0;
            int step = M - m >= 4 ? 4 : M - m >= 2 ? 2 : 1;
            if (rows < 8) { /* the last block's rows one at a time */
                for (int64_t j = 0; j < rows; j++) {
                    if (step == 4)
                        tile_bf16(xm, K, wb + j * ld, ld, ym + j, N, 4, 1);
                    else if (step == 2)
                        tile_bf16(xm, K, wb + j * ld, ld, ym + j, N, 2, 1);
                    else
                        tile_bf16(xm, K, wb + j * ld, ld, ym + j, N, 1, 1);
                }
            } else if (step == 4) {
                for (int j0 = 0; j0 < 8; j0 += 2) tile_bf16(xm, K, wb + j0 * ld, ld, ym + j0, N, 4, 2);
            } else if (step == 2) {
                for (int j0 = 0; j0 < 8; j0 += 4) tile_bf16(xm, K, wb + j0 * ld, ld, ym + j0, N, 2, 4);
            } else {
                tile_bf16(xm, K, wb, ld, ym, N, 1, 8);
            }
            m += step;
        }
    }
    free(x);
    return 0;
}
