"""The C functions' signatures and the torch-facing wrappers around them: the matmuls (int8, int4, bf16), the
weights they read made back into a GEMM's, a decode step's small ops and the quantizers. Each wrapper runs only
where its docstring says (build.available(), quantizes(), a variant); build.py decides."""

import ctypes
import functools
import sys

import torch

from speechrs.kernels import build
from speechrs.kernels.build import INT4_WIDE
from speechrs.kernels.cpu import cpu_native_bf16

_PTR, _I64, _INT, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# x, M, K, codes, scale, blocks, n_out, y, threads
_INT8_LINEAR = [_PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _PTR, _INT]
# x, M, K, codes, scale_zero, group, blocks, n_out, y, threads
_INT4_LINEAR = [_PTR, _I64, _I64, _PTR, _PTR, _I64, _I64, _I64, _PTR, _INT]
_INT4_WEIGHTS = [_PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, _INT]  # codes, scale_zero, K, group, b0, b1, out, threads

# The C functions' arguments (csrc/), by name: ctypes passes each as declared here. A variant's functions are
# absent where the compiler left them out (SPEECHRS_NO_AVX512, SPEECHRS_NO_AMX).
SIGNATURES = {
    "speechrs_int8_linear": _INT8_LINEAR,
    "speechrs_int8_linear_avx512": _INT8_LINEAR,
    "speechrs_int8_linear_amx": _INT8_LINEAR,
    "speechrs_int4_linear": _INT4_LINEAR,
    "speechrs_int4_linear_avx512": _INT4_LINEAR,
    "speechrs_int4_linear_amx": _INT4_LINEAR,
    "speechrs_int4_weights_avx2": _INT4_WEIGHTS,
    "speechrs_int4_weights_avx512": _INT4_WEIGHTS,
    "speechrs_int8_weights_amx": [_PTR, _I64, _I64, _I64, _PTR, _INT],  # codes, K, b0, b1, out, threads
    "speechrs_bf16_linear": [_PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _INT],  # x, M, K, w, ld, N, y, threads
    # w, dtype, N, K, ld, codes, scale, rows, cols, threads
    "speechrs_quantize_int8": [_PTR, _INT, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64, _INT],
    # w, dtype, N, K, ld, group, codes, scale_zero, sz_ld, block, row0, threads
    "speechrs_quantize_int4": [_PTR, _INT, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64, _I64, _INT],
    # q, k, B, H, K, S, E, sb, sj, scale, scores, threads
    "speechrs_attend_scores": [_PTR, _PTR, *[_I64] * 7, _F32, _PTR, _INT],
    # weights, v, B, H, K, S, E, sb, sj, out, threads
    "speechrs_attend_values": [_PTR, _PTR, *[_I64] * 7, _PTR, _INT],
    "speechrs_rope": [_PTR, *[_I64] * 7, _PTR, _PTR],  # x, B, H, T, E, sb, sh, st, rot, out
    "speechrs_rms_norm": [_PTR, _I64, _I64, _PTR, _F32, _PTR],  # x, M, D, gain, eps, y
}


@functools.cache
def _typed(library: ctypes.CDLL) -> ctypes.CDLL:
    """`library` with SIGNATURES' argument types set on the functions it has (once per loaded library)."""
    for name, argtypes in SIGNATURES.items():
        if hasattr(library, name):
            getattr(library, name).argtypes = argtypes
    return library


def _lib() -> ctypes.CDLL:
    """The loaded library, its functions typed. Only where it could be had."""
    library = build._library()
    assert not isinstance(library, str), library
    return _typed(library)


# Per call these wrappers check only the activations: the weights' layout is quant.py's, fixed at load. The
# Python around a call is most of a small layer's time, so it is kept short.


def _kernel_input(x: torch.Tensor, features: int) -> torch.Tensor:
    if x.dtype != torch.bfloat16:
        x = x.to(torch.bfloat16)
    if not x.is_contiguous():
        x = x.contiguous()
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"expected (rows, {features}) activations, got {tuple(x.shape)}")
    return x


def _run(function: str, x: torch.Tensor, features: int, n_out: int, *weights) -> torch.Tensor:
    """y (M, n_out) bf16 from the C `function`(x, M, K, *weights, y, threads); x (M, features) rounded to bf16."""
    library = _lib()
    x = _kernel_input(x, features)
    y = torch.empty(len(x), n_out, dtype=torch.bfloat16)
    status = getattr(library, function)(x.data_ptr(), len(x), features, *weights, y.data_ptr(), torch.get_num_threads())
    if status != 0:
        raise MemoryError("speechrs's CPU kernel could not allocate its scratch memory")
    return y


FUNCTIONS = {
    ("int8", "avx2"): "speechrs_int8_linear",
    ("int8", "avx512"): "speechrs_int8_linear_avx512",
    ("int4", "avx2"): "speechrs_int4_linear",
    ("int4", "avx512"): "speechrs_int4_linear_avx512",
    ("int8", "amx"): "speechrs_int8_linear_amx",
    ("int4", "amx"): "speechrs_int4_linear_amx",
}


def int8_linear(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor, n_out: int, variant: str = "avx2"):
    """x (M, K) -> (M, n_out) bf16 with codes blocked (N/8, K/8, 8, 8) int8 (amx: (N/16, K, 16)), scale (N,)
    fp32 (N >= n_out, the codes' rows padded to a block); x is rounded to bf16 first. Only where variant() is
    `variant` or above it (avx2 < avx512 < amx)."""
    n_blocks, k = blocked.shape[:2]
    weights = (blocked.data_ptr(), scale.data_ptr(), n_blocks, n_out)
    return _run(FUNCTIONS["int8", variant], x, k if variant == "amx" else k * 8, n_out, *weights)


def int4_linear(x: torch.Tensor, blocked: torch.Tensor, scale_zero: torch.Tensor, group: int, n_out: int,
                variant: str = "avx2"):  # fmt: skip
    """x (M, K) -> (M, n_out) bf16 with codes and scales blocked as quant.Int4Linear holds them for `variant`
    (avx2: (N/8, K/2, 8) uint8 and (N/8, K/group, 2, 8) bf16; avx512 and amx: (N/16, K/8, 16, 4) and (N/16,
    K/group, 2, 16)), N >= n_out; x is rounded to bf16 first. Only where variant() is `variant` or above it (avx2 <
    avx512 < amx)."""
    features = blocked.shape[1] * (8 if variant in INT4_WIDE else 2)
    weights = (blocked.data_ptr(), scale_zero.data_ptr(), group, len(blocked), n_out)
    return _run(FUNCTIONS["int4", variant], x, features, n_out, *weights)


def int4_weights(blocked: torch.Tensor, scale_zero: torch.Tensor, group: int, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of int4 codes blocked as for int4_linear's avx512 / amx variants made bf16 weights (rows,
    K): (q - 8) * scale + zero, each step rounded in fp32, then to bf16. start a multiple of 16. Only where
    variant() is "avx512" or "amx"."""
    library = _lib()
    b0, b1 = start // 16, -(-stop // 16)
    k = blocked.shape[1] * 8
    out = torch.empty((b1 - b0) * 16, k, dtype=torch.bfloat16)
    args = (blocked.data_ptr(), scale_zero.data_ptr(), k, group, b0, b1, out.data_ptr(), torch.get_num_threads())
    library.speechrs_int4_weights_avx512(*args)
    return out[: stop - start]


def int4_weights_avx2(blocked: torch.Tensor, scale_zero: torch.Tensor, group: int, start: int, stop: int):
    """Rows [start, stop) of int4 codes blocked as for int4_linear's avx2 variant made fp32 weights (rows, K):
    (q - 8) * scale + zero, each step rounded in fp32 (Int4Linear.dequantized() exactly); the transpose of a
    contiguous (K, rows), as a GEMM reads it best. start a multiple of 8. Where the library runs."""
    library = _lib()
    b0, b1 = start // 8, -(-stop // 8)
    k = blocked.shape[1] * 2
    out = torch.empty(k, (b1 - b0) * 8)
    args = (blocked.data_ptr(), scale_zero.data_ptr(), k, group, b0, b1, out.data_ptr(), torch.get_num_threads())
    library.speechrs_int4_weights_avx2(*args)
    return out.T[: stop - start]


def int8_weights(blocked: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of int8 codes blocked for the amx variant, (ceil(N/16), K, 16), as exact bf16 weights
    (rows, K): the transpose of a contiguous (K, rows), as a GEMM reads it best. start a multiple of 16. Only where
    variant() is "amx"."""
    library = _lib()
    b0, b1 = start // 16, -(-stop // 16)
    k = blocked.shape[1]
    out = torch.empty(k, (b1 - b0) * 16, dtype=torch.bfloat16)
    library.speechrs_int8_weights_amx(blocked.data_ptr(), k, b0, b1, out.data_ptr(), torch.get_num_threads())
    return out.T[: stop - start]


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T -> (M, N) bf16, weight bf16 with contiguous rows (a row view of a larger weight
    too); x is rounded to bf16 first. Only where available()."""
    n, k = weight.shape
    return _run("speechrs_bf16_linear", x, k, n, weight.data_ptr(), weight.stride(0), n)


def attends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether attend_one takes this query and cache (csrc/decode.c): all bf16 on the CPU, head dim a multiple
    of 32 up to 256, each head's positions contiguous rows (a cache's [:, :, :S] view is)."""
    E = q.shape[-1]
    rows = all(t.stride(-1) == 1 and t.stride(-2) == E for t in (k, v))
    return q.dtype == k.dtype == v.dtype == torch.bfloat16 and E % 32 == 0 and E <= 256 and rows


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per row, q (B, H, 1, E), over k / v (B, K, S, E), K dividing H -> (B, H, 1, E) bf16: the scores
    and the weighted values in C, torch's softmax between. Only where available() and attends(q, k, v)."""
    library = _lib()
    (B, H, _, E), (K, S), threads = q.shape, k.shape[1:3], torch.get_num_threads()
    q = q.contiguous()
    scores = torch.empty(B, H, S, dtype=torch.float32)
    status = library.speechrs_attend_scores(
        q.data_ptr(), k.data_ptr(), B, H, K, S, E, k.stride(0), k.stride(1), scale, scores.data_ptr(), threads
    )
    weights = scores.softmax(dim=-1)
    out = torch.empty(B, H, 1, E, dtype=torch.bfloat16)
    status |= library.speechrs_attend_values(
        weights.data_ptr(), v.data_ptr(), B, H, K, S, E, v.stride(0), v.stride(1), out.data_ptr(), threads
    )
    assert status == 0, "attends() admits only the shapes csrc/decode.c takes"
    return out


def rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """layers.apply_rope_interleaved of bf16 x (B, H, T, E), any strides with its last dim contiguous, by rot (T,
    E/2) complex64, contiguous, in C -> (B, H, T, E) bf16, contiguous. Only where available()."""
    library = _lib()
    B, H, T, E = x.shape
    out = torch.empty(B, H, T, E, dtype=torch.bfloat16)
    strides = x.stride()[:3]
    status = library.speechrs_rope(x.data_ptr(), B, H, T, E, *strides, rot.data_ptr(), out.data_ptr())
    assert status == 0, "pairs: an even head dim"
    return out


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """layers.RMSNorm of bf16 rows (..., D) with a bf16 gain (D,), D % 8 == 0, in C. Only where available()."""
    library = _lib()
    x = x.contiguous()
    y = torch.empty_like(x)
    status = library.speechrs_rms_norm(
        x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], gain.data_ptr(), eps, y.data_ptr()
    )
    assert status == 0, "rows of a multiple of 8"
    return y


QUANTIZED_DTYPES = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}  # csrc/quantize.c's dtype codes


def quantizes(weight: torch.Tensor) -> bool:
    """Whether quantize_int8 / quantize_int4 take this weight here: wherever the library runs (whatever variant()
    says of the matmul kernels), a 2-D CPU weight in bf16, fp16 or fp32 with contiguous rows."""
    ok = weight.device.type == "cpu" and weight.dtype in QUANTIZED_DTYPES and weight.dim() == 2
    return ok and weight.stride(1) == 1 and build._allowed() is None and not isinstance(build._library(), str)


def quantize_int8(weight: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, rows: int, cols: int) -> None:
    """quant.int8_codes's numbers for weight (N, K) written into `codes` (int8, laid out in blocks of `rows` x
    `cols`: (1, K) plain, (8, 8) or (16, 1) blocked, rows past N zero) and `scale` (N,) fp32. Only where
    quantizes(weight)."""
    library = _lib()
    n, k = weight.shape
    assert codes.dtype == torch.int8 and codes.is_contiguous() and codes.numel() == -(-n // rows) * rows * k
    assert scale.dtype == torch.float32 and scale.is_contiguous() and len(scale) == n
    args = (weight.data_ptr(), QUANTIZED_DTYPES[weight.dtype], n, k, weight.stride(0), codes.data_ptr())
    library.speechrs_quantize_int8(*args, scale.data_ptr(), rows, cols, torch.get_num_threads())


def quantize_int4(weight: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor, group: int) -> None:
    """quant.int4_codes's numbers for weight (N, K) written into codes (N, K / 2) uint8 (contiguous) and
    scale_zero (K / group, N, 2) fp32 (a view of rows of a larger one too). Only where quantizes(weight); group % 8
    == 0."""
    library = _lib()
    n, k = weight.shape
    assert group % 8 == 0 and k % group == 0 and codes.is_contiguous() and codes.shape == (n, k // 2)
    assert scale_zero.dtype == torch.float32 and scale_zero.shape == (k // group, n, 2)
    assert scale_zero.stride(1) == 2 and scale_zero.stride(2) == 1 and codes.dtype == torch.uint8
    args = (weight.data_ptr(), QUANTIZED_DTYPES[weight.dtype], n, k, weight.stride(0), group, codes.data_ptr())
    sz = (scale_zero.data_ptr(), scale_zero.stride(0) // 2)
    library.speechrs_quantize_int4(*args, *sz, 0, 0, torch.get_num_threads())  # block 0: the portable layout


def quantize_int4_blocked(
    weight: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor, group: int, row0: int, block: int
) -> None:
    """As quantize_int4, written straight into the layout of speechrs's int4 kernels (quant.Int4Linear.from_codes
    makes the same tensors from the portable one): rows row0 .. row0 + N of codes (R/8, K/2, 8) uint8 (block 8)
    or (R/16, K/8, 16, 4) (block 16) and scale_zero (R/block, K/group, 2, block) bf16, both contiguous."""
    library = _lib()
    n, k = weight.shape
    assert group % 8 == 0 and k % group == 0 and block in (8, 16) and row0 % block == 0
    assert codes.dtype == torch.uint8 and codes.is_contiguous() and codes.numel() * 2 >= (row0 + n) * k
    assert (
        scale_zero.dtype == torch.bfloat16
        and scale_zero.is_contiguous()
        and scale_zero.shape[1:] == (k // group, 2, block)
    )
    args = (weight.data_ptr(), QUANTIZED_DTYPES[weight.dtype], n, k, weight.stride(0), group, codes.data_ptr())
    library.speechrs_quantize_int4(*args, scale_zero.data_ptr(), 0, block, row0, torch.get_num_threads())


@functools.cache
def bf16_step_kernels():
    """This module, for a bf16 decode step's small ops (attend_one over bf16 caches, rms_norm, rope) where they run
    here: a CPU without native bf16 where speechrs's kernels build (not SPEECHRS_CPU_KERNELS=0); None elsewhere.
    Read once per process."""
    if cpu_native_bf16():
        return None
    return sys.modules[__name__] if build.available() else None
