"""Weight-only quantization at load (like mistral.rs's ISQ): int8 per output channel, int4 in groups.

Activations stay floating point; only the weights are held small, so a decode step streams a fraction of the bytes.
Where speechrs's kernels build (kernels/) the codes are laid out for them at load. Elsewhere torch's own run:
- int8: `aten._weight_int8pack_mm(x, w_int8 (N, K), scales (N,))`, symmetric, scale = absmax / 127 per row.
- int4: `aten._weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero (K/g, N, 2))`, asymmetric in groups of
  `g` along K, w = (q - 8) * scale + zero with q in 0..15 (the "tinygemm" convention).
On x86 torch's kernels are vectorised for bfloat16 activations only, so activations are cast to bf16 around the
call. Its int4 layout depends on the ISA, so weights are packed at load, on the machine that runs them. Many rows
(a prefill) go through a GEMM on converted weights instead (routes.DEQUANT_ROWS and after).

The codes are made in quant_codes.py. Each layer's exact reference is `dequantized()`: the same weight in float32,
which the tests compare against.
"""

import torch
import torch.nn.functional as F
from torch import nn

from speechrs import kernels
from speechrs.kernels.cpu import cpu_native_bf16
from speechrs.linear import routes
from speechrs.linear.base import matmul_by_row_blocks, rows_like
from speechrs.linear.quant_codes import (
    INT4_GROUP,
    INT4_ROWS,
    KERNEL_DTYPE,
    Done,
    Weights,
    blocked_codes,
    blocked_shape,
    int4_blocked_codes,
    int4_blocks,
    int4_codes,
    int8_codes,
    int8_kernel,
    row_blocks,
    rows_per_block,
    stacked,
    weight_parts,
)

# Bytes of weight rows converted at a time, each block multiplied while in cache: a whole weight converted per call
# is a fresh 100 MB+ buffer whose page faults cost as much as the GEMM.
DEQUANT_BLOCK_BYTES = 2**24


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _buffer(module: nn.Module, name: str) -> torch.Tensor:
    """A layer's buffer read from its dict: nn.Module's __getattr__ adds a measurable share to each of a decode
    step's ~100 quantized calls (docs/performance.md, "Per-call and load costs")."""
    t = module._buffers[name]
    assert t is not None, name
    return t


def _blockwise_matmul(rows: torch.Tensor, n_out: int, weight_rows, dtype: torch.dtype) -> torch.Tensor:
    """rows (M, K) @ W^T -> (M, n_out) bf16 in `dtype`'s GEMM, W made a block of its rows at a time by
    weight_rows(start, stop, dtype) (start a multiple of 16) and multiplied while the block is in cache. The inputs
    are rounded to bf16 first and the product after, as on a bf16 GEMM, so every CPU computes the same numbers."""
    x_k = rows.to(KERNEL_DTYPE).to(dtype)
    y = matmul_by_row_blocks(x_k, n_out, lambda a, b: weight_rows(a, b, dtype), DEQUANT_BLOCK_BYTES)
    return y.to(KERNEL_DTYPE)


class Int8Linear(nn.Module):
    """A Linear with int8 weights (N, K) and one scale per output row: y = (x @ q.T) * scale (+ bias).

    Where speechrs's kernels run (kernels/) the codes are held blocked for the variant chosen at making
    (`kernel`) and fewer than `dequant_rows` rows go through it; elsewhere they stay (N, K) for torch's kernel.
    All compute the same numbers up to the order of the sums: bf16-rounded activations, fp32 accumulation, the
    product rounded to bf16."""

    qweight: torch.Tensor  # (N, K) int8, or when `blocked` (ceil(N/8), K/8, 8, 8) ("amx": (ceil(N/16), K, 16))
    scale: torch.Tensor  # (N,) bf16
    kernel_scale: torch.Tensor  # (N padded to a block,) fp32, when `blocked`
    bias: torch.Tensor | None  # (N,) in the model's float dtype (the audio encoder's Linears have one)
    quantized_at_load = False  # True when made from float weights here, False when read from stored codes

    @property
    def blocked(self) -> bool:
        """Whether the codes are laid out for speechrs's kernels (any variant)."""
        return self.kernel is not None

    def __init__(
        self, qweight: torch.Tensor, scale: torch.Tensor, blocked: bool = False, bias: torch.Tensor | None = None
    ):
        """From codes (N, K) and scales (N,), or codes already blocked for the variant a layer made now runs
        (`blocked`: int8_codes(weight, kernel) with the kernel int8_kernel names); `bias` (N,) kept as it is."""
        super().__init__()
        self.register_buffer("bias", bias)
        self.out_features = len(scale)
        self.in_features = qweight.shape[1] * (8 if qweight.dim() == 4 else 1)
        kernel = int8_kernel(qweight.device, self.in_features)  # "amx" / "avx512" / "avx2", or None: torch's
        self.kernel = kernel
        if blocked:
            assert qweight.shape == blocked_shape(self.out_features, self.in_features, kernel), "another layout"
        if kernel is not None:
            qweight = qweight if blocked else blocked_codes(qweight, kernel)
            scale32 = F.pad(scale.to(KERNEL_DTYPE).float(), (0, len(qweight) * self.block_rows - self.out_features))
            self.register_buffer("kernel_scale", scale32, persistent=False)  # the fp32 the kernel reads, padded
        elif qweight.data_ptr() % 64:  # the AVX-512 kernel's aligned loads crash on a view at any offset of a file
            qweight = qweight.clone()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.to(KERNEL_DTYPE))

    @classmethod
    def quantize(cls, weight: Weights, bias: torch.Tensor | None = None, done: Done = None) -> "Int8Linear":
        first = weight_parts(weight)[0]
        kernel = int8_kernel(first.device, first.shape[1])
        module = cls(*int8_codes(weight, kernel, done), blocked=kernel is not None, bias=bias)
        module.quantized_at_load = True
        return module

    @property
    def block_rows(self) -> int:
        """Output rows to a block of the blocked layout."""
        return rows_per_block("int8", self.kernel)

    @property
    def dequant_rows(self) -> int:
        """From this many rows on, the codes are converted for a GEMM instead of going through a kernel."""
        return routes.INT8_KERNEL_ROWS.get(self.kernel or "", routes.DEQUANT_ROWS)

    def codes(self, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.int8) -> torch.Tensor:
        """Rows [start, stop) of the codes as (rows, K) in `dtype` (start a multiple of block_rows when blocked;
        with the AMX layout the transpose of a contiguous (K, rows), as the GEMM reads it best)."""
        stop = self.out_features if stop is None else stop
        if not self.blocked:
            return self.qweight[start:stop].to(dtype)
        if self.kernel == "amx":  # (n, K, 16)
            if dtype == KERNEL_DTYPE:  # in C, one pass: the prefill's GEMM blocks
                return kernels.int8_weights(self.qweight, start, stop)
            part = self.qweight[start // 16 : -(-stop // 16)].to(dtype)  # converted, then each k's 16 rows as a run
            return part.permute(1, 0, 2).reshape(self.in_features, -1).T[: stop - start]
        part = self.qweight[start // 8 : -(-stop // 8)]  # (n, K/8, 8, 8)
        # a row's 8 codes at k..k+7 moved as one int64 back to (rows, K), then converted contiguously: several times
        # faster than one strided copy-and-convert of bytes (docs/performance.md, "Quantized GEMM routes")
        words = part.view(torch.int64).view(len(part), self.in_features // 8, 8).transpose(1, 2).contiguous()
        return words.view(torch.int8).view(-1, self.in_features)[: stop - start].to(dtype)

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, in float32 (the reference the kernel is tested against)."""
        return self.codes(dtype=torch.float32) * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T as the docstring says, then the bias (if any) added in fp32 and rounded to x's dtype."""
        if x.device.type != "cpu":  # torch's int8 kernel is CPU/MPS-only: dequantize into the activations' dtype
            y = F.linear(x, self.codes(dtype=x.dtype)) * self.scale.to(x.dtype)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        rows = _rows(x)
        if len(rows) >= self.dequant_rows:  # compute-bound: the GEMM in the fastest dtype this CPU has
            dtype = KERNEL_DTYPE if cpu_native_bf16() else torch.float32
            y = _blockwise_matmul(rows, self.out_features, self.codes, dtype) * self.scale  # codes exact in bf16
        elif self.kernel is not None:  # blocked for it
            codes, scale = _buffer(self, "qweight"), _buffer(self, "kernel_scale")
            y = kernels.int8_linear(rows, codes, scale, self.out_features, self.kernel)
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows.to(KERNEL_DTYPE).contiguous(), self.qweight, self.scale)
        bias = self._buffers["bias"]
        if bias is not None:
            y = y.float() + bias.float()
        return rows_like(y, x, self.out_features)

    def extra_repr(self) -> str:
        kernel = kernels.kernel_name(self.kernel)
        shape = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return f"{shape}, int8 per channel, {kernel}"


class Int4Linear(nn.Module):
    """A bias-free Linear with 4-bit weights in groups of INT4_GROUP along K, each with a scale and zero point.

    Where speechrs's kernels run (kernels/) the codes and scales are held blocked for its int4 kernel
    (8 or 16 output rows to a block, block_rows; `kernel` the variant), elsewhere packed for torch's; both compute
    from bf16-rounded activations with fp32 accumulation and round the product to bf16."""

    # torch's: packed (N padded, K / 2) uint8 in its layout for this CPU, scale_zero (K / g, N padded, 2) bf16;
    # speechrs's AVX2 kernel: (N / 8, K / 2, 8) and (N / 8, K / g, 2, 8); its AVX-512 one: (N / 16, K / 8, 16, 4)
    # and (N / 16, K / g, 2, 16) (kernels/csrc/x86/ says why)
    packed: torch.Tensor
    scale_zero: torch.Tensor
    quantized_at_load = False  # True when made from float weights here, False when read from stored codes

    @property
    def blocked(self) -> bool:
        """Whether the codes and scales are laid out for speechrs's kernels (any variant)."""
        return self.kernel is not None

    def __init__(self, out_features: int, group: int, packed: torch.Tensor, scale_zero: torch.Tensor,
                 kernel: str | None = None):  # fmt: skip
        """From tensors already in a kernel's layout (`kernel` speechrs's variant, None torch's): see quantize()
        and from_codes()."""
        super().__init__()
        self.kernel = kernel
        self.out_features, self.group = out_features, group
        self.in_features = packed.shape[1] * 8 if kernel in kernels.INT4_WIDE else packed.shape[1] * 2
        if self.blocked:  # the layout kernels.int4_linear reads without checking it per call
            r, k = self.block_rows, self.in_features
            n = -(-out_features // r)
            shape = (n, k // 8, r, 4) if kernel in kernels.INT4_WIDE else (n, k // 2, r)
            assert packed.shape == shape and packed.dtype == torch.uint8 and group % 32 == 0
            assert scale_zero.shape == (shape[0], k // group, 2, r)
            packed, scale_zero = packed.contiguous(), scale_zero.contiguous()
        self.register_buffer("packed", packed)
        self.register_buffer("scale_zero", scale_zero.to(KERNEL_DTYPE))

    @property
    def block_rows(self) -> int:
        """Output rows to a block of the blocked layout: 16 for speechrs's AVX-512 and AMX kernels, 8 for its AVX2
        one."""
        return rows_per_block("int4", self.kernel)

    @staticmethod
    def _speechrs_kernel(device: torch.device) -> str | None:
        return kernels.variant() if device.type == "cpu" else None

    @classmethod
    def quantize(cls, weight: Weights, group: int = INT4_GROUP, done: Done = None) -> "Int4Linear":
        parts = weight_parts(weight)
        k = parts[0].shape[1]
        if k % group:
            raise ValueError(f"int4 needs in_features divisible by {group}, got {k}")
        if kernel := cls._speechrs_kernel(parts[0].device):
            blocked = int4_blocked_codes(parts, group, kernel, done)  # else the portable codes, blocked after
            if blocked is not None:
                module = cls(sum(len(p) for p in parts), group, *blocked, kernel)
            else:
                module = cls.from_codes(*int4_codes(parts, group, done), group)
            module.quantized_at_load = True
            return module
        weight = stacked(parts)
        n = len(weight)
        n_pad = -n % INT4_ROWS  # e.g. Dia's 9 x 1028 logits rows: padded with zero rows
        weight = F.pad(weight.detach(), (0, 0, 0, n_pad)) if n_pad else weight.detach()  # F.pad always copies
        packed = torch.empty(n + n_pad, k // 2, dtype=torch.uint8, device=weight.device)  # the kernel's shape
        scale_zero = torch.empty(k // group, n + n_pad, 2, device=weight.device)
        for a, b, q, sz in int4_blocks(weight, group):
            packed[a:b] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            scale_zero[:, a:b] = sz
        scale_zero[:, n:] = 0  # padded rows (codes 0): as from_codes pads them, so both make the same tensors
        module = cls(n, group, packed, scale_zero)
        module.quantized_at_load = True
        return module

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale_zero: torch.Tensor, group: int) -> "Int4Linear":
        """From int4_codes()'s portable layout: blocked for speechrs's kernel, or unpacked and packed again for
        torch's, a row block at a time."""
        n, half_k = codes.shape
        kernel = cls._speechrs_kernel(codes.device)
        if kernel:  # its byte is the portable one: only the rows move
            r = rows_per_block("int4", kernel)
            pad = -n % r
            codes = F.pad(codes, (0, 0, 0, pad)) if pad else codes
            scale_zero = F.pad(scale_zero.to(KERNEL_DTYPE), (0, 0, 0, pad)) if pad else scale_zero.to(KERNEL_DTYPE)
            if kernel in kernels.INT4_WIDE:  # (N/16, K/8, 16, 4): per chunk of 8 along K, 4 bytes of each row
                blocked = codes.view(-1, r, half_k // 4, 4).permute(0, 2, 1, 3).contiguous()
            else:  # (N/8, K/2, 8)
                blocked = codes.view(-1, r, half_k).transpose(1, 2).contiguous()
            sz = scale_zero.view(len(scale_zero), -1, r, 2).permute(1, 0, 3, 2).contiguous()  # (N/r, K/g, 2, r)
            return cls(n, group, blocked, sz, kernel)
        n_pad = -n % INT4_ROWS
        packed = torch.empty(n + n_pad, half_k, dtype=torch.uint8, device=codes.device)
        for a, b in row_blocks(n + n_pad, half_k * 2):
            rows = codes[a : min(b, n)]
            q = torch.stack((rows & 15, rows >> 4), dim=2).flatten(1)  # (rows, K) uint8: byte ops, 4x less traffic
            q = F.pad(q, (0, 0, 0, b - a - len(rows))) if b - a > len(rows) else q  # padded rows: codes 0
            packed[a:b] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        scale_zero = F.pad(scale_zero, (0, 0, 0, n_pad)) if n_pad else scale_zero  # padded rows: 0 * q + 0
        return cls(n, group, packed, scale_zero)

    def group_scales(self) -> torch.Tensor:
        """(K / g, N, 2) bf16: each group's scale and zero, whatever the layout."""
        if self.blocked:
            return self.scale_zero.permute(1, 0, 3, 2).flatten(1, 2)[:, : self.out_features]
        return self.scale_zero[:, : self.out_features]

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, in float32: (q - 8) * scale + zero. The codes q are read back
        from the layout the kernel reads: torch's through the kernel itself (the identity matrix with scale 1 and
        zero 0: small integers, exact in bf16), so this checks the packed layout too."""
        if self.blocked:
            codes = self._portable_codes(self.packed)[: self.out_features]
            q_NxK = torch.stack((codes & 15, codes >> 4), dim=2).flatten(1).float() - 8
        else:
            eye = torch.eye(self.in_features, dtype=KERNEL_DTYPE)
            unit = torch.zeros_like(self.scale_zero)
            unit[..., 0] = 1
            q_KxN = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, unit).float()
            q_NxK = q_KxN.T[: self.out_features]
        scale, zero = (self.group_scales()[..., i].float().T.repeat_interleave(self.group, dim=1) for i in (0, 1))
        return (q_NxK * scale + zero).contiguous()

    @property
    def dequant_rows(self) -> int:
        """From this many rows on, the weights are made gemm_dtype for a GEMM instead of going through a kernel
        (where C makes them: speechrs's AVX-512 / AMX layout in bf16, its AVX2 layout in fp32)."""
        native = cpu_native_bf16()
        if (self.kernel in kernels.INT4_WIDE and native) or (self.kernel == "avx2" and not native):
            return routes.INT4_GEMM_ROWS.get(self.kernel, 2**62)
        return 2**62

    @property
    def gemm_dtype(self) -> torch.dtype:
        """The dtype of the GEMM route's weights: bf16 where the CPU multiplies it natively, else fp32."""
        return KERNEL_DTYPE if cpu_native_bf16() else torch.float32

    def _portable_codes(self, blocks: torch.Tensor) -> torch.Tensor:
        """Blocks of the blocked codes back to int4_codes()'s portable bytes, (rows, K/2)."""
        if self.kernel in kernels.INT4_WIDE:  # (n, K/8, 16, 4)
            return blocks.permute(0, 2, 1, 3).reshape(-1, self.in_features // 2)
        return blocks.transpose(1, 2).reshape(-1, self.in_features // 2)  # (n, K/2, 8)

    def weights(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows [start, stop) of the weight, (q - 8) * scale + zero computed in float32, as (rows, K) in `dtype`
        (blocked layout only; start a multiple of block_rows)."""
        if self.kernel in kernels.INT4_WIDE and dtype == KERNEL_DTYPE:  # one pass in C, much faster than torch ops
            return kernels.int4_weights(self.packed, self.scale_zero, self.group, start, stop)
        if self.kernel == "avx2" and dtype == torch.float32:  # in C too (the GEMM route without native bf16)
            return kernels.int4_weights_avx2(self.packed, self.scale_zero, self.group, start, stop)
        r = self.block_rows
        codes = self._portable_codes(self.packed[start // r : -(-stop // r)])  # (rows, K/2)
        q = torch.stack((codes & 15, codes >> 4), dim=2).view(len(codes), -1, self.group)  # (rows, K/g, g)
        sz = self.scale_zero[start // r : -(-stop // r)].permute(0, 3, 1, 2).reshape(len(codes), -1, 2)
        w = q.to(torch.float32).sub_(8).mul_(sz[..., 0:1].float()).add_(sz[..., 1:2].float())
        return w.view(len(codes), self.in_features)[: stop - start].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(x)
        if len(rows) >= self.dequant_rows:
            # a prefill: its weights made bf16 a block at a time for oneDNN's GEMM (one more rounding of each
            # weight, 2^-9 of it, against the int4 step's ~1/30 of the group's range), or fp32 (none)
            y = _blockwise_matmul(rows, self.out_features, self.weights, self.gemm_dtype)
        elif self.kernel is not None:  # blocked for it
            packed, scale_zero = _buffer(self, "packed"), _buffer(self, "scale_zero")
            y = kernels.int4_linear(rows, packed, scale_zero, self.group, self.out_features, self.kernel)
        else:
            rows = rows.to(KERNEL_DTYPE).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scale_zero)
            y = y[:, : self.out_features].contiguous()
        return rows_like(y, x, self.out_features)

    def extra_repr(self) -> str:
        kernel = kernels.kernel_name(self.kernel)
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, int4 groups of {self.group}, {kernel}"


def quantized_linear(weight: Weights, kind: str, done: Done = None) -> nn.Module:
    """`done(part)` is called as each part of `weight` has its codes (where speechrs's quantizers make them)."""
    if weight_parts(weight)[0].device.type != "cpu" and kind == "int4":
        raise ValueError("int4 weights run on the CPU only in this version (torch's CUDA int4 layout differs)")
    return Int8Linear.quantize(weight, done=done) if kind == "int8" else Int4Linear.quantize(weight, done=done)


class StoredInt8(nn.Module):
    """An int8 Linear as a `speechrs quantize` checkpoint stores it (int8_codes): put in a Linear's place on the
    meta device, filled by the loader like any other tensor, then made an Int8Linear by quantize_linears/fused."""

    qweight: torch.Tensor  # (N, K) int8
    scale: torch.Tensor  # (N,) bf16
    bias: torch.Tensor | None  # (N,), as the source had it

    def __init__(self, out_features: int, in_features: int, bias: bool = False):
        super().__init__()
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features, dtype=KERNEL_DTYPE))
        self.register_buffer("bias", torch.empty(out_features) if bias else None)


class StoredInt4(nn.Module):
    """An int4 Linear as a `speechrs quantize` checkpoint stores it (int4_codes's portable layout)."""

    codes: torch.Tensor  # (N, K / 2) uint8, two codes per byte
    scale_zero: torch.Tensor  # (K / g, N, 2) bf16

    def __init__(self, out_features: int, in_features: int, group: int):
        super().__init__()
        self.group = group
        self.register_buffer("codes", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale_zero", torch.empty(in_features // group, out_features, 2, dtype=KERNEL_DTYPE))


STORED = {"int8": StoredInt8, "int4": StoredInt4}


def _from_stored(parts: list[nn.Module]) -> nn.Module:
    """One quantized Linear over the rows of stored ones (a single part keeps its tensors: no copy)."""
    int8 = [p for p in parts if isinstance(p, StoredInt8)]
    int4 = [p for p in parts if isinstance(p, StoredInt4) and p.group == getattr(parts[0], "group", None)]
    if len(int8) == len(parts) and (len(parts) == 1 or all(p.bias is None for p in int8)):
        qweight = int8[0].qweight if len(int8) == 1 else torch.cat([p.qweight for p in int8])
        return Int8Linear(qweight, torch.cat([p.scale for p in int8]), bias=int8[0].bias)
    if len(int4) == len(parts):
        codes = int4[0].codes if len(int4) == 1 else torch.cat([p.codes for p in int4])
        return Int4Linear.from_codes(codes, torch.cat([p.scale_zero for p in int4], dim=1), int4[0].group)
    raise ValueError(f"cannot fuse {[type(p).__name__ for p in parts]}: a checkpoint mixes quantized and float parts")


# A weight quantized with a `release` callback goes a part of this many bytes at a time, each released once its
# codes are made: else a large weight (Voxtral's output head) stands whole beside its codes and raises the load's
# peak memory (docs/performance.md, "Per-call and load costs").
RELEASE_PART_BYTES = 2**26


def _quantized(parts: list[nn.Module], kind: str, release: Done = None) -> nn.Module:
    if any(isinstance(p, (StoredInt8, StoredInt4)) for p in parts):
        return _from_stored(parts)
    linears = [p for p in parts if isinstance(p, nn.Linear)]
    if len(linears) != len(parts):
        raise ValueError(f"only Linears are quantized, not {[type(p).__name__ for p in parts]}")
    if any(p.bias is not None for p in linears):  # a bias is kept beside int8 codes, for a Linear alone
        if kind != "int8" or len(linears) > 1:
            raise ValueError("a Linear with a bias is quantized to int8 only, and not fused")
        return Int8Linear.quantize(linears[0].weight.detach(), linears[0].bias.detach())
    weights = [p.weight.detach() for p in linears]
    if release is not None and len(weights) == 1:  # rows are quantized independently: parts give the same codes
        w = weights[0]
        step = max(64, RELEASE_PART_BYTES // (w.shape[1] * w.element_size()) // 64 * 64)
        weights = list(w.split(step))
    return quantized_linear(weights, kind, release)


def quantize_linears(parent: nn.Module, names: list[str], kind: str, release: Done = None) -> None:
    """Replace the nn.Linear children `names` of `parent` with quantized ones (or stored ones with the Linears they
    hold); a Linear with a bias only to int8. With `release` (the loader's weights.release_pages) a large weight is
    quantized a part at a time, each part released as its codes are made."""
    for name in names:
        setattr(parent, name, _quantized([getattr(parent, name)], kind, release))


def quantize_fused(parent: nn.Module, names: list[str], fused_name: str, kind: str) -> None:
    """One quantized Linear `fused_name` over the rows of the Linears `names` (which read the same input); the
    Linears themselves are removed, so their weights' memory can go. Per-row scales make this exactly the
    concatenation of the Linears quantized one by one (int4 groups run along K, within a row, too), which is
    also how stored ones are fused."""
    setattr(parent, fused_name, _quantized([getattr(parent, name) for name in names], kind))
    for name in names:
        delattr(parent, name)
