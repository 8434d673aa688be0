"""Weight-only quantization at load (like mistral.rs's ISQ): int8 per output channel, int4 in groups.

Activations stay floating point; only the weights are stored small and streamed from memory at a fraction of the
bytes. The kernels are torch's own (anchors-2026-12.md §1a):
- int8: `aten._weight_int8pack_mm(x, w_int8 (N, K), scales (N,))`, symmetric, scale = absmax / 127 per row.
- int4: `aten._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero (K/g, N, 2))`, asymmetric in groups of
  `g` along K, w = (q - 8) * scale + zero with q in 0..15 (the "tinygemm" convention).
On x86 both kernels are vectorised for bfloat16 activations only (a scalar loop otherwise), so activations are
cast to bf16 around the call and back. The int4 packed layout depends on the ISA (32 or 64 rows per block), so
weights are packed here, at load, on the machine that runs them.

Each layer's exact reference is `dequantized()`: the same weight in float32, which the tests compare against.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .layers import cpu_native_bf16

QUANTIZATIONS = ("int8", "int4")
INT4_GROUP = 32  # 32..256 allowed by the kernel; 32 keeps the most precision (anchors: group 128 lost much more)
INT4_ROWS = 64  # the packed layout's row block on AVX-512 (32 on AVX2): pad N to a multiple of both
KERNEL_DTYPE = torch.bfloat16  # the activation dtype the CPU kernels are vectorised for
# Rows are quantized a block at a time, each block ~16 MiB in float32: its several passes stay in the L2/L3
# cache instead of streaming memory, and the load never holds more than one block's float32 copy.
BLOCK_ELEMENTS = 2**22
# From this many rows on (a prefill, a long batch), int8 codes are converted to bf16 for the call and multiplied
# by the GEMM, then scaled: the weight-only kernel's 4x4 tiles reach ~130 GFLOP/s for 383 rows where oneDNN's bf16
# GEMM reaches ~300 with the conversion (AVX-512 BF16). Measured on 16384 x 3072: kernel 14.6 / 58.7 / 110 ms at
# 16 / 64 / 128 rows, convert + GEMM 44 / 57 / 70 ms (benchmarks/machine.py has the per-path figures).
DEQUANT_ROWS = 64
# ...converted a block of weight rows at a time, each block (16 MiB converted) multiplied while it is in cache:
# the whole weight converted at once is a fresh 100 MB+ buffer per call, whose page faults and memory traffic cost
# as much as the GEMM. 383 rows on AMX, bf16: 16384 x 3072 70 -> 40 ms, 3072 x 8192 36 -> 18 ms; the fp32 path
# (SPEECHRS_NATIVE_BF16=0, same machine) 174 -> 140 and 87 -> 69 ms (blocks of 32 and 64 MiB were slower there).
DEQUANT_BLOCK_BYTES = 2**24


def check_quantization(name: str | None) -> str | None:
    if name in (None, "", "none"):
        return None
    if name not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization '{name}'; choose {', '.join(QUANTIZATIONS)} or none")
    return name


def _as_kernel_dtype(scale: torch.Tensor) -> torch.Tensor:
    """A scale the kernel will read in bf16, rounded there now (up, so no weight leaves the code range), so the
    codes are computed against the scale actually used: a bf16 ulp is 2^-8 of it, 127 codes could drift 0.5."""
    return (scale * (1 + 2.0**-7)).to(KERNEL_DTYPE).float()


def _row_blocks(n_rows: int, k: int, elements: int = BLOCK_ELEMENTS) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about `elements` each, in multiples of INT4_ROWS (int4 packs whole
    row blocks of 32 or 64, so blocks of rows pack independently)."""
    step = max(INT4_ROWS, elements // k // INT4_ROWS * INT4_ROWS)
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class Int8Linear(nn.Module):
    """A bias-free Linear with int8 weights (N, K) and one scale per output row: y = (x @ q.T) * scale."""

    qweight: torch.Tensor  # (N, K) int8
    scale: torch.Tensor  # (N,) bf16

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        weight = weight.detach()
        qweight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(self.out_features, device=weight.device)
        for a, b in _row_blocks(*weight.shape):
            block = weight[a:b]
            s = _as_kernel_dtype(block.abs().amax(dim=1).float().clamp(min=1e-12) / 127.0)  # (rows,) max: exact
            qweight[a:b] = block.to(torch.float32, copy=True).div_(s[:, None]).round_().clamp_(-127, 127)
            scale[a:b] = s
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.to(KERNEL_DTYPE))

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, in float32 (the reference the kernel is tested against)."""
        return self.qweight.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # torch's int8 kernel is CPU/MPS-only: dequantize into the activations' dtype
            return F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        rows = _rows(x)
        if len(rows) >= DEQUANT_ROWS:  # compute-bound: the GEMM in the fastest dtype this CPU has
            dtype = KERNEL_DTYPE if cpu_native_bf16() else torch.float32
            # inputs and the product rounded to bf16 as on a bf16 GEMM, so every CPU computes the same numbers
            x_k = rows.to(KERNEL_DTYPE).to(dtype)
            y = torch.empty(len(rows), self.out_features, dtype=dtype, device=x.device)
            for a, b in _row_blocks(self.out_features, self.in_features, DEQUANT_BLOCK_BYTES // dtype.itemsize):
                torch.matmul(x_k, self.qweight[a:b].to(dtype).T, out=y[:, a:b])  # codes exact in bf16
            y = y.to(KERNEL_DTYPE) * self.scale
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows.to(KERNEL_DTYPE).contiguous(), self.qweight, self.scale)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int4Linear(nn.Module):
    """A bias-free Linear with 4-bit weights in groups of INT4_GROUP along K, each with a scale and zero point."""

    packed: torch.Tensor  # (N padded, K / 2) uint8 in the kernel's layout for this CPU
    scale_zero: torch.Tensor  # (K / g, N padded, 2) bf16

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        if self.in_features % group:
            raise ValueError(f"int4 needs in_features divisible by {group}, got {self.in_features}")
        self.group = group
        n_pad = -self.out_features % INT4_ROWS  # e.g. Dia's 9 x 1028 logits rows: padded with zero rows
        weight = F.pad(weight.detach(), (0, 0, 0, n_pad)) if n_pad else weight.detach()  # F.pad always copies
        n, k = weight.shape
        packed = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)  # the kernel's packed shape
        scale_zero = torch.empty(k // group, n, 2, device=weight.device)
        for a, b in _row_blocks(n, k):
            g = weight[a:b].to(torch.float32, copy=True).unflatten(1, (-1, group))  # (rows, K/g, g), a copy
            lo, hi = g.amin(dim=2), g.amax(dim=2)
            scale = _as_kernel_dtype(((hi - lo) / 15).clamp(min=1e-12))  # (rows, K/g)
            zero = (lo + 8 * scale).to(KERNEL_DTYPE).float()  # w = (q - 8) * scale + zero: q = 0 is lo, 15 is hi
            q = g.sub_(zero[..., None]).div_(scale[..., None]).add_(8).round_().clamp_(0, 15)
            packed[a:b] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).flatten(1), 1)
            scale_zero[:, a:b] = torch.stack([scale, zero], dim=2).transpose(0, 1)  # (K/g, rows, 2)
        self.register_buffer("packed", packed)
        self.register_buffer("scale_zero", scale_zero.to(KERNEL_DTYPE))

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, in float32: (q - 8) * scale + zero. The codes q - 8 are read back
        through the kernel itself (the identity matrix with scale 1 and zero 0: small integers, exact in bf16),
        so this checks the packed layout too."""
        eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE)
        unit = torch.zeros_like(self.scale_zero)
        unit[..., 0] = 1
        q_KxN = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, unit).float()
        scale, zero = (self.scale_zero[..., i].float().repeat_interleave(self.group, dim=0) for i in (0, 1))
        return (q_KxN * scale + zero).T[: self.out_features].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            _rows(x).to(KERNEL_DTYPE).contiguous(), self.packed, self.group, self.scale_zero
        )
        return y[:, : self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}"


def quantized_linear(weight: torch.Tensor, kind: str) -> nn.Module:
    if weight.device.type != "cpu" and kind == "int4":
        raise ValueError("int4 weights run on the CPU only in this version (torch's CUDA int4 layout differs)")
    return Int8Linear(weight) if kind == "int8" else Int4Linear(weight)


def quantize_linears(parent: nn.Module, names: list[str], kind: str) -> None:
    """Replace the bias-free nn.Linear children `names` of `parent` with quantized ones."""
    for name in names:
        linear = getattr(parent, name)
        if linear.bias is not None:
            raise ValueError(f"{name}: quantized Linears have no bias")
        setattr(parent, name, quantized_linear(linear.weight, kind))


def quantize_fused(parent: nn.Module, names: list[str], fused_name: str, kind: str) -> None:
    """One quantized Linear `fused_name` over the rows of the Linears `names` (which read the same input); the
    Linears themselves are removed, so their weights' memory can go. Per-row scales make this exactly the
    concatenation of the Linears quantized one by one (int4 groups run along K, within a row, too)."""
    weights = [getattr(parent, name).weight.detach() for name in names]
    setattr(parent, fused_name, quantized_linear(torch.cat(weights), kind))
    for name in names:
        delattr(parent, name)
