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
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
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
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_int8_linear.restype = None
    library.speechrs_int4_linear.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    library.speechrs_int4_linear.restype = None
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


def int8_linear(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32, codes blocked (N/8, K/8, 8, 8) int8, scale (N,) fp32 -> (M, N) fp32; only where
    available()."""
    library = _library()
    assert not isinstance(library, str), library
    n_blocks, k8 = blocked.shape[:2]
    if not (x.dtype == scale.dtype == torch.float32 and blocked.dtype == torch.int8 and x.shape[1] == k8 * 8):
        raise ValueError(f"int8_linear: x {tuple(x.shape)} {x.dtype}, codes {tuple(blocked.shape)}")
    x, blocked, scale = x.contiguous(), blocked.contiguous(), scale.contiguous()
    y = torch.empty(x.shape[0], n_blocks * 8, dtype=torch.float32)
    library.speechrs_int8_linear(
        x.data_ptr(), x.shape[0], x.shape[1], blocked.data_ptr(), scale.data_ptr(), n_blocks, y.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return y


def int4_linear(x: torch.Tensor, blocked: torch.Tensor, scale_zero: torch.Tensor, group: int) -> torch.Tensor:
    """x (M, K) fp32, codes blocked (N/8, K/2, 8) uint8, scale_zero blocked (N/8, K/group, 2, 8) bf16 -> (M, N)
    fp32; only where available()."""
    library = _library()
    assert not isinstance(library, str), library
    n_blocks, half_k = blocked.shape[:2]
    ok = x.dtype == torch.float32 and blocked.dtype == torch.uint8 and scale_zero.dtype == torch.bfloat16
    if not (ok and x.shape[1] == half_k * 2 and scale_zero.shape == (n_blocks, half_k * 2 // group, 2, 8)):
        raise ValueError(f"int4_linear: x {tuple(x.shape)} {x.dtype}, codes {tuple(blocked.shape)}, group {group}")
    x, blocked, scale_zero = x.contiguous(), blocked.contiguous(), scale_zero.contiguous()
    y = torch.empty(x.shape[0], n_blocks * 8, dtype=torch.float32)
    sums = torch.empty(x.shape[0], x.shape[1] // group, dtype=torch.float32)  # the kernel's scratch
    library.speechrs_int4_linear(
        x.data_ptr(), x.shape[0], x.shape[1], blocked.data_ptr(), scale_zero.data_ptr(), group, n_blocks,
        y.data_ptr(), sums.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return y
