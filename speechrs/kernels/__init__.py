"""speechrs's own CPU kernels (csrc/), built at first use with the machine's C compiler and called through ctypes.

build.py compiles them into a per-user cache and says whether and which variant runs here (`available()`,
`why_not()`, `variant()`); ops.py holds the C functions' signatures and the torch-facing wrappers; cpu.py reads what
the CPU computes fast. docs/kernels.md describes the variants, their layouts and their measurements.
"""

from speechrs.kernels.build import AMX_FLAGS, AVX512_FLAGS, INT4_WIDE, available, kernel_name, variant, why_not
from speechrs.kernels.build import _amx_granted as _amx_granted
from speechrs.kernels.build import _library as _library
from speechrs.kernels.cpu import cpu_flags, cpu_native_bf16
from speechrs.kernels.ops import (
    attend_one,
    attends,
    bf16_linear,
    bf16_step_kernels,
    int4_linear,
    int4_weights,
    int4_weights_avx2,
    int8_linear,
    int8_weights,
    quantize_int4,
    quantize_int4_blocked,
    quantize_int8,
    quantizes,
    rms_norm,
    rope,
)

__all__ = [
    "AMX_FLAGS",
    "AVX512_FLAGS",
    "INT4_WIDE",
    "attend_one",
    "attends",
    "available",
    "bf16_linear",
    "bf16_step_kernels",
    "cpu_flags",
    "cpu_native_bf16",
    "int4_linear",
    "int4_weights",
    "int4_weights_avx2",
    "int8_linear",
    "int8_weights",
    "kernel_name",
    "quantize_int4",
    "quantize_int4_blocked",
    "quantize_int8",
    "quantizes",
    "rms_norm",
    "rope",
    "variant",
    "why_not",
]
