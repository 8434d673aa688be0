"""Decode-step weights pre-packed for oneDNN on the CPU.

A decode step multiplies one or two rows by every decoder weight, so on a CPU it runs at the speed the weights
stream from memory. oneDNN's blocked weight layout (`mkldnn._reorder_linear_weight`, the one torch.compile's CPU
freezing pass uses) streams bf16 weights 5-25% faster than torch's row-major Linear on this project's machine
(the larger the matrix, the larger the gain) with the same products bit for bit (tests/test_packing.py).

Used for bfloat16 weights on a CPU whose oneDNN supports bf16; anything else keeps torch's nn.Linear, as does
SPEECHRS_PACK_WEIGHTS=0 (for benchmarks, or to rule packing out when chasing a numerical question).
"""
import math
import os

import torch
from torch import nn

from .layers import huge_page_empty


def packable(weight: torch.Tensor) -> bool:
    if os.environ.get("SPEECHRS_PACK_WEIGHTS", "1") == "0":
        return False
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without these private ops
        return False


class PackedLinear(nn.Module):
    """A bias-free Linear over a packed copy of `weight` (out, in). The copy is an opaque oneDNN tensor: it has no
    storage to share, so the plain weight should be dropped by the caller once this is made. `rows` is the batch
    the layout is tuned for; any other row count gives the same results."""

    def __init__(self, weight: torch.Tensor, rows: int):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, packed"


def pack_linears(parent: nn.Module, names: list[str], rows: int) -> None:
    """Replace the bias-free nn.Linear children `names` of `parent` with PackedLinear."""
    for name in names:
        linear = getattr(parent, name)
        if linear.bias is not None:
            raise ValueError(f"{name}: PackedLinear has no bias")
        setattr(parent, name, PackedLinear(linear.weight, rows))


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


def pack_fused(parent: nn.Module, names: list[str], fused_name: str, rows: int, scratch: Scratch) -> None:
    """One PackedLinear `fused_name` over the rows of the Linears `names` (which read the same input); the
    Linears themselves are removed, so their weights' memory can go."""
    weights = [getattr(parent, name).weight.detach() for name in names]
    fused = scratch.view((sum(w.shape[0] for w in weights), weights[0].shape[1]), weights[0].dtype)
    setattr(parent, fused_name, PackedLinear(torch.cat(weights, out=fused), rows))
    for name in names:
        delattr(parent, name)
