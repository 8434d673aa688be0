"""What every Linear-like layer shares: GEMMs over blocks of weight rows, rows shaped like the input, fused
projections (in huge pages where they help) and the probe of whether a batch gives each request its bits alone."""

import math

import torch
from torch import nn

from speechrs.kernels import bf16_step_kernels


def huge_page_empty(shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty, but on the CPU backed by transparent huge pages where the kernel allows them
    (THP "madvise" mode): 512x fewer page faults to fill it and fewer TLB misses to read it."""
    import mmap
    import warnings

    n_bytes = math.prod(shape) * dtype.itemsize
    if torch.device(device).type != "cpu" or n_bytes < 2**21 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    buf = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(shape)


def matmul_by_row_blocks(x: torch.Tensor, n_out: int, weight_rows, block_bytes: int) -> torch.Tensor:
    """x (M, K) @ W^T -> (M, n_out) in x's dtype, with W (n_out, K) made `block_bytes` of rows at a time (in x's
    dtype) by weight_rows(start, stop), start a multiple of 64, and each block multiplied while it is in cache:
    converting a whole weight for one call is a fresh 100 MB+ buffer whose page faults and memory traffic cost as
    much as the GEMM (docs/performance.md, "Quantized GEMM routes" and "The upcast path")."""
    step = max(64, block_bytes // x.element_size() // x.shape[1] // 64 * 64)
    y = torch.empty(len(x), n_out, dtype=x.dtype, device=x.device)
    for a in range(0, n_out, step):
        b = min(a + step, n_out)
        torch.matmul(x, weight_rows(a, b).T, out=y[:, a:b])
    return y


def rows_like(y: torch.Tensor, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """A Linear-like layer's contiguous rows y (M, n_out) in x's dtype and leading shape, without the calls that would
    change nothing (a decode step makes ~100 of these)."""
    y = y if y.dtype == x.dtype else y.to(x.dtype)
    return y if x.dim() == 2 else y.view(*x.shape[:-1], n_out)


def fuse_linears(*linears: nn.Linear) -> nn.Linear:
    """One bias-free Linear for bias-free Linears that read the same input: their rows, concatenated. Each
    Linear's weight becomes a view into it, so the canonical parameters remain and nothing is stored twice. One
    matmul instead of several is what a decode step of a small model is made of. In huge pages (faster decode
    steps through torch's kernels), except where speechrs's bf16 kernel reads it (a CPU without native bf16): it
    gains nothing there, and filling huge pages slowed the load (docs/performance.md, "Packed weights and huge
    pages")."""
    weights = [lin.weight.detach() for lin in linears]
    kernel_reads = weights[0].dtype == torch.bfloat16 and weights[0].device.type == "cpu" and bf16_step_kernels()
    empty = (lambda shape, dtype, device: torch.empty(shape, dtype=dtype)) if kernel_reads else huge_page_empty
    fused = empty((sum(w.shape[0] for w in weights), weights[0].shape[1]), weights[0].dtype, weights[0].device)
    torch.cat(weights, out=fused)
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[row : row + n], requires_grad=False)
        row += n
    out = nn.Linear(fused.shape[1], fused.shape[0], bias=False, device="meta")
    out.weight = nn.Parameter(fused, requires_grad=False)
    return out


# Row counts a decode step may batch (a request's rows times the requests), probed for batch invariance.
PROBE_BATCHES = (2, 3, 4, 8, 16)


@torch.inference_mode()
def batch_invariant(linears: list[nn.Module], rows: int, dtype: torch.dtype, device) -> bool:
    """Whether each Linear-like module gives a request's `rows` rows the same bits alone as stacked above other
    requests' rows: then a batched decode step computes what the request computes alone. Whether it does is the
    kernel's choice, per row count: torch's fp32 Linear sums in another order for 1, 2 or 8 rows, oneDNN's packed
    kernels are the same from 2 rows on (measured on AVX-512 and AMX), and PackedLinear runs a lone row as two.
    Probed on the model's own weights with seeded random inputs: a kernel that reorders its sums for a row count
    differs at once."""
    g = torch.Generator().manual_seed(0)
    for linear in linears:
        features = int(linear.in_features)  # type: ignore[arg-type]
        x = torch.randn(rows * max(PROBE_BATCHES), features, generator=g).to(dtype).to(device)
        alone = linear(x[:rows])
        for batch in PROBE_BATCHES:
            if not torch.equal(linear(x[: rows * batch])[:rows], alone):
                return False
    return True


class ProbedBatching:
    """For a model: `batch_invariant`, probed (batch_invariant above) on the decode step's linears the first time
    it is read, so a load that never batches (the CLI's one request) skips the probe: 6 passes over the output head
    and the first layer's linears, seconds of a plain load (docs/performance.md, "Per-call and load costs"). A
    server reads it at warm-up (Engine.warm_up). Until probe_batching() is called the answer is False."""

    _batch_probe: tuple | None = None
    _batch_invariant: bool | None = False

    def probe_batching(self, linears: list[nn.Module], rows: int, dtype: torch.dtype, device) -> None:
        """Probe these once the weights are final (after quantizing or packing), when first asked."""
        self._batch_probe, self._batch_invariant = (linears, rows, dtype, device), None

    @property
    def batch_invariant(self) -> bool:
        """Whether forward_rows may run several requests' rows through one matmul (each gets its bits alone)."""
        if self._batch_invariant is None:
            assert self._batch_probe is not None
            self._batch_invariant = batch_invariant(*self._batch_probe)
        return self._batch_invariant
