"""Every SPEECHRS_* environment variable speechrs reads, read here and nowhere else (each time it is asked, so a
test or a benchmark may change one between loads).

SPEECHRS_CPU_KERNELS   speechrs's C kernels: unset where they were measured faster than torch's, 0 never, 1 the
                       best variant the CPU has, avx2 / avx512 that variant at most
SPEECHRS_NATIVE_BF16   0 / 1: take the path of a CPU without / with hardware bf16 matmuls, whatever this one has
SPEECHRS_AMX           0 / 1: the same for AMX tiles (the decode step's bf16 attention)
SPEECHRS_PACK_WEIGHTS  0 keeps torch's plain Linear instead of weights packed for oneDNN
SPEECHRS_CACHE_DIR     where the built kernels are kept (default $XDG_CACHE_HOME/speechrs)
SPEECHRS_VOICES_DIR    where named voices are kept (default $XDG_DATA_HOME/speechrs/voices)
SPEECHRS_API_KEY       `speechrs serve --api-key`
"""

import os
from pathlib import Path

API_KEY = "SPEECHRS_API_KEY"  # read by typer as serve's --api-key envvar
KERNEL_SETTINGS = ("0", "1", "avx2", "avx512")


def cpu_kernels() -> str | None:
    """SPEECHRS_CPU_KERNELS as set (checked by the kernels, which say why a value is not one of KERNEL_SETTINGS)."""
    return os.environ.get("SPEECHRS_CPU_KERNELS") or None


def _forced(name: str) -> bool | None:
    value = os.environ.get(name)
    return value == "1" if value in ("0", "1") else None


def native_bf16() -> bool | None:
    """SPEECHRS_NATIVE_BF16: True / False when forced, None to ask the CPU."""
    return _forced("SPEECHRS_NATIVE_BF16")


def amx() -> bool | None:
    """SPEECHRS_AMX: True / False when forced, None to ask the CPU."""
    return _forced("SPEECHRS_AMX")


def pack_weights() -> bool:
    return os.environ.get("SPEECHRS_PACK_WEIGHTS", "1") != "0"


def cache_dir() -> Path:
    """$SPEECHRS_CACHE_DIR, else $XDG_CACHE_HOME/speechrs (~/.cache/speechrs)."""
    base = os.environ.get("SPEECHRS_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speechrs"


def voices_dir() -> Path:
    """$SPEECHRS_VOICES_DIR, else $XDG_DATA_HOME/speechrs/voices (~/.local/share/speechrs/voices)."""
    if os.environ.get("SPEECHRS_VOICES_DIR"):
        return Path(os.environ["SPEECHRS_VOICES_DIR"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "speechrs" / "voices"
