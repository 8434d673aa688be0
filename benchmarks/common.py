"""Shared by the benchmarks: peak memory, and one worker subprocess per implementation."""

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Peak resident set of this process (VmHWM: reset at exec, unlike ru_maxrss, which a forked child inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_page_cache(*directories: Path) -> None:
    """Read every checkpoint file once, so neither implementation's load pays (or is spared) the disk."""
    for directory in directories:
        for path in sorted(Path(directory).glob("*.safetensors")):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_workers(script: str, names: list[str], args: list[str]) -> dict[str, dict]:
    """Run `script --worker NAME args...` for each name in its own process; each prints one JSON line."""
    results = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, script, "--worker", name, *args],
            capture_output=True,
            text=True,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
        )
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def print_table(results: dict[str, dict], rows: list[tuple[str, str, bool]]) -> None:
    """One column per worker (speechrs paths, then transformers), then each speechrs path's ratio against
    transformers; rows: (label, key, higher_is_better). A ratio > 1 always means speechrs is better."""
    names = list(results)
    ours = [n for n in names if n.startswith("speechrs")]
    ref = results.get("transformers")
    ratios = [("speechrs" if n == "speechrs" else n.removeprefix("speechrs-")) + "/tf" for n in ours] if ref else []
    width = max(16, *(len(n) + 2 for n in names))  # "speechrs-int8-stored" ran into its neighbour at 16
    rwidth = max(11, *(len(r) + 2 for r in ratios)) if ratios else 11
    print(f"{'metric':<24}" + "".join(f"{n:>{width}}" for n in names) + "".join(f"{r:>{rwidth}}" for r in ratios))
    for label, key, higher_better in rows:
        line = f"{label:<24}" + "".join(f"{results[n][key]:>{width}.2f}" for n in names)
        for n in ours if ref else []:
            s, t = results[n][key], ref[key]
            line += f"{(s / t if higher_better else t / s):>{rwidth - 1}.2f}x"
        print(line)
    if ref:
        print("ratio > 1 means speechrs is better (faster or smaller)")


def worker_quantize(name: str) -> str | None:
    """speechrs-int8 -> int8; speechrs-int8-stored -> int8-stored; speechrs -> None."""
    return name.split("-", 1)[1] if "-" in name else None


def stored_paths(ckpt: Path, quantize: str) -> dict[str, float]:
    """For each `KIND-stored` path asked (e.g. --quantize none,int8,int8-stored): write `speechrs quantize`'s
    directory next to the checkpoint once (ckpt-KIND) and read it into the page cache, as the checkpoint is;
    returns the seconds each write took (0 where it was already there)."""
    from speechrs.quantize_checkpoint import quantize_checkpoint

    seconds = {}
    for kind in [q.removesuffix("-stored") for q in quantize.split(",") if q.endswith("-stored")]:
        out, t0 = stored_dir(ckpt, kind), time.perf_counter()
        if not (out / "speechrs-quantized.json").exists():
            shutil.rmtree(out, ignore_errors=True)  # a write that stopped half way
            quantize_checkpoint(str(ckpt), out, kind)
        seconds[kind] = time.perf_counter() - t0
        warm_page_cache(out)
    return seconds


def stored_dir(ckpt: Path, kind: str) -> Path:
    return ckpt.with_name(f"{ckpt.name}-{kind}")


def load_args(ckpt: Path, quantize: str | None) -> tuple[Path, str | None]:
    """(directory, --quantize) a worker loads for its path: a stored path reads its directory as it is."""
    if quantize is not None and quantize.endswith("-stored"):
        return stored_dir(ckpt, quantize.removesuffix("-stored")), None
    return ckpt, quantize


def linear_bytes(module) -> int:
    """Bytes of weights a Linear-like module (nn.Linear, PackedLinear, Int8Linear, Int4Linear, UpcastLinear) reads
    per call."""
    from speechrs.linear.packing import PackedLinear

    if isinstance(module, PackedLinear):  # an opaque oneDNN tensor: count its logical size
        return module.in_features * module.out_features * module.dtype.itemsize
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def per_step_bytes(model, skip: str = "") -> int:
    """Weight bytes one decode step reads: every Linear-like leaf of `model` whose name does not match the regex
    `skip` (the encoder, projections run once per request, the parts of a fused Linear that are views of it)."""
    import re

    import torch

    from speechrs.linear.packing import PackedLinear
    from speechrs.linear.quant import Int4Linear, Int8Linear
    from speechrs.linear.upcast import UpcastLinear

    kinds = (torch.nn.Linear, PackedLinear, Int8Linear, Int4Linear, UpcastLinear)
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, kinds) and not (skip and re.search(skip, name)):
            total += linear_bytes(m)
    return total
