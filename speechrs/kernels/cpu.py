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
# plain AVX-512 by emulating it, several times slower than fp32 (docs/kernels.md), so its support is not enough.
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "avx_ne_convert"})


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether bf16 matmuls run in hardware here (oneDNN's AVX-512 BF16 / AMX / AVX-NE-CONVERT kernels). Without
    it, torch emulates bf16 and its matmuls run several times slower than fp32 (docs/kernels.md).
    SPEECHRS_NATIVE_BF16=0 takes the path of a CPU without it (tests, benchmarks), =1 the other."""
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
    """Whether this CPU has AMX tiles for bf16. There torch's bf16 flash-attention kernel answers a decode query
    faster than attend_one's fp32 matmuls, where on AVX-512 BF16 without AMX it is slower (docs/kernels.md).
    SPEECHRS_AMX=0 takes the other path, =1 this one."""
    forced = settings.amx()
    if forced is not None:
        return forced
    flags = cpu_flags()
    return flags is not None and "amx_bf16" in flags and cpu_native_bf16()


def upcast_on_this_cpu(t: torch.Tensor) -> bool:
    """A reduced-precision CPU tensor whose matmuls run faster in fp32 here (no native bf16 / fp16)."""
    return t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16) and not cpu_native_bf16()
