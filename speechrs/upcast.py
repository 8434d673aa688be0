"""bf16 weights on a CPU without native bf16: kept bf16 in memory, multiplied in fp32 where that is faster.

Without AVX-512 BF16 / AMX, torch emulates bf16 matmuls, about 5x slower than fp32 (issue 16: Voxtral's encoder
and prefill of one 30 s chunk took 280 s in bf16 and about 60 s in fp32 on a 2-core AVX2 EPYC). Holding a 3B
model in fp32 doubles its memory, so the weights stay bf16 and a matmul of many rows (the encoder, a prefill)
converts its weight to fp32 for that call: one layer's weight at a time is ever fp32, and the conversion is
amortised over the rows. A decode step's one or two rows keep torch's bf16 kernel, which reads half the bytes.
"""

import torch
import torch.nn.functional as F
from torch import nn

# From this many rows on, a matmul is compute-bound and the fp32 GEMM wins despite converting the weight.
UPCAST_ROWS = 16


class UpcastLinear(nn.Module):
    """An nn.Linear over the same (bf16) weight and bias, computing in fp32 from UPCAST_ROWS rows on."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // x.shape[-1] < UPCAST_ROWS:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.weight.dtype} upcast to fp32"


def upcast_linears(model: nn.Module) -> int:
    """Wrap every reduced-precision nn.Linear of `model` in UpcastLinear; returns how many."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and m.weight.dtype in (torch.bfloat16, torch.float16)
    ]
    for name, linear in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, UpcastLinear(linear))
    return len(targets)
