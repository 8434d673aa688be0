/* int4 (on avx512.c's 16-row layout) and int8 (on a layout of its own) through AMX's tile unit: the "amx" variant
   (speechrs/kernels/ builds and calls them; docs/kernels.md has their layouts, prefetch distances and measurements).

   The vectors tile4_avx512 makes from 64 code bytes are exactly the rows of an AMX B tile (row = a pair of k, 32-bit
   lane j = output row j's pair), and a 64-byte run of the reordered activations is an A tile row holding the same
   pairs: so per block and 32 along K (4 chunks) the 16 converted vectors are stored as one 1 KiB B tile and one
   TDPBF16PS multiplies them by up to 16 rows of x at once, where the AVX-512 kernel spends one vdpbf16ps per row
   per vector. A group's sums are stored from the C tile and scaled as in tile4_avx512: y += scale * sum + zero *
   sum(x over the group). The tile unit sums the products in fp32 its own way (16-pair dot products equal neither a
   vdpbf16ps chain nor fp32 sums rounded pair by pair): results differ from the AVX-512 kernel's within fp32
   rounding, and do not depend on the rows beside them. Linux lets a process use tiles after asking
   (speechrs_amx_request).

   SPEECHRS_NO_AMX (a compiler too old for AMX intrinsics) leaves these kernels out, and so does SPEECHRS_NO_AVX512:
   they build on the AVX-512 BF16 pieces of kernels.h. */
#include <stdlib.h>

#include "../kernels.h"

#if !defined(SPEECHRS_NO_AVX512) && !defined(SPEECHRS_NO_AMX)
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
    if (speechrs_int4_activations(x, M, K, group, &xp, &xsum)) return -1;
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
/* each of the 4 block streams 2 KiB ahead: 4 streams farther ahead crowd the L1 (docs/kernels.md) */
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
   path). */
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
