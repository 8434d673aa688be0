"""bf16 weights on a CPU without native bf16: kept bf16 in memory, multiplied in fp32 where that is faster.

Without AVX-512 BF16 / AMX, torch emulates bf16 matmuls, about 5x slower than fp32 (issue 16: Voxtral's encoder
and prefill of one 30 s chunk took 280 s in bf16 and about 60 s in fp32 on a 2-core AVX2 EPYC). Holding a 3B
model in fp32 doubles its memory, so the weights stay bf16 and a matmul of many rows (the encoder, a prefill)
converts its weight to fp32 for that call: one layer's weight at a time is ever fp32, and the conversion is
amortised over the rows; Voxtral's encoder's two convolutions likewise. A decode step's few rows read the bf16
weight as it is: through speechrs's AVX2 kernel (linear_x86.c) where it runs, which streams 8 rows at a time with
a prefetch, else torch's bf16 Linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechrs import kernels
from speechrs.linear.base import matmul_by_row_blocks, rows_like

# From this many rows on, a matmul is compute-bound and the fp32 GEMM wins despite converting the weight.
UPCAST_ROWS = 16
# ...but not against speechrs's bf16 kernel, which converts each weight in registers: on 2 Zen 3 cores it ran
# 30-42 G multiply-adds/s from 32 to 256 rows where converting + the fp32 GEMM ran 7-19 at 32-128 rows and 23-34
# at 256 (Voxtral's 16384 x 3072, 3072 x 8192, its encoder's 1280 x 5120); torch's bf16 Linear 2-4x slower than
# the kernel from 2 rows on.
KERNEL_ROWS = 256
# The fp32 GEMM converts this many bytes of weight rows at a time and multiplies them while they are in cache: the
# whole weight converted at once (a fresh 200 MB for Voxtral's 16384 x 3072) cost as much as the GEMM. On 2 Zen 3
# cores (2026-12-07), 383 rows of 16384 x 3072: whole 112 GFLOP/s, blocks of 16 MiB 145, of 64 MiB 96 (the bf16
# kernel 125-131); the encoder's 5120 x 1280 and 1280 x 5120 at 1500 rows even within the machine's noise (141-172).
BLOCK_BYTES = 2**24


class UpcastLinear(nn.Module):
    """An nn.Linear over the same (bf16) weight and bias, computing in fp32 from UPCAST_ROWS rows on, or below
    KERNEL_ROWS through speechrs's bf16 kernel where it runs."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        w = linear.weight
        self.kernel = (  # speechrs's bf16 kernel reads (N, K) rows of K % 8 elements, contiguous each
            w.device.type == "cpu" and w.dtype == torch.bfloat16 and w.shape[1] % 8 == 0 and w.stride(1) == 1
        ) and kernels.available()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.kernel and rows < KERNEL_ROWS:
            y = kernels.bf16_linear(x.reshape(-1, self.in_features), self.weight)
            y = y if self.bias is None else y + self.bias
            return rows_like(y, x, self.out_features)
        if rows < UPCAST_ROWS:
            return F.linear(x, self.weight, self.bias)
        weight = self.weight.detach()
        rows_x = x.reshape(-1, self.in_features).float()
        y = matmul_by_row_blocks(rows_x, self.out_features, lambda a, b: weight[a:b].float(), BLOCK_BYTES)
        y = y if self.bias is None else y.add_(self.bias.detach().float())
        return rows_like(y, x, self.out_features)

    def extra_repr(self) -> str:
        kernel = f", under {KERNEL_ROWS} rows through speechrs's AVX2 kernel" if self.kernel else ""
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, {self.weight.dtype} upcast to fp32{kernel}"


class UpcastConv1d(nn.Module):
    """An nn.Conv1d over the same (bf16) weight and bias, computed in fp32 and rounded back: torch runs a bf16
    Conv1d without native bf16 through its slow reference convolution (Voxtral's encoder's two: 20 s of a 30 s
    chunk's 31 s encoder on 2 Zen 3 cores), an fp32 one through oneDNN (~0.2 s)."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        y = F.conv1d(x.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation, self.groups)
        return y.to(x.dtype)


def upcast_linears(model: nn.Module) -> int:
    """Wrap every reduced-precision nn.Linear of `model` in UpcastLinear, and every such nn.Conv1d in
    UpcastConv1d; returns how many."""
    wrappers: dict[type, type[nn.Module]] = {nn.Linear: UpcastLinear, nn.Conv1d: UpcastConv1d}
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in wrappers
        and m.weight.dtype in (torch.bfloat16, torch.float16)
        and getattr(m, "padding_mode", "zeros") == "zeros"
    ]
    for name, module in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, wrappers[type(module)](module))
    return len(targets)
