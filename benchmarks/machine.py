"""The machine's own limits and every linear path on the models' real shapes, measured in one run.

    python benchmarks/machine.py            # the CPU, memory bandwidth, fp32/bf16 GEMM peak, then each kernel

Memory bandwidth: the best of several sums over a 1 GiB buffer (a read-only stream, what a decode step does).
GEMM peak: the best of several large square matmuls. Kernels: one Linear of each path (torch fp32, torch bf16,
oneDNN-packed bf16, int8 and int4 weight-only; speechrs's AVX2 kernels where they run, for bf16 as upcast.py runs it)
on the decode shapes of Voxtral and Dia at 1, 2, 8 and 16 rows, in GB/s of weights read (against the bandwidth)
and, for 383 rows (one prefill chunk), in GFLOP/s (against the peak). bench_voxtral.py and bench_dia.py import
`limits()` so their figures are put against the same measures.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechrs import cpu_kernels  # noqa: E402
from speechrs.compute import cpu_native_bf16, cpu_summary  # noqa: E402
from speechrs.packing import PackedLinear  # noqa: E402
from speechrs.quant import Int4Linear, Int8Linear  # noqa: E402
from speechrs.upcast import UpcastLinear  # noqa: E402

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
        n = 512  # emulated bf16 runs ~0.3 GFLOP/s on AVX2: a 2048^2 matmul takes a minute, five of them minutes
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


def paths(weight: torch.Tensor) -> dict:
    """name -> (module or function, bytes of weights it reads per call)."""
    n, k = weight.shape
    w32, w16 = weight.float(), weight.to(torch.bfloat16)
    out = {
        "fp32 F.linear": (lambda x: F.linear(x.float(), w32), n * k * 4),
        "bf16 F.linear": (lambda x: F.linear(x, w16), n * k * 2),
    }
    if cpu_native_bf16():
        packed = PackedLinear(w16)
        out["bf16 packed"] = (packed, n * k * 2)
    if cpu_kernels.available():  # a bf16 model's decode rows on a CPU without native bf16 (upcast.py)
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        linear.weight.data.copy_(w16)
        out["bf16 speechrs"] = (UpcastLinear(linear), n * k * 2)
    kernels = ["speechrs", "torch"] if cpu_kernels.available() else ["torch"]  # speechrs's AVX2 kernels beside
    for kernel in kernels:
        os.environ["SPEECHRS_CPU_KERNELS"] = "1" if kernel == "speechrs" else "0"
        q8, q4 = Int8Linear.quantize(w16), Int4Linear.quantize(w16)
        out[f"int8 {kernel}"] = (q8, n * k)
        out[f"int4 {kernel}"] = (q4, n * k // 2 + q4.scale_zero.numel() * 2)
    os.environ.pop("SPEECHRS_CPU_KERNELS")
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
        print(f"{'shape':<14}{'path':<15}" + "".join(f"{r:>9} row" for r in (1, 2, 8, 16)) + f"{'383 rows':>12}")
    with torch.inference_mode():
        for label, (n, k) in SHAPES.items():
            weight = torch.randn(n, k) / k**0.5
            for name, (fn, n_bytes) in paths(weight).items():
                row = {}
                for rows in (1, 2, 8, 16):
                    x = torch.randn(rows, k, dtype=torch.bfloat16)
                    row[rows] = n_bytes / best_of(lambda: fn(x)) / 1e9  # noqa: B023 (timed at once)
                x = torch.randn(383, k, dtype=torch.bfloat16)
                row["prefill_gflops"] = 2 * 383 * n * k / best_of(lambda: fn(x), repeats=3) / 1e9  # noqa: B023
                result["kernels"][f"{label} / {name}"] = {str(r): round(v, 1) for r, v in row.items()}
                if not args.json:
                    gbs = "".join(f"{row[r]:>9.1f}GB/s"[:13].rjust(13) for r in (1, 2, 8, 16))
                    print(f"{label:<14}{name:<15}{gbs}{row['prefill_gflops']:>9.1f}GF/s")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
