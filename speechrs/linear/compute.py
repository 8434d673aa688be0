"""The compute path for the machine at hand: which dtype the weights take and how the linears run.

Chosen once at load from the device and what torch reports of the CPU (its ATen kernel level, and whether oneDNN
has native bfloat16), and said in one line at load, so a user knows why a run is fast or slow.
"""

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from speechrs import kernels
from speechrs.kernels.cpu import cpu_native_bf16
from speechrs.linear import routes
from speechrs.linear.kinds import check_quantization
from speechrs.weights import parse_dtype


@dataclass(frozen=True)
class ComputePlan:
    device: str
    dtype: torch.dtype | None  # the weights' dtype; None keeps the checkpoint's
    quantize: str | None  # int8 / int4 weight-only (quant.py), or None
    summary: str  # one line for the load message: the path and why


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_summary() -> str:
    """e.g. 'AMD EPYC (AVX512, native bf16)': the name, torch's kernel level, and bf16 support."""
    bf16 = "native bf16" if cpu_native_bf16() else "no native bf16"
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, {bf16})"


def _kernel(kind: str) -> str:
    """Which kernel a quantized layer runs, and why."""
    if kind != "cpu":
        return "dequantized per call"
    reason = kernels.why_not()
    return (
        kernels.kernel_name(kernels.variant()) if reason is None else f"torch's kernel: speechrs's not used, {reason}"
    )


def plan(
    device: str, dtype: str = "auto", quantize: str | None = None, chosen_by: str = "", always_int8: str = ""
) -> ComputePlan:
    """The path for `device` given the user's --dtype and --quantize; raises ValueError on a bad name.
    chosen_by: how the device was picked, for the summary (e.g. "auto"); always_int8: what the model makes int8
    whenever it is quantized (its ALWAYS_INT8, e.g. "the audio encoder"), for the summary."""
    kind = torch.device(device).type
    quantize = check_quantization(quantize)
    torch_dtype = parse_dtype(dtype)
    chosen = "" if dtype == "auto" else f"{dtype} as asked"
    if kind == "cuda" and dtype == "auto":
        torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        chosen = f"{torch_dtype} (auto on CUDA)".replace("torch.", "")
    elif kind == "mps" and dtype == "auto":
        torch_dtype, chosen = torch.float16, "float16 (auto on MPS)"
    elif kind == "cpu" and dtype == "auto":
        chosen = "the checkpoint's dtype (auto)"
    if quantize == "int4" and kind != "cpu":
        raise ValueError("int4 weights run on the CPU only in this version; use --quantize int8 or none on " + kind)
    where = cpu_summary() if kind == "cpu" else str(torch.cuda.get_device_name(device) if kind == "cuda" else kind)
    if quantize is not None:
        encoder = f" and {always_int8}'s in int8" if always_int8 else ""
        how = f"{quantize} weight-only decoder linears{encoder} ({_kernel(kind)}), other weights {chosen}"
    elif kind == "cpu" and torch_dtype not in (torch.float32, torch.float16) and cpu_native_bf16():
        how = f"{chosen}; bf16 decode weights are packed for oneDNN"
    elif kind == "cpu" and torch_dtype not in (torch.float32, torch.float16):
        rows = routes.BF16_KERNEL_ROWS if kernels.available() else routes.UPCAST_ROWS
        kernel = (  # the decode step's attention reads bf16 caches there (kernels.bf16_step_kernels)
            ", fewer through speechrs's AVX2 kernels (a decode step's attention too, over bf16 caches)"
            if kernels.available()
            else ""
        )
        how = (
            f"{chosen}; no hardware bf16, so bf16 weights stay bf16 in memory and matmuls of "
            f"{rows}+ rows (encoder, prefill) and attention run in fp32{kernel}"
        )
    elif kind == "cpu" and torch_dtype == torch.float32:
        how = f"{chosen}; fp32 decode weights are packed for oneDNN"
    else:
        how = chosen
    picked = f" ({chosen_by})" if chosen_by else ""
    return ComputePlan(device, torch_dtype, quantize, f"{device}{picked}: {where}: {how}")
