/* Weight-only int8 and int4 matmuls on AVX2 + FMA (speechrs/kernels/ builds and calls them).

   Activations come in and results go out in bf16, the contract of torch's weight-only kernels that quant.py
   follows everywhere: x is widened to fp32 once per call, sums run in fp32, each result is rounded to bf16
   (to nearest even, as torch rounds). Doing both here saves three torch ops per call (~15 us of 73).

   int8: y (M, N) = (x (M, K) @ codes (N, K)^T) * scale (N,)

   The codes are blocked by quant.Int8Linear at load: [N/8][K/8][8 rows][8 k], so one block of 8 output rows is
   one contiguous stream of 64 bytes per step of 8 along K. Measured on 2 Zen 3 cores (issue 16): rows read as 8
   separate streams reached 12.6-16.5 GB/s, the blocked stream 15-18, and with a software prefetch 16 steps ahead
   20-23 GB/s, the machine's read bandwidth (a 1 GiB sum: 22 GB/s); torch's int8 kernel 10.5-17.9.

   Every output is the same chain of FMAs over K in steps of 8 (one 8-lane accumulator) and the same horizontal
   sum, whatever the tile that computes it: a row's result does not depend on the rows beside it (batching). */
#include <stdlib.h>

#include "kernels.h"

#define PREFETCH_BYTES 1024 /* 16 steps of 64 bytes ahead */
/* the int8 kernel's prefetch, 64 lines ahead (2 Zen 3 cores, 2 rows: 1 KiB 22-25 GB/s, 2 KiB 24-25; over 16 of
   Voxtral's decoder layers at one row, alternating builds: 2 KiB 25.3-27.2 G weights/s, 4 KiB 28.5-30.0, 8-16 KiB
   28.6-30.7; two rows and Dia's step alike), and the k a pass takes before the next pass's turn (block_rows; 128:
   27-28 GB/s, 256: 29-30, 512: 26-28) */
#define INT8_PREFETCH_BYTES 4096
#define INT8_CHUNK 256

/* x (M, K) bf16 -> fp32, in a buffer the caller frees (NULL if none could be had). */
static float *widen(const uint16_t *x, int64_t n) {
    size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64; /* aligned_alloc wants a multiple */
    float *out = aligned_alloc(64, bytes);
    /* 64-byte aligned: a row's 32-byte loads never straddle two cache lines (K % 8 == 0). malloc's 16-byte
       alignment split half of them, and the int8 kernel at 4 rows read 12.5-12.8 G weights/s or 16.1-17.9 by the
       buffer's luck (8 rows 6.4 or 8.5-8.9); aligned, 16.2-17.9 and 8.4-9.1 every time (2 Zen 3 cores) */
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
   INT8_CHUNK k, so each 64-byte line is read from memory once (by the first pass) and from L1 by the others: a
   pass over the whole K before the next (a 64 KiB block at K = 8192 then comes back from L2, its lines half used
   by each pass) streamed 22-25 GB/s at 2 rows, in turns 28-30 (2 Zen 3 cores, pure reads 34-40). One row takes
   two passes of 4 too: 33.7-34.1 GB/s where one pass of 8 read 26.3-26.5 in the same runs. */
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
   call and a step converts two vectors (lo, f) for 4 vector ops per 16 weights instead of 5. One core of Zen 3, 64
   rows x 2048 in L2: 1 row 21.3 -> 25.7 G weights/s, 2 rows 15.4 -> 16.2 (2 rows ride the FMA units: 2 FMAs of
   8 lanes a cycle make 20.8 G weights/s at 2.6 GHz). */

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
   steps of a bf16 model on a CPU without native bf16, where torch's bf16 Linear reads 11-13 GB/s at one row and
   7-8 at two (2 Zen 3 cores, 22-24 GB/s of bandwidth). y (M, N) bf16 = x (M, K) bf16 @ w^T, fp32 sums, K % 8 == 0.
   The 8 rows of a tile are 8 streams, each prefetched a line at a time 16 KiB ahead: over Dia's 37 largest
   decoder weights (1.7 GiB, 2 Zen 3 cores, alternating builds) 1 KiB read 23-28 GB/s at 2 rows, 19 at 4, 16 KiB
   29.5-33.5 and 21-27 (1 row 26-31 against 30-36; Voxtral's shapes at 1 row 28.1-28.9 against 28.4-29.6), and a
   Dia bf16 decode step's linears took 85-95 ms instead of 113.5. Where a row is shorter than that (K = 2048) the
   prefetch reaches into the rows the next pass reads. */
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

/* ---- AVX-512 BF16 (Zen 4/5, Cooper Lake, Sapphire Rapids and later): the same layouts, read 16 lanes wide ----

   The int8 and int4 codes keep the blocked layouts above (quant.py blocks them once, whatever the ISA). Here the
   weights are made exact bf16 in registers and multiplied by the bf16 activations as they come with vdpbf16ps
   (16 lanes, each a pair of k: two exact products added in fp32), so x is never widened and one instruction does
   32 multiply-adds. Every output is again one fixed chain whatever the tile (batch-invariant). The library is
   built with -mavx2 -mfma; these functions carry their own target and run only where kernels/ has read the
   CPU's avx512_bf16 flag. */
#ifndef SPEECHRS_NO_AVX512
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
/* int8's code stream prefetched 8 KiB ahead: from memory (two 50 MB weights in turn, 2 Zen 5 cores) 1-2 rows read
   39-40 GB/s against 33-36 at 2 KiB and 4 rows 28-36 against 23-28 (1 KiB: less again) */
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

/* int4 on AVX-512 BF16 has a layout of its own (quant.Int4Linear blocks the portable codes for it at load):
   16 output rows to a block, and per block and chunk of 8 along K 64 bytes [16 rows][4 bytes], byte t of row j
   being row j's portable byte t of the chunk (k = 8c + 2t low nibble, 8c + 2t + 1 high). scale_zero is
   [N/16][K/group][scale, zero][16 rows] bf16.

   One 64-byte load gives 128 weights: read as 32 words, each word's low 4 bits index the table of q - 8 (vpermw
   reads 5 bits: the table is written twice, so bit 4 is ignored), so the words themselves, shifted by 8, 4 and 12,
   give four vectors whose 32-bit lane j holds row j's pair (k0, k4), (k2, k6), (k1, k5), (k3, k7) of the chunk.
   The activations are reordered once per call so each of those pairs is one 32-bit word, broadcast to all 16
   lanes. Against the first layout (8 rows, each 16 code bytes widened to 16 lanes) this takes 4 shuffles and 3
   shifts per 128 weights instead of 16 operations: on 2 Zen 4 cores 1.2-1.6x at one row, 1.35-1.7x at 2-17.
   Per row and block two sums ((k0, k4) + (k2, k6) and (k1, k5) + (k3, k7)) run through a group, then
   y += scale * (sum0 + sum1) + zero * sum(x over the group): the same chain whatever the tile. */
#define PREFETCH_INT4 4096 /* 64 steps of 64 bytes ahead; 1-8 KiB read the same within the machine's noise */

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

/* The int4 kernels' activations: x (M, K) with each chunk of 8 reordered as the pairs (x0 x4) (x2 x6) (x1 x5)
   (x3 x7) that the converted codes line up with, and each group's sum (for the zero points); buffers the caller
   frees; -1 (nothing to free) if none could be had. */
static int int4_activations(const uint16_t *x, int64_t M, int64_t K, int64_t group, uint16_t **xp_out,
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
    if (int4_activations(x, M, K, group, &xp, &xsum)) return -1;
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

/* ---- AMX (Sapphire Rapids and later): int4 (on the 16-row layout above) and int8 through the tile unit ----

   The vectors tile4_avx512 makes from 64 code bytes are exactly the rows of an AMX B tile (row = a pair of k, 32-bit
   lane j = output row j's pair), and a 64-byte run of the reordered activations is an A tile row holding the same
   pairs: so per block and 32 along K (4 chunks) the 16 converted vectors are stored as one 1 KiB B tile and one
   TDPBF16PS multiplies them by up to 16 rows of x at once, where the AVX-512 kernel spends one vdpbf16ps per row
   per vector. A group's sums are stored from the C tile and scaled as in tile4_avx512: y += scale * sum + zero *
   sum(x over the group). The tile unit sums the products in fp32 its own way (measured: 16-pair dot products
   equal neither a vdpbf16ps chain nor fp32 sums rounded pair by pair): results differ from the AVX-512 kernel's
   within fp32 rounding, and do not depend on the rows beside them. Linux lets a
   process use tiles after asking (speechrs_amx_request). */
#ifndef SPEECHRS_NO_AMX
#include <sys/syscall.h>
#include <unistd.h>
#define AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* 0 once this process may use AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), else -1. */
int speechrs_amx_request(void) { return syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 0 : -1; }

/* For MR rows of x, unless the tiles are so already (*configured: the rows they were last configured for).
   tiles: 0-3 the C tiles of 4 blocks (MR rows of 16 fp32), 4 A (MR rows of 32 bf16), 5-6 B (16 pairs of k x 16
   outputs), taken in turn so that a block's conversion overlaps the previous block's multiply */
AMX static void amx_configure(int MR, int *configured) {
    if (MR == *configured) return;
    *configured = MR;
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 7; t++) {
        cfg.rows[t] = t < 5 ? (uint8_t)MR : 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* C tiles 0-3 (of 4 blocks) += the A tile (4) times each block's B tile in bt, for the first nb blocks; B tiles 5
   and 6 taken in turn so that one block's load overlaps the previous block's multiply */
AMX static inline __attribute__((always_inline)) void amx_multiply(uint16_t (*bt)[16 * 32], int64_t nb) {
    _tile_loadd(5, bt[0], 64);
    _tile_dpbf16ps(0, 4, 5);
    if (nb > 1) {
        _tile_loadd(6, bt[1], 64);
        _tile_dpbf16ps(1, 4, 6);
    }
    if (nb > 2) {
        _tile_loadd(5, bt[2], 64);
        _tile_dpbf16ps(2, 4, 5);
    }
    if (nb > 3) {
        _tile_loadd(6, bt[3], 64);
        _tile_dpbf16ps(3, 4, 6);
    }
}

AMX static inline __attribute__((always_inline)) void amx_zero(void) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

/* chunks c0 .. c0 + 3 of a block's codes as B tile rows at bt: per chunk the pairs (x0 x4) (x2 x6) (x1 x5) (x3 x7) */
AMX static inline __attribute__((always_inline)) void amx_b_rows(const uint8_t *chunk, __m512i table, uint16_t *bt) {
    for (int c = 0; c < 4; c++) {
        const uint8_t *p = chunk + c * 64;
        _mm_prefetch((const char *)(p + PREFETCH_INT4), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512((const void *)p);
        uint16_t *row = bt + c * 4 * 32;
        _mm512_store_si512((void *)row, _mm512_permutexvar_epi16(v, table));
        _mm512_store_si512((void *)(row + 32), _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), table));
        _mm512_store_si512((void *)(row + 64), _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table));
        _mm512_store_si512((void *)(row + 96), _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table));
    }
}

/* As speechrs_int4_linear_avx512 (same arguments, same layout); group % 32 == 0. */
AMX int speechrs_int4_linear_amx(const uint16_t *x, int64_t M, int64_t K, const uint8_t *codes,
                                 const uint16_t *scale_zero, int64_t group, int64_t n_blocks, int64_t n_out,
                                 uint16_t *y, int threads) {
    const int64_t G = K / group, C = K / 8;
    uint16_t *xp;
    float *xsum;
    if (int4_activations(x, M, K, group, &xp, &xsum)) return -1;
#pragma omp parallel num_threads(threads)
    {
        const __m512i table = int4_table();
        uint16_t bt[2][4][16 * 32] __attribute__((aligned(64))); /* each block's B tile, two steps */
        float ct[4][16 * 16] __attribute__((aligned(64)));    /* each block's group sums from its C tile */
        float total[4][16 * 16] __attribute__((aligned(64)));
        int configured = 0;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < (n_blocks + 3) / 4; t++) {
            const int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
            const uint8_t *block = codes + b0 * C * 64;
            for (int64_t m0 = 0; m0 < M; m0 += 16) {
                const int MR = M - m0 < 16 ? (int)(M - m0) : 16;
                amx_configure(MR, &configured);
                memset(total, 0, sizeof total);
                /* a step is 32 along K (4 chunks); its B tiles are converted one step ahead of their multiply, so
                   that the tile loads do not wait on the stores that made them */
                const int64_t steps = C / 4, per_group = group / 32;
                for (int b = 0; b < nb; b++) amx_b_rows(block + b * C * 64, table, bt[0][b]);
                for (int64_t j = 0; j < steps; j++) {
                    if (j + 1 < steps)
                        for (int b = 0; b < nb; b++)
                            amx_b_rows(block + (b * C + 4 * (j + 1)) * 64, table, bt[(j + 1) & 1][b]);
                    if (j % per_group == 0) amx_zero();
                    uint16_t(*bj)[16 * 32] = bt[j & 1];
                    _tile_loadd(4, xp + m0 * K + 32 * j, K * 2);
                    amx_multiply(bj, nb);
                    if ((j + 1) % per_group) continue;
                    const int64_t g = j / per_group;
                    _tile_stored(0, ct[0], 64);
                    _tile_stored(1, ct[1], 64);
                    _tile_stored(2, ct[2], 64);
                    _tile_stored(3, ct[3], 64);
                    for (int b = 0; b < nb; b++) {
                        const uint16_t *s = scale_zero + ((b0 + b) * G + g) * 32; /* 16 scales, then 16 zeros */
                        const __m512 scale = _mm512_castsi512_ps(
                            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)s)), 16));
                        const __m512 zero = _mm512_castsi512_ps(_mm512_slli_epi32(
                            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 16))), 16));
                        for (int i = 0; i < MR; i++) {
                            __m512 sum = _mm512_fmadd_ps(_mm512_load_ps(ct[b] + 16 * i), scale,
                                                         _mm512_load_ps(total[b] + 16 * i));
                            sum = _mm512_fmadd_ps(_mm512_set1_ps(xsum[(m0 + i) * G + g]), zero, sum);
                            _mm512_store_ps(total[b] + 16 * i, sum);
                        }
                    }
                }
                for (int b = 0; b < nb; b++)
                    for (int i = 0; i < MR; i++)
                        for (int j = 0; j < 16 && (b0 + b) * 16 + j < n_out; j++)
                            y[(m0 + i) * n_out + (b0 + b) * 16 + j] = bf16_round(total[b][16 * i + j]);
            }
        }
        if (configured) _tile_release();
    }
    free(xsum);
    free(xp);
    return 0;
}

/* int8 on AMX has a layout of its own (quant.Int8Linear blocks the codes for it at load): 16 output rows to a
   block, k-major, [N/16][K][16 rows], so the 16 codes of one k are one 16-byte load. Widened to fp32 (exact) the
   codes of k even and k odd give one B tile row (lane j: row j's pair) by keeping the top half of each float, the
   exact bf16: (even >> 16) | (odd & 0xffff0000). A step of 32 along K (512 bytes per block) is one TDPBF16PS for up
   to 16 rows of x, whose A tile rows are x itself (pairs in their natural order); the C tiles sum over all of K and
   are scaled once at the end. K % 32 == 0. */
/* each of the 4 block streams 2 KiB ahead: at one row, 16384 x 3072, 24.4 GB/s against 14.7 at 8 KiB and 12.6 at
   32 KiB (4 streams that far ahead crowd the L1) */
#define PREFETCH_AMX8 2048
AMX static inline __attribute__((always_inline)) void amx8_b_rows(const int8_t *step, uint16_t *bt) {
    const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 128), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 192), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 256), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 320), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 384), _MM_HINT_T0);
    _mm_prefetch((const char *)(step + PREFETCH_AMX8 + 448), _MM_HINT_T0);
    for (int p = 0; p < 16; p++) {
        const __m512i even = _mm512_castps_si512(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(step + 32 * p)))));
        const __m512i odd = _mm512_castps_si512(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(step + 32 * p + 16)))));
        /* (a >> 16) | (b & c): ternary-logic table 0xF8 over (a, b, c) */
        const __m512i pair = _mm512_ternarylogic_epi32(_mm512_srli_epi32(even, 16), odd, top, 0xF8);
        _mm512_store_si512((void *)(bt + 32 * p), pair);
    }
}

/* x (M, K) bf16, codes blocked as above for 16 * n_blocks rows, scale (16 * n_blocks,) fp32, y (M, n_out) bf16 */
AMX int speechrs_int8_linear_amx(const uint16_t *x, int64_t M, int64_t K, const int8_t *codes, const float *scale,
                                 int64_t n_blocks, int64_t n_out, uint16_t *y, int threads) {
#pragma omp parallel num_threads(threads)
    {
        uint16_t bt[2][4][16 * 32] __attribute__((aligned(64))); /* each block's B tile, two steps */
        float ct[16 * 16] __attribute__((aligned(64)));
        int configured = 0;
        const int64_t steps = K / 32;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < (n_blocks + 3) / 4; t++) {
            const int64_t b0 = t * 4, nb = n_blocks - b0 < 4 ? n_blocks - b0 : 4;
            const int8_t *block = codes + b0 * K * 16;
            for (int64_t m0 = 0; m0 < M; m0 += 16) {
                const int MR = M - m0 < 16 ? (int)(M - m0) : 16;
                amx_configure(MR, &configured);
                amx_zero();
                for (int b = 0; b < nb; b++) amx8_b_rows(block + b * K * 16, bt[0][b]);
                for (int64_t j = 0; j < steps; j++) { /* step j + 1's B tiles made before step j's are loaded */
                    if (j + 1 < steps)
                        for (int b = 0; b < nb; b++)
                            amx8_b_rows(block + b * K * 16 + (j + 1) * 512, bt[(j + 1) & 1][b]);
                    uint16_t(*bj)[16 * 32] = bt[j & 1];
                    _tile_loadd(4, x + m0 * K + 32 * j, K * 2);
                    amx_multiply(bj, nb);
                }
                for (int b = 0; b < nb; b++) {
                    switch (b) { /* tile numbers are part of the instruction */
                    case 0: _tile_stored(0, ct, 64); break;
                    case 1: _tile_stored(1, ct, 64); break;
                    case 2: _tile_stored(2, ct, 64); break;
                    default: _tile_stored(3, ct, 64); break;
                    }
                    const float *s = scale + (b0 + b) * 16;
                    for (int i = 0; i < MR; i++)
                        for (int j = 0; j < 16 && (b0 + b) * 16 + j < n_out; j++)
                            y[(m0 + i) * n_out + (b0 + b) * 16 + j] = bf16_round(ct[16 * i + j] * s[j]);
                }
            }
        }
        if (configured) _tile_release();
    }
    return 0;
}

/* The int8 codes of blocks [b0, b1) (of 16 rows, the AMX layout above) made bf16 (exact) and transposed for a
   GEMM: out (K, 16 (b1 - b0)), out[k][16 b + j] = code of row 16 (b0 + b) + j at k (quant.Int8Linear's prefill
   path: 1.6 ms for 2720 x 3072 where torch ops took 2.9; the AVX-512 layout's conversion takes 1.2). */
AMX int speechrs_int8_weights_amx(const int8_t *codes, int64_t K, int64_t b0, int64_t b1, uint16_t *out,
                                  int threads) {
    const int64_t width = 16 * (b1 - b0);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < K; k++)
        for (int64_t b = b0; b < b1; b++) {
            const __m128i q = _mm_loadu_si128((const __m128i *)(codes + (b * K + k) * 16));
            const __m512i f = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
            _mm256_storeu_si256((__m256i *)(out + k * width + (b - b0) * 16),
                                _mm512_cvtepi32_epi16(_mm512_srli_epi32(f, 16)));
        }
    return 0;
}
#endif
#endif
