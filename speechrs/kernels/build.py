"""The kernels' library: its C sources and flags, the compiler, the per-user cache, and which variant runs here.

Nothing needs a compiler at install: the C sources ship as package data, are compiled once into a per-user cache
and loaded with ctypes (which releases the GIL during a call). The library links libgomp.so.1, which resolves to
the OpenMP runtime torch has already loaded, so both share one thread pool. Where no compiler works, or the CPU
lacks AVX2/FMA/F16C, `available()` is False with the reason in `why_not()`, and callers keep torch's kernels.

Three variants (docs/kernels.md): "avx2" (AVX2 + FMA), "avx512" (AVX-512 BF16) and "amx" (AMX tiles, on top of
AVX-512 BF16). The quantizers in the same library run wherever it does, whatever `variant()` says, as they compute
torch's numbers bit for bit. SPEECHRS_CPU_KERNELS: "0" never use these; "1" wherever they can be built (the best
variant the CPU has); "avx512" / "avx2" that variant at most; unset, at the torch CPU levels where they were
measured faster than torch's kernels: AVX2, and AVX-512 with AVX-512 BF16 (so AMX too), not AVX-512 without BF16.
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

from speechrs import settings
from speechrs.kernels.cpu import cpu_flags
from speechrs.settings import cache_dir

# the matmul kernels one file per instruction set, the quantizers quant_codes.py runs at load and a bf16 decode
# step's small ops: one library
CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("x86/avx2.c", "x86/avx512.c", "x86/amx.c", "quantize.c", "decode.c")]
HEADERS = [CSRC / "kernels.h"]  # included by the sources: part of what a build is
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(extra: list[str] | None = None) -> Path:
    """The library for these sources and flags, compiled once (raises RuntimeError with the reason)."""
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
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # seconds; never hang a load
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
    """The built and loaded library, or why it could not be had; tried once per process. Its functions' argument
    types are ops.py's (ops._lib)."""
    # a compiler too old for AMX intrinsics (gcc < 11) still builds the AVX-512 variant, one too old for AVX-512
    # BF16 (gcc < 10) the AVX2 one
    first: Exception | None = None
    for extra in ([], ["-DSPEECHRS_NO_AMX"], ["-DSPEECHRS_NO_AVX512"]):
        try:
            return ctypes.CDLL(str(_build(extra)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            first = first or e
    return f"could not build them: {first}"


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
