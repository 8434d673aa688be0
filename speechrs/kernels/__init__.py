"""speechrs's own CPU kernels (linear_x86.c), built at first use with the machine's C compiler.

On an AVX2 CPU torch's weight-only int8 kernel reads 10-18 GB/s of codes at one row on 2 Zen 3 cores and falls as
rows are added (issue 16); the kernel here streams a blocked layout at the machine's bandwidth (20-23 GB/s) and
stays compute-bound beyond. On an AVX-512 BF16 CPU without AMX (2 Zen 4 cores, 35.8 GB/s) torch's int8 kernel
streams 19-24 GB/s at one row and holds 55-72 G multiply-adds/s from 4 rows to 16, the AVX-512 variant here 32-33
GB/s and 95-151; int4, torch's 44 G weights/s at one row and 81-83 G multiply-adds/s from 4 rows, this one's
69-82 and ~145 (its own 16-row layout).
Nothing needs a compiler at install: the C file ships as package data, is compiled once into a per-user cache
(under two seconds), and loaded with ctypes (which releases the GIL during the call). It links libgomp.so.1,
which resolves to the OpenMP runtime torch has already loaded, so both share one thread pool. Where no compiler
works, or the CPU lacks AVX2/FMA, `available()` is False with the reason in `why_not()`, and callers keep torch's
kernel.

Three variants: "avx2" (AVX2 + FMA, activations widened to fp32), "avx512" (AVX-512 BF16: vdpbf16ps on the bf16
activations as they are) and "amx" (where the CPU has AMX tiles: int8 and int4 through the tile unit, int4 on
avx512's layout, int8 on one of its own). On 2 Sapphire Rapids-class cores (22-28 GB/s) the AMX int4 kernel
streams 14-16 GB/s of int4 at one row (the AVX-512 one 17-18, torch's 15-18) and holds 10-14 from 2 rows to 8,
where the AVX-512 one falls from 12 to 3; the AMX int8 kernel 21-25 GB/s of int8 at one row (AVX-512 20-24,
torch's 12-19) and 22-25 from 2 rows to 8, where the AVX-512 one falls from 18 to 8.
The same library holds the quantizers quant_codes.py runs at load (csrc/quantize.c): wherever it runs they do,
whatever `variant()` says of the matmul kernels, as they compute torch's numbers bit for bit.
`variant()` says which a layer made now runs. SPEECHRS_CPU_KERNELS: "0" never use these; "1" wherever they can be
built (the best variant the CPU has); "avx512" / "avx2" that variant at most; unset, where they were measured
faster than torch's: torch's kernel level AVX2 (Zen 3), AVX-512 BF16 (Zen 4, an earlier reading on Zen 5
agreeing) and AMX (Sapphire Rapids class). On AVX-512 without BF16 torch's kernels stay unless set.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from speechrs import settings
from speechrs.kernels.cpu import cpu_flags, cpu_native_bf16
from speechrs.settings import cache_dir

# the matmul kernels, the quantizers quant.py runs at load and a bf16 decode step's small ops (one library)
CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("linear_x86.c", "quantize.c", "decode.c")]
HEADERS = [CSRC / "kernels.h"]  # included by the sources: part of what a build is
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(extra: list[str] | None = None) -> Path:
    """The library for this source and these flags, compiled once (raises RuntimeError with the reason)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang; or set CC)")
    flags = [*FLAGS, *(extra or [])]
    sources = b"".join(source.read_bytes() for source in [*SOURCES, *HEADERS])
    digest = hashlib.sha256(sources + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"kernels-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and renamed: processes building at once each rename a whole library
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *flags, *map(str, SOURCES), "-o", str(built)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # ~1 s; never hang a load
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"{compiler} failed: {last}")
        os.replace(built, target)
    return target


AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}  # the AVX-512 variant's target
SETTINGS = settings.KERNEL_SETTINGS
AMX_FLAGS = {"amx_tile", "amx_bf16"}
# the variants whose int4 layout is 16 rows to a block and 8 along K to a row's 4 bytes (the AVX-512 BF16 one, which
# the AMX int4 kernel reads too); "avx2"'s is 8 rows, 2 along K to a byte
INT4_WIDE = ("avx512", "amx")


@functools.cache
def _flags() -> frozenset[str] | None:
    return cpu_flags()  # /proc/cpuinfo, read once here (cpu_flags stays uncached for its other callers)


def _setting() -> str | None:
    return settings.cpu_kernels()


def _best_variant() -> str:
    flags = _flags()
    return "avx512" if flags is not None and flags >= AVX512_FLAGS else "avx2"


def _allowed() -> str | None:
    """None if this library may be built and run here (its quantizers then always run), else why not."""
    setting = _setting()
    if setting == "0":
        return "SPEECHRS_CPU_KERNELS=0"
    if setting is not None and setting not in SETTINGS:
        return f"SPEECHRS_CPU_KERNELS={setting!r} is none of 0 (never), 1 (the best variant), avx2, avx512"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for x86-64 Linux only ({platform.system()} {platform.machine()})"
    flags = _flags()
    if flags is not None and not {"avx2", "fma", "f16c"} <= flags:
        return "the CPU lacks AVX2/FMA/F16C"
    return None


def _wanted() -> str | None:
    """None if the matmul kernels should be used here, else why not."""
    setting, reason = _setting(), _allowed()
    if reason is None and setting is None:
        level = torch.backends.cpu.get_cpu_capability()
        if level == "AVX2" or (level == "AVX512" and _best_variant() == "avx512"):
            return None
        what = " without AVX-512 BF16" if level == "AVX512" else ""
        return f"torch's kernels on {level}{what} (SPEECHRS_CPU_KERNELS=1 to use them)"
    return reason


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The built and loaded library, or why it could not be had; tried once per process."""
    # a compiler too old for AMX intrinsics (gcc < 11) still builds the AVX-512 variant, one too old for AVX-512
    # BF16 (gcc < 10) the AVX2 one
    first: Exception | None = None
    for extra in ([], ["-DSPEECHRS_NO_AMX"], ["-DSPEECHRS_NO_AVX512"]):
        try:
            library = ctypes.CDLL(str(_build(extra)))
            break
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            first = first or e
    else:
        return f"could not build them: {first}"
    library.speechrs_int8_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_bf16_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_quantize_int8.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_quantize_int4.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_int4_weights_avx2.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_int4_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_attend_scores.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 7, ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_rope.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 7, ctypes.c_void_p, ctypes.c_void_p]
    library.speechrs_rms_norm.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p,
    ]  # fmt: skip
    library.speechrs_attend_values.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 7, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    if hasattr(library, "speechrs_int8_linear_avx512"):  # same arguments as the AVX2 ones
        library.speechrs_int8_linear_avx512.argtypes = library.speechrs_int8_linear.argtypes
        library.speechrs_int4_linear_avx512.argtypes = library.speechrs_int4_linear.argtypes
        if hasattr(library, "speechrs_int4_linear_amx"):
            library.speechrs_int4_linear_amx.argtypes = library.speechrs_int4_linear.argtypes
            library.speechrs_int8_linear_amx.argtypes = library.speechrs_int8_linear.argtypes
            library.speechrs_int8_weights_amx.argtypes = [
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
            ]  # fmt: skip
        library.speechrs_int4_weights_avx512.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_void_p, ctypes.c_int,
        ]  # fmt: skip
    return library


def why_not() -> str | None:
    """Why layers made now would not use these kernels, or None when they would. Read at each layer's making
    (a layer made with them keeps them)."""
    reason = _wanted()
    if reason is None:
        library = _library()
        reason = library if isinstance(library, str) else None
    return reason


def available() -> bool:
    return why_not() is None


def _amx_tiles() -> bool:
    """Whether the AMX kernels can run in this process: the CPU has AMX-BF16, the library has them, and Linux
    granted the process tile data."""
    flags = _flags()
    return flags is not None and flags >= AMX_FLAGS and _amx_granted()


@functools.cache
def _amx_granted() -> bool:
    """Asked once per process (oneDNN asks the same when it first uses AMX)."""
    library = _library()
    if isinstance(library, str) or not hasattr(library, "speechrs_int4_linear_amx"):
        return False
    return library.speechrs_amx_request() == 0


def variant() -> str | None:
    """ "amx", "avx512" or "avx2": the int8 / int4 kernels layers made now run ("amx": through the tile unit);
    None where none are used (why_not())."""
    if why_not() is not None:
        return None
    library = _library()
    built = not isinstance(library, str) and hasattr(library, "speechrs_int8_linear_avx512")
    if not built or _setting() == "avx2" or _best_variant() != "avx512":
        return "avx2"
    return "amx" if _setting() != "avx512" and _amx_tiles() else "avx512"


def kernel_name(variant: str | None) -> str:
    """How a load line and a layer's repr name the kernel `variant` (None: torch's)."""
    names = {
        "amx": "speechrs's AMX / AVX-512 BF16 kernel",
        "avx512": "speechrs's AVX-512 BF16 kernel",
        "avx2": "speechrs's AVX2 kernel",
    }
    return names.get(variant or "", "torch's kernel")


# Per call these wrappers check only the activations: the weights' layout is quant.py's, fixed at load. The
# Python around a call (~20 us) is most of a small layer's time, so it is kept short.


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
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
    B, H, T, E = x.shape
    out = torch.empty(B, H, T, E, dtype=torch.bfloat16)
    strides = x.stride()[:3]
    status = library.speechrs_rope(x.data_ptr(), B, H, T, E, *strides, rot.data_ptr(), out.data_ptr())
    assert status == 0, "pairs: an even head dim"
    return out


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """layers.RMSNorm of bf16 rows (..., D) with a bf16 gain (D,), D % 8 == 0, in C. Only where available()."""
    library = _library()
    assert not isinstance(library, str), library
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
    return ok and weight.stride(1) == 1 and _allowed() is None and not isinstance(_library(), str)


def quantize_int8(weight: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, rows: int, cols: int) -> None:
    """quant.int8_codes's numbers for weight (N, K) written into `codes` (int8, laid out in blocks of `rows` x
    `cols`: (1, K) plain, (8, 8) or (16, 1) blocked, rows past N zero) and `scale` (N,) fp32. Only where
    quantizes(weight)."""
    library = _library()
    assert not isinstance(library, str), library
    n, k = weight.shape
    assert codes.dtype == torch.int8 and codes.is_contiguous() and codes.numel() == -(-n // rows) * rows * k
    assert scale.dtype == torch.float32 and scale.is_contiguous() and len(scale) == n
    args = (weight.data_ptr(), QUANTIZED_DTYPES[weight.dtype], n, k, weight.stride(0), codes.data_ptr())
    library.speechrs_quantize_int8(*args, scale.data_ptr(), rows, cols, torch.get_num_threads())


def quantize_int4(weight: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor, group: int) -> None:
    """quant.int4_codes's numbers for weight (N, K) written into codes (N, K / 2) uint8 (contiguous) and
    scale_zero (K / group, N, 2) fp32 (a view of rows of a larger one too). Only where quantizes(weight); group % 8
    == 0."""
    library = _library()
    assert not isinstance(library, str), library
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
    library = _library()
    assert not isinstance(library, str), library
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
    """speechrs's kernels for a bf16 decode step's small ops (kernels.attend_one over bf16 caches,
    kernels.rms_norm) where they run here: a CPU without native bf16 where speechrs's kernels build (not
    SPEECHRS_CPU_KERNELS=0); None elsewhere. Read once per process."""
    if cpu_native_bf16():
        return None
    return sys.modules[__name__] if available() else None
