"""What this CPU computes fast: its x86 flags, whether bf16 matmuls run in hardware, whether it has AMX tiles.
SPEECHRS_NATIVE_BF16 and SPEECHRS_AMX force either answer (tests, benchmarks)."""

import functools

import torch

from speechrs import settings


def cpu_flags() -> frozenset[str] | None:
    """The x86 CPU's feature flags from /proc/cpuinfo; None where there is no such line (not Linux, not x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


# x86 flags (/proc/cpuinfo) of the instructions oneDNN's fast bf16 kernels use. oneDNN also "supports" bf16 on
# plain AVX-512 by emulating it: a Xeon whose hypervisor hides AVX512_BF16 and AMX ran a 2048^3 bf16 matmul at
# 60 GFLOP/s against fp32's 318 (issue 16, benchmarks/machine.py), so its support is not enough.
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "avx_ne_convert"})


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether bf16 matmuls run in hardware here (oneDNN's AVX-512 BF16 / AMX / AVX-NE-CONVERT kernels). Without
    it, torch emulates bf16 and its matmuls run about 5x slower than fp32 (measured on AVX2 and on AVX-512 without
    BF16; issue 16). SPEECHRS_NATIVE_BF16=0 takes the path of a CPU without it (tests, benchmarks), =1 the other."""
    forced = settings.native_bf16()
    if forced is not None:
        return forced
    try:
        onednn = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without these private ops
        return False
    flags = cpu_flags()
    return onednn and (flags is None or bool(flags & X86_BF16_FLAGS))


@functools.cache
def cpu_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Sapphire Rapids and later). There torch's bf16 flash-attention
    kernel answers a decode query 1.5-2.3x faster than attend_one's fp32 matmuls (2 cores, B=2 H=16 K=4 E=128:
    32 vs 56 us at S=100, 95 vs 216 us at S=500, 449 vs 588 us at S=1500); on AVX-512 BF16 without AMX it was
    5-10x slower (attend_one). SPEECHRS_AMX=0 takes the other path, =1 this one."""
    forced = settings.amx()
    if forced is not None:
        return forced
    flags = cpu_flags()
    return flags is not None and "amx_bf16" in flags and cpu_native_bf16()


def upcast_on_this_cpu(t: torch.Tensor) -> bool:
    """A reduced-precision CPU tensor whose matmuls run faster in fp32 here (no native bf16 / fp16)."""
    return t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16) and not cpu_native_bf16()
