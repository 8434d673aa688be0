"""Making quantized codes from float weights (quant.py's layers hold them): int8 per output row, int4 in groups.

Two implementations of the same numbers, bit for bit: speechrs's quantizers (kernels/csrc/quantize.c, one pass per
row from the weight's own dtype, straight into the layout the kernel streams) wherever its library runs, and torch
ops (a row block at a time in fp32) elsewhere; tests/test_quantizer.py holds them equal. A fused projection's parts
are quantized each into its rows of the whole, without a concatenated copy.
"""

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from speechrs import kernels

INT4_GROUP = 32  # 32..256 allowed by the kernel; 32 keeps the most precision (group 128 lost much more)
INT4_ROWS = 64  # the packed layout's row block on AVX-512 (32 on AVX2): pad N to a multiple of both
KERNEL_DTYPE = torch.bfloat16  # the activation dtype the CPU kernels are vectorised for
# Rows are quantized a block at a time, each block ~16 MiB in float32: its several passes stay in the L2/L3
# cache instead of streaming memory, and the load never holds more than one block's float32 copy.
BLOCK_ELEMENTS = 2**22


def as_kernel_dtype(scale: torch.Tensor) -> torch.Tensor:
    """A scale the kernel will read in bf16, rounded there now (up, so no weight leaves the code range), so the
    codes are computed against the scale actually used: a bf16 ulp is 2^-8 of it, 127 codes could drift 0.5."""
    return (scale * (1 + 2.0**-7)).to(KERNEL_DTYPE).float()


def row_blocks(n_rows: int, k: int, elements: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about `elements` each, in multiples of INT4_ROWS (int4 packs whole
    row blocks of 32 or 64, so blocks of rows pack independently)."""
    elements = BLOCK_ELEMENTS if elements is None else elements  # read at each call (the tests vary it)
    step = max(INT4_ROWS, elements // k // INT4_ROWS * INT4_ROWS)
    return [(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


# A weight (N, K), or the row parts of one (a fused projection's), quantized as torch.cat would stack them.
Weights = torch.Tensor | list[torch.Tensor]


# Called with each part of a weight once its codes are made (the loader releases its pages: weights.release_pages).
Done = Callable[[torch.Tensor], None] | None


def _done(done: Done, part: torch.Tensor) -> None:
    if done is not None:
        done(part)


def weight_parts(weight: Weights) -> list[torch.Tensor]:
    return [w.detach() for w in weight] if isinstance(weight, list) else [weight.detach()]


def stacked(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def part_rows(parts: list[torch.Tensor], block: int) -> list[tuple[torch.Tensor, int, int]] | None:
    """(part, start, stop) rows of each part in the whole, where speechrs's quantizer takes every part and each
    starts on a block of `block` rows; else None (the torch ops then run on the concatenation)."""
    spans, start = [], 0
    for part in parts:
        if start % block or not kernels.quantizes(part):
            return None
        spans.append((part, start, start + len(part)))
        start += len(part)
    return spans


def int8_codes(weight: Weights, kernel: str | None = None, done: Done = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: codes (N, K) int8 and scales (N,) bf16 with weight ~= codes * scale[:, None]; the
    codes blocked for speechrs's `kernel` variant as blocked_codes() lays them out when one is named.

    Where speechrs's library runs, its quantizer (kernels/csrc/quantize.c) computes the same numbers from each part
    in the weight's own dtype, straight into the blocked layout: the torch ops below take ~10 passes in fp32 over a
    concatenated copy, which made an int8 load several times longer (docs/performance.md, "Per-call and load
    costs")."""
    parts = weight_parts(weight)
    n, k = sum(len(p) for p in parts), parts[0].shape[1]
    rows = rows_per_block("int8", kernel) if kernel else 1
    spans = part_rows(parts, rows)
    if spans is not None:
        qweight = torch.empty(blocked_shape(n, k, kernel), dtype=torch.int8)
        scale = torch.empty(n)
        cols = 1 if kernel == "amx" else 8 if kernel else k
        for part, a, b in spans:
            kernels.quantize_int8(part, qweight[a // rows : -(-b // rows)], scale[a:b], rows, cols)
            _done(done, part)
        return qweight, scale.to(KERNEL_DTYPE)
    weight = stacked(parts)
    qweight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], device=weight.device)
    for a, b in row_blocks(*weight.shape):
        block = weight[a:b]
        s = as_kernel_dtype(block.abs().amax(dim=1).float().clamp(min=1e-12) / 127.0)  # (rows,) max: exact
        qweight[a:b] = block.to(torch.float32, copy=True).div_(s[:, None]).round_().clamp_(-127, 127)
        scale[a:b] = s
    return (blocked_codes(qweight, kernel) if kernel else qweight), scale.to(KERNEL_DTYPE)


def rows_per_block(kind: str, kernel: str | None) -> int:
    """Output rows to a block of speechrs's `kernel` layout for `kind` ("int8" / "int4"): 16 for int8 on AMX and
    int4 on AVX-512 BF16 or AMX, else 8."""
    return 16 if kernel == "amx" or (kind == "int4" and kernel in kernels.INT4_WIDE) else 8


def blocked_shape(n: int, k: int, kernel: str | None) -> tuple[int, ...]:
    """The shape of (N, K) int8 codes laid out for speechrs's `kernel` (None: as they are)."""
    if kernel is None:
        return (n, k)
    r = rows_per_block("int8", kernel)
    return (-(-n // r), k, r) if kernel == "amx" else (-(-n // r), k // 8, r, 8)


def int8_kernel(device: torch.device, k: int) -> str | None:
    """speechrs's variant an int8 layer of K inputs made now on `device` runs, None for torch's kernel."""
    kernel = kernels.variant() if device.type == "cpu" and k % 8 == 0 else None
    return "avx512" if kernel == "amx" and k % 32 else kernel  # the tile kernel takes K 32 at a time


def blocked_codes(qweight: torch.Tensor, kernel: str) -> torch.Tensor:
    """(N, K) codes -> the layout speechrs's int8 kernels stream (kernels/csrc/x86/), rows padded with zero codes
    to a block: (ceil(N/8), K/8, 8, 8), 8 rows' next 8 codes in 64 contiguous bytes; for the AMX kernel
    (ceil(N/16), K, 16), 16 rows' code of each k in 16."""
    n, k = qweight.shape
    r = rows_per_block("int8", kernel)
    qweight = F.pad(qweight, (0, 0, 0, -n % r)) if n % r else qweight
    if kernel == "amx":
        return qweight.view(-1, r, k).transpose(1, 2).contiguous()
    if qweight.is_contiguous() and qweight.storage_offset() % 8 == 0:
        # a row's 8 codes moved as one int64, faster than moving bytes: this is most of what loading a `speechrs
        # quantize` directory's int8 codes costs beyond reading them (docs/performance.md, "Per-call and load costs")
        words = qweight.view(torch.int64).view(-1, r, k // 8).transpose(1, 2).contiguous()
        return words.view(torch.int8).view(-1, k // 8, r, 8)
    return qweight.view(-1, r, k // 8, 8).transpose(1, 2).contiguous()  # codes at any offset of a file


def int4_blocks(weight: torch.Tensor, group: int) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """(start, stop, codes, scale_zero) per row block of `weight` (N, K): codes (rows, K) int32 in 0..15 with
    w = (q - 8) * scale + zero, scale_zero (K/g, rows, 2) in float32, already rounded to the kernel's bf16."""
    n, k = weight.shape
    for a, b in row_blocks(n, k):
        g = weight[a:b].to(torch.float32, copy=True).unflatten(1, (-1, group))  # (rows, K/g, g), a copy
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        scale = as_kernel_dtype(((hi - lo) / 15).clamp(min=1e-12))  # (rows, K/g)
        zero = (lo + 8 * scale).to(KERNEL_DTYPE).float()  # w = (q - 8) * scale + zero: q = 0 is lo, 15 is hi
        q = g.sub_(zero[..., None]).div_(scale[..., None]).add_(8).round_().clamp_(0, 15)
        yield a, b, q.to(torch.int32).flatten(1), torch.stack([scale, zero], dim=2).transpose(0, 1)


def int4_blocked_codes(
    weight: Weights, group: int, kernel: str, done: Done = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """int4_codes's numbers written by speechrs's quantizer straight into the layout of its int4 `kernel` (the
    tensors Int4Linear.from_codes blocks from the portable ones, rows past N zero): codes (N/8, K/2, 8) or, for
    the wide kernels, (N/16, K/8, 16, 4) uint8, scale_zero (N/r, K/g, 2, r) bf16. None where the quantizer does
    not take every part on a block boundary."""
    parts = weight_parts(weight)
    r = rows_per_block("int4", kernel)
    spans = part_rows(parts, r) if group % 8 == 0 else None
    if spans is None:
        return None
    n, k = spans[-1][2], parts[0].shape[1]
    blocks, make = -(-n // r), torch.zeros if n % r else torch.empty  # a last block's missing rows stay zero
    shape = (blocks, k // 8, r, 4) if kernel in kernels.INT4_WIDE else (blocks, k // 2, r)
    codes, scale_zero = make(shape, dtype=torch.uint8), make(blocks, k // group, 2, r, dtype=KERNEL_DTYPE)
    for part, a, _ in spans:
        kernels.quantize_int4_blocked(part, codes, scale_zero, group, a, r)
        _done(done, part)
    return codes, scale_zero


def int4_codes(weight: Weights, group: int = INT4_GROUP, done: Done = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped asymmetric int4 in a layout any machine can read (speechrs quantize writes it): codes (N, K/2)
    uint8, two per byte, k even in the low nibble; scale_zero (K/g, N, 2) bf16."""
    parts = weight_parts(weight)
    spans = part_rows(parts, 1) if group % 8 == 0 else None
    if spans is not None:  # the same numbers from each part (int8_codes says why)
        k = parts[0].shape[1]
        codes = torch.empty(spans[-1][2], k // 2, dtype=torch.uint8)
        scale_zero = torch.empty(k // group, len(codes), 2)
        for part, a, b in spans:
            kernels.quantize_int4(part, codes[a:b], scale_zero[:, a:b], group)
            _done(done, part)
        return codes, scale_zero.to(KERNEL_DTYPE)
    weight = stacked(parts)
    n, k = weight.shape
    codes = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)
    scale_zero = torch.empty(k // group, n, 2, device=weight.device)
    for a, b, q, sz in int4_blocks(weight, group):
        codes[a:b] = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
        scale_zero[:, a:b] = sz
    return codes, scale_zero.to(KERNEL_DTYPE)
