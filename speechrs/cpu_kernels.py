"""speechrs's own CPU kernels (cpu_kernels.c), built at first use with the machine's C compiler.

On an AVX2 CPU torch's weight-only int8 kernel reads 10-18 GB/s of codes at one row on 2 Zen 3 cores and falls as
rows are added (issue 16); the kernel here streams a blocked layout at the machine's bandwidth (20-23 GB/s) and
stays compute-bound beyond. Nothing needs a compiler at install: the C file ships as package data, is compiled
once into a per-user cache (under a second), and loaded with ctypes (which releases the GIL during the call). It
links libgomp.so.1, which resolves to the OpenMP runtime torch has already loaded, so both share one thread pool.
Where no compiler works, or the CPU lacks AVX2/FMA, `available()` is False with the reason in `why_not()`, and
callers keep torch's kernel.

SPEECHRS_CPU_KERNELS: "0" never use these; "1" wherever they can be built; unset, where torch's kernel level is
AVX2 (measured there; on AVX-512 CPUs torch's kernels stay until this one is measured against them).
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .layers import cpu_flags

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def cache_dir() -> Path:
    """Where the built library is kept: $SPEECHRS_CACHE_DIR, else $XDG_CACHE_HOME/speechrs (~/.cache/speechrs)."""
    base = os.environ.get("SPEECHRS_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speechrs"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> Path:
    """The library for this source and these flags, compiled once (raises RuntimeError with the reason)."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang; or set CC)")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside the target and renamed: processes building at once each rename a whole library
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # ~1 s; never hang a load
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"{compiler} failed: {last}")
        os.replace(built, target)
    return target


def _wanted() -> str | None:
    """None if the kernels should be used here, else why not."""
    setting = os.environ.get("SPEECHRS_CPU_KERNELS")
    if setting == "0":
        return "SPEECHRS_CPU_KERNELS=0"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"built for x86-64 Linux only ({platform.system()} {platform.machine()})"
    flags = cpu_flags()
    if flags is not None and not {"avx2", "fma"} <= flags:
        return "the CPU lacks AVX2/FMA"
    if setting != "1" and torch.backends.cpu.get_cpu_capability() != "AVX2":
        return f"torch's kernels on {torch.backends.cpu.get_cpu_capability()} (SPEECHRS_CPU_KERNELS=1 to use them)"
    return None


@functools.cache
def _library() -> ctypes.CDLL | str:
    """The built and loaded library, or why it could not be had; tried once per process."""
    try:
        library = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return f"could not build them: {e}"
    library.speechrs_int8_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_bf16_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_int4_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
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


def int8_linear(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor, n_out: int) -> torch.Tensor:
    """x (M, K) -> (M, n_out) bf16 with codes blocked (N/8, K/8, 8, 8) int8, scale (N,) fp32 (N >= n_out, the
    codes' rows padded to a block); x is rounded to bf16 first. Only where available()."""
    n_blocks, k8 = blocked.shape[:2]
    return _run("speechrs_int8_linear", x, k8 * 8, n_out, blocked.data_ptr(), scale.data_ptr(), n_blocks, n_out)


def int4_linear(x: torch.Tensor, blocked: torch.Tensor, scale_zero: torch.Tensor, group: int, n_out: int):
    """x (M, K) -> (M, n_out) bf16 with codes blocked (N/8, K/2, 8) uint8 and scale_zero blocked (N/8, K/group,
    2, 8) bf16 (N >= n_out); x is rounded to bf16 first. Only where available()."""
    n_blocks, half_k = blocked.shape[:2]
    weights = (blocked.data_ptr(), scale_zero.data_ptr(), group, n_blocks, n_out)
    return _run("speechrs_int4_linear", x, half_k * 2, n_out, *weights)


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T -> (M, N) bf16, weight bf16 with contiguous rows (a row view of a larger weight
    too); x is rounded to bf16 first. Only where available()."""
    n, k = weight.shape
    return _run("speechrs_bf16_linear", x, k, n, weight.data_ptr(), weight.stride(0), n)
