"""Where a matmul's rows go, by count: every threshold that picks between a kernel and a GEMM, in one place. Read at
call time (routes.NAME), so a test or a benchmark may move one. The measurements they come from are in
docs/performance.md ("Measurements behind the code")."""

# int8: from this many rows on (a prefill) the codes are converted for oneDNN's GEMM (bf16, fp32 without native
# bf16) and scaled after, which beats torch's weight-only kernel there
DEQUANT_ROWS = 64
# ...later with speechrs's AVX2 and AVX-512 kernels, which hold their speed to more rows; AMX's bf16 GEMM is faster
INT8_KERNEL_ROWS = {"avx2": 192, "avx512": 128, "amx": DEQUANT_ROWS}
# int4: from this many rows on, weights blocked for speechrs's kernels are made bf16 (AVX-512 BF16, AMX) or fp32
# (AVX2 without native bf16) in C for oneDNN's GEMM; elsewhere the int4 kernel takes every row count
INT4_GEMM_ROWS = {"avx512": 64, "amx": 64, "avx2": 192}
# bf16 without native bf16: from this many rows on a matmul is compute-bound and the fp32 GEMM wins despite
# converting the weight...
UPCAST_ROWS = 16
# ...but not against speechrs's bf16 kernel, which converts each weight in registers and stays faster to this many
BF16_KERNEL_ROWS = 256
# a decode step's RMSNorm and RoPE go through speechrs's kernels up to this many elements; torch's ops, parallel,
# take the rest
STEP_KERNEL_ELEMENTS = 2**16
