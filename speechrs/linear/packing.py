"""Decode-step weights pre-packed for oneDNN on the CPU.

A decode step multiplies one or two rows by every decoder weight, so on a CPU it runs at the speed the weights
stream from memory. oneDNN's blocked weight layout (`mkldnn._reorder_linear_weight`, the one torch.compile's CPU
freezing pass uses) streams bf16 weights faster than torch's row-major Linear (docs/performance.md, "Packed weights
and huge pages"). The results are torch's bit for bit for 2 or more rows. A single row is computed as the first of
two equal rows: oneDNN's fp32 kernel, and its bf16 kernel without AMX, sum a lone row in another order than a row
among others, so a request decoded alone would differ in the last bit from the same request batched beside others
(continuous batching needs them equal, layers.batch_invariant). A decode step streams the weights either way, so
the second row costs nothing measurable (benchmarks/machine.py: 1 and 2 rows run at the same GB/s).

Used for bfloat16 weights on a CPU with native bf16, and for float32 weights on any CPU: oneDNN's fp32 kernel
keeps its speed per row as rows are added, where torch's falls off, and a row's result does not depend on the
other rows. Anything else keeps torch's nn.Linear, as does SPEECHRS_PACK_WEIGHTS=0 (for benchmarks, or to rule
packing out when chasing a numerical question).
"""

import math

import torch
from torch import nn

from speechrs import settings
from speechrs.kernels.cpu import cpu_native_bf16
from speechrs.linear.base import huge_page_empty


def packable(weight: torch.Tensor) -> bool:
    if not settings.pack_weights():
        return False
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and cpu_native_bf16())


# The batch size oneDNN tunes the layout for: 8 rows was the fastest layout for 1- and 2-row decode steps and as
# fast as any for a prefill (docs/performance.md, "Packed weights and huge pages"); any gives the same results.
LAYOUT_ROWS = 8


class PackedLinear(nn.Module):
    """A bias-free Linear over a packed copy of `weight` (out, in). The copy is an opaque oneDNN tensor: it has no
    storage to share, so the plain weight should be dropped by the caller once this is made."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), LAYOUT_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one row: the first of two, as the module docstring says
            two = x.reshape(1, -1).expand(2, -1).contiguous()
            out = torch.ops.mkldnn._linear_pointwise(two, self.packed, None, "none", [], "")
            return out[:1].reshape(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, packed"


def pack_linears(parent: nn.Module, names: list[str]) -> None:
    """Replace the bias-free nn.Linear children `names` of `parent` with PackedLinear."""
    for name in names:
        linear = getattr(parent, name)
        if linear.bias is not None:
            raise ValueError(f"{name}: PackedLinear has no bias")
        setattr(parent, name, PackedLinear(linear.weight))


class Scratch:
    """One reusable huge-page buffer for the concatenated weights that are packed one after another: a fresh
    buffer per weight would fault in every 4 KiB page again, which costs more than the copy on a VM."""

    def __init__(self):
        self.buf = torch.empty(0, dtype=torch.uint8)

    def view(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n_bytes = math.prod(shape) * dtype.itemsize
        if self.buf.numel() < n_bytes:
            self.buf = huge_page_empty((n_bytes,), torch.uint8, "cpu")
        return self.buf[:n_bytes].view(dtype).view(shape)


def pack_fused(parent: nn.Module, names: list[str], fused_name: str, scratch: Scratch) -> None:
    """One PackedLinear `fused_name` over the rows of the Linears `names` (which read the same input); the
    Linears themselves are removed, so their weights' memory can go."""
    weights = [getattr(parent, name).weight.detach() for name in names]
    fused = scratch.view((sum(w.shape[0] for w in weights), weights[0].shape[1]), weights[0].dtype)
    setattr(parent, fused_name, PackedLinear(torch.cat(weights, out=fused)))
    for name in names:
        delattr(parent, name)
