/* The small ops of a bf16 decode step on a CPU without native bf16, on AVX2 + FMA (kernels/ calls them;
   docs/kernels.md): attention of one query per row over a bf16 KV cache (layers.attend_one), RMSNorm
   (layers.RMSNorm) and RoPE (layers.apply_rope_interleaved) of a few rows. Each is a few torch ops of a few
   microseconds on such rows, but a step has a hundred of them.

   Attention.

   Without native bf16 the caches were held in fp32 for torch's fp32 matmuls, whose batched matmuls of a few rows
   read the cache well below the memory's bandwidth. Here k and v stay bf16 (half the bytes and half the memory;
   their values are bf16 anyway, the outputs of bf16 linears) and are widened in registers, each kv head's keys and
   values read once for all the query heads that share it (GQA). Two calls around torch's softmax: the scores, then
   the weighted sum of the values; sums in fp32, the output rounded to bf16 once, as torch's fp32 path rounds it.

   Layout: q (B, H, E) bf16, contiguous; element (b, j, s, e) of k or v at b * sb + j * sj + s * E + e (a cache's
   view [:, :, :S] keeps these strides); query head h reads kv head h / (H / K); E % 8 == 0, E <= MAX_E. */
#include <math.h>

#include "kernels.h"

#define MAX_E 256

/* scores of query heads q0..q0+NQ-1 (their fp32 rows in qf, E apart) against the S keys at kj */
static inline __attribute__((always_inline)) void scores_rows(const float *qf, const uint16_t *kj, int64_t S, int64_t E,
                                                              float scale, float *out, int NQ) {
    for (int64_t s = 0; s < S; s++) {
        const uint16_t *key = kj + s * E;
        __m256 acc[4];
        for (int g = 0; g < NQ; g++) acc[g] = _mm256_setzero_ps();
        for (int64_t e = 0; e < E; e += 8) {
            const __m256 kv = bf16x8(key + e);
            for (int g = 0; g < NQ; g++) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qf + g * E + e), kv, acc[g]);
        }
        for (int g = 0; g < NQ; g++) out[g * S + s] = hsum(acc[g]) * scale;
    }
}

/* scores (B, H, S) fp32 = scale * (q . k) */
int speechrs_attend_scores(const uint16_t *q, const uint16_t *k, int64_t B, int64_t H, int64_t K, int64_t S,
                           int64_t E, int64_t sb, int64_t sj, float scale, float *scores, int threads) {
    if (E % 8 || E > MAX_E || H % K) return -1;
    const int64_t G = H / K;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < B * K; t++) {
        const int64_t b = t / K, j = t % K;
        const uint16_t *kj = k + b * sb + j * sj;
        float qf[4 * MAX_E];
        for (int64_t g0 = 0; g0 < G; g0 += 4) {  /* up to 4 query heads per pass over the keys */
            const int64_t h0 = j * G + g0, n = G - g0 < 4 ? G - g0 : 4;
            for (int64_t i = 0; i < n * E; i++) qf[i] = bf16_float(q[(b * H + h0) * E + i]);
            float *out = scores + (b * H + h0) * S;
            if (n == 4)
                scores_rows(qf, kj, S, E, scale, out, 4);
            else if (n == 3)
                scores_rows(qf, kj, S, E, scale, out, 3);
            else if (n == 2)
                scores_rows(qf, kj, S, E, scale, out, 2);
            else
                scores_rows(qf, kj, S, E, scale, out, 1);
        }
    }
    return 0;
}

/* out rows of query heads h0..h0+NQ-1, 32 values from e0: weights w (NQ rows, S apart) times the S values at vj */
static inline __attribute__((always_inline)) void values_rows(const float *w, const uint16_t *vj, int64_t S, int64_t E,
                                                              int64_t e0, uint16_t *out, int NQ) {
    __m256 acc[2][4];
    for (int g = 0; g < NQ; g++)
        for (int c = 0; c < 4; c++) acc[g][c] = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; s++) {
        const uint16_t *value = vj + s * E + e0;
        __m256 vv[4];
        for (int c = 0; c < 4; c++) vv[c] = bf16x8(value + 8 * c);
        for (int g = 0; g < NQ; g++) {
            const __m256 ws = _mm256_broadcast_ss(w + g * S + s);
            for (int c = 0; c < 4; c++) acc[g][c] = _mm256_fmadd_ps(ws, vv[c], acc[g][c]);
        }
    }
    for (int g = 0; g < NQ; g++)
        for (int c = 0; c < 4; c++) store_bf16x8(out + g * E + e0 + 8 * c, bf16_round8(acc[g][c]));
}

/* out (B, H, E) bf16 = weights (B, H, S) fp32 @ v; here E % 32 == 0 */
int speechrs_attend_values(const float *weights, const uint16_t *v, int64_t B, int64_t H, int64_t K, int64_t S,
                           int64_t E, int64_t sb, int64_t sj, uint16_t *out, int threads) {
    if (E % 32 || H % K) return -1;
    const int64_t G = H / K;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < B * K; t++) {
        const int64_t b = t / K, j = t % K;
        const uint16_t *vj = v + b * sb + j * sj;
        for (int64_t g0 = 0; g0 < G; g0 += 2) {  /* two query heads per pass over the values, 32 of E at a time */
            const int64_t h0 = j * G + g0;
            const float *w = weights + (b * H + h0) * S;
            uint16_t *o = out + (b * H + h0) * E;
            for (int64_t e0 = 0; e0 < E; e0 += 32) {
                if (G - g0 >= 2)
                    values_rows(w, vj, S, E, e0, o, 2);
                else
                    values_rows(w, vj, S, E, e0, o, 1);
            }
        }
    }
    return 0;
}

/* RMSNorm of M rows of D bf16 (layers.RMSNorm on bf16, as transformers computes it): in fp32, the row times
   1 / sqrt(mean of its squares + eps), rounded to bf16, times the bf16 gain, rounded again: one call for torch's
   eight ops. The sum of squares runs in 8 lanes, in another order than torch's: the mean can differ in its last
   bit. D % 8 == 0. */
int speechrs_rms_norm(const uint16_t *x, int64_t M, int64_t D, const uint16_t *gain, float eps, uint16_t *y) {
    if (D % 8) return -1;
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *row = x + m * D;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 v = bf16x8(row + d);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        const __m256 r = _mm256_set1_ps(1.0f / sqrtf(hsum(acc) / (float)D + eps));
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 n = bf16_round8(_mm256_mul_ps(bf16x8(row + d), r));
            store_bf16x8(y + m * D + d, bf16_round8(_mm256_mul_ps(bf16x8(gain + d), n))); /* exact: two bf16 */
        }
    }
    return 0;
}

/* RoPE on interleaved pairs (layers.apply_rope_interleaved on bf16): x (B, H, T, E) bf16, element (b, h, t, e) at
   b * sb + h * sh + t * st + e (a transposed projection's view), rot (T, E / 2) complex64 read as (T, E) floats
   (cos, sin) per pair; out (B, H, T, E) bf16, contiguous. Each pair (a, b) times (c, s) as torch multiplies complex
   numbers, (ac - bs, as + bc) in fp32 with each product rounded, then rounded once to bf16: one call for torch's
   six ops. E even. */
int speechrs_rope(const uint16_t *x, int64_t B, int64_t H, int64_t T, int64_t E, int64_t sb, int64_t sh, int64_t st,
                  const float *rot, uint16_t *out) {
    if (E % 2) return -1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                const uint16_t *row = x + b * sb + h * sh + t * st;
                const float *r = rot + t * E;
                uint16_t *o = out + ((b * H + h) * T + t) * E;
                for (int64_t e = 0; e < E; e += 2) {
                    const float a = bf16_float(row[e]), v = bf16_float(row[e + 1]), c = r[e], s = r[e + 1];
                    const float ac = a * c, vs = v * s, as = a * s, vc = v * c;
                    o[e] = bf16_round(ac - vs);
                    o[e + 1] = bf16_round(as + vc);
                }
            }
    return 0;
}
