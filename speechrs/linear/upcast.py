"""bf16 weights on a CPU without native bf16: kept bf16 in memory, multiplied in fp32 where that is faster.

Without AVX-512 BF16 / AMX, torch emulates bf16 matmuls, several times slower than fp32 (docs/performance.md, "The
upcast path"). Holding a 3B model in fp32 doubles its memory, so the weights stay bf16 and a matmul of many rows
(the encoder, a prefill) converts its weight to fp32 for that call: one layer's weight at a time is ever fp32, and
the conversion is amortised over the rows; Voxtral's encoder's two convolutions likewise. A decode step's few rows
read the bf16 weight as it is: through speechrs's AVX2 kernel (kernels/csrc/x86/avx2.c) where it runs, which
streams 8 rows at a time with a prefetch, else torch's bf16 Linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechrs import kernels
from speechrs.linear import routes
from speechrs.linear.base import matmul_by_row_blocks, rows_like

# The fp32 GEMM converts this many bytes of weight rows at a time and multiplies them while they are in cache: the
# whole weight converted at once (a fresh 200 MB for Voxtral's 16384 x 3072) cost as much as the GEMM.
BLOCK_BYTES = 2**24


class UpcastLinear(nn.Module):
    """An nn.Linear over the same (bf16) weight and bias, computing in fp32 from routes.UPCAST_ROWS rows on, or
    below routes.BF16_KERNEL_ROWS through speechrs's bf16 kernel where it runs."""

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
        if self.kernel and rows < routes.BF16_KERNEL_ROWS:
            y = kernels.bf16_linear(x.reshape(-1, self.in_features), self.weight)
            y = y if self.bias is None else y + self.bias
            return rows_like(y, x, self.out_features)
        if rows < routes.UPCAST_ROWS:
            return F.linear(x, self.weight, self.bias)
        weight = self.weight.detach()
        rows_x = x.reshape(-1, self.in_features).float()
        y = matmul_by_row_blocks(rows_x, self.out_features, lambda a, b: weight[a:b].float(), BLOCK_BYTES)
        y = y if self.bias is None else y.add_(self.bias.detach().float())
        return rows_like(y, x, self.out_features)

    def extra_repr(self) -> str:
        kernel = f", under {routes.BF16_KERNEL_ROWS} rows through speechrs's AVX2 kernel" if self.kernel else ""
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, {self.weight.dtype} upcast to fp32{kernel}"


class UpcastConv1d(nn.Module):
    """An nn.Conv1d over the same (bf16) weight and bias, computed in fp32 and rounded back: torch runs a bf16
    Conv1d without native bf16 through its slow reference convolution, an fp32 one through oneDNN (in bf16 Voxtral's
    encoder's two took most of its time: docs/performance.md, "The upcast path")."""

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
