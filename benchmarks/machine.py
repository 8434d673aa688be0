"""The machine's own limits and every linear path on the models' real shapes, measured in one run.

    python benchmarks/machine.py            # the CPU, memory bandwidth, fp32/bf16 GEMM peak, then each kernel

Memory bandwidth: the best of several sums over a 1 GiB buffer (a read-only stream, what a decode step does).
GEMM peak: the best of several large square matmuls. Kernels: one Linear of each path (torch fp32, torch bf16,
oneDNN-packed bf16, int8 and int4 weight-only: torch's and each variant of speechrs's that runs here; speechrs's
bf16 kernel as upcast.py runs it) on the decode shapes of Voxtral and Dia at 1, 2, 8 and 16 rows, in GB/s of
weights read (against the bandwidth; each weight streamed from memory, not from cache) and, for 383 rows (one
prefill chunk), in GFLOP/s (against the peak). bench_voxtral.py and bench_dia.py import `limits()` so
their figures are put against the same measures.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechrs import kernels  # noqa: E402
from speechrs.linear.compute import cpu_native_bf16, cpu_summary  # noqa: E402
from speechrs.linear.packing import PackedLinear  # noqa: E402
from speechrs.linear.quant import Int4Linear, Int8Linear  # noqa: E402
from speechrs.linear.upcast import UpcastLinear  # noqa: E402

SHAPES = {  # (out, in) of the largest per-step weights
    "voxtral w13": (16384, 3072),
    "voxtral w2": (3072, 8192),
    "dia gate_up": (16384, 2048),
    "dia down": (2048, 8192),
}


def best_of(fn, repeats: int = 5, min_s: float = 0.2) -> float:
    """Seconds per call: the best over `repeats` timings of enough calls to last min_s."""
    fn()
    n, t0 = 1, time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(min_s / one))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return min(times)


def bandwidth_gbs() -> float:
    buf = torch.ones(2**28, dtype=torch.float32)  # 1 GiB
    return buf.numel() * 4 / best_of(lambda: buf.sum(), repeats=5, min_s=0.5) / 1e9


def gemm_peak_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    if dtype == torch.bfloat16 and not cpu_native_bf16():
        n = 512  # emulated bf16 is so slow (docs/performance.md, "The upcast path") that 2048^2 would take minutes
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_of(lambda: a @ b, repeats=3, min_s=0.5) / 1e9


def limits() -> dict:
    """The machine's measured limits: bandwidth (GB/s) and GEMM peaks (GFLOP/s), with the CPU named."""
    return {
        "cpu": cpu_summary(),
        "threads": torch.get_num_threads(),
        "bandwidth_gbs": round(bandwidth_gbs(), 1),
        "fp32_gflops": round(gemm_peak_gflops(torch.float32), 1),
        "bf16_gflops": round(gemm_peak_gflops(torch.bfloat16), 1),
    }


def describe(lim: dict) -> str:
    """One line: the CPU and its limits as limits() measured them."""
    return (
        f"{lim['cpu']}, {lim['threads']} threads: memory bandwidth {lim['bandwidth_gbs']} GB/s, GEMM peak "
        f"fp32 {lim['fp32_gflops']} / bf16 {lim['bf16_gflops']} GFLOP/s (measured in this run)"
    )


# Each path is timed over enough copies of its weight (in turn) to hold ROTATE_BYTES, so a decode shape streams from
# memory as it does in a model's step instead of from a 32 MiB+ L3 that one 24-64 MB weight would partly fit: 512 MiB
# or twice the L3 the machine reports (a Xeon's can be 300-480 MiB), whichever is more.
def _l3_bytes() -> int:
    try:
        size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()  # e.g. "32768K"
        return int(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
    except (OSError, ValueError):
        return 0


ROTATE_BYTES = max(512 * 2**20, 2 * _l3_bytes())
# SPEECHRS_CPU_KERNELS for each
KERNEL_SETTINGS = {"speechrs-amx": "1", "speechrs-avx512": "avx512", "speechrs-avx2": "avx2", "torch": "0"}


def _kernels() -> list[str]:
    """The weight-only kernels this machine can run: torch's, and each of speechrs's variants it has."""
    found = []
    for name, setting in KERNEL_SETTINGS.items():
        os.environ["SPEECHRS_CPU_KERNELS"] = setting
        if setting == "0" or kernels.variant() == name.removeprefix("speechrs-"):
            found.append(name)
    os.environ.pop("SPEECHRS_CPU_KERNELS")
    return found


def _linear(w: torch.Tensor):
    return lambda x: F.linear(x.to(w.dtype), w)


def paths(weight: torch.Tensor) -> dict:
    """name -> (a function of x for each copy of the weight, bytes of weights it reads per call)."""
    n, k = weight.shape
    copies = lambda n_bytes: range(max(1, ROTATE_BYTES // n_bytes))  # noqa: E731
    w16 = weight.to(torch.bfloat16)
    out: dict = {
        "fp32 F.linear": ([_linear(weight.clone()) for _ in copies(n * k * 4)], n * k * 4),
        "bf16 F.linear": ([_linear(w16.clone()) for _ in copies(n * k * 2)], n * k * 2),
    }
    if cpu_native_bf16():
        out["bf16 packed"] = ([PackedLinear(w16.clone()) for _ in copies(n * k * 2)], n * k * 2)
    if kernels.available():  # a bf16 model's decode rows on a CPU without native bf16 (upcast.py)
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        linear.weight.data.copy_(w16)
        out["bf16 speechrs"] = ([copy.deepcopy(UpcastLinear(linear)) for _ in copies(n * k * 2)], n * k * 2)
    for kernel in _kernels():
        os.environ["SPEECHRS_CPU_KERNELS"] = KERNEL_SETTINGS[kernel]
        q8, q4 = Int8Linear.quantize(w16), Int4Linear.quantize(w16)
        q4_bytes = n * k // 2 + q4.scale_zero.numel() * 2
        out[f"int8 {kernel}"] = ([copy.deepcopy(q8) for _ in copies(n * k)], n * k)
        out[f"int4 {kernel}"] = ([copy.deepcopy(q4) for _ in copies(q4_bytes)], q4_bytes)
    os.environ.pop("SPEECHRS_CPU_KERNELS", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"limits": limits(), "kernels": {}}
    lim = result["limits"]
    if not args.json:
        print(f"{lim['cpu']}, {lim['threads']} threads, torch {torch.__version__}")
        print(
            f"memory bandwidth {lim['bandwidth_gbs']} GB/s; GEMM peak fp32 {lim['fp32_gflops']} GFLOP/s, "
            f"bf16 {lim['bf16_gflops']} GFLOP/s"
        )
        print(f"{'shape':<14}{'path':<22}" + "".join(f"{r:>9} row" for r in (1, 2, 8, 16)) + f"{'383 rows':>12}")
    with torch.inference_mode():
        for label, (n, k) in SHAPES.items():
            weight = torch.randn(n, k) / k**0.5
            for name, (fns, n_bytes) in paths(weight).items():
                row = {}
                for rows in (1, 2, 8, 16):
                    x = torch.randn(rows, k, dtype=torch.bfloat16)
                    seconds = best_of(lambda: [fn(x) for fn in fns]) / len(fns)  # noqa: B023 (timed at once)
                    row[rows] = n_bytes / seconds / 1e9
                x = torch.randn(383, k, dtype=torch.bfloat16)
                seconds = best_of(lambda: fns[0](x), repeats=3)  # noqa: B023 (compute-bound: one copy)
                row["prefill_gflops"] = 2 * 383 * n * k / seconds / 1e9
                result["kernels"][f"{label} / {name}"] = {str(r): round(v, 1) for r, v in row.items()}
                if not args.json:
                    gbs = "".join(f"{row[r]:>9.1f}GB/s"[:13].rjust(13) for r in (1, 2, 8, 16))
                    print(f"{label:<14}{name:<22}{gbs}{row['prefill_gflops']:>9.1f}GF/s")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
