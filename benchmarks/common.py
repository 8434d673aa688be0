"""Shared by the benchmarks: peak memory, and one worker subprocess per implementation."""

import json
import os
import resource
import subprocess
import sys
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
    """rows: (label, key, higher_is_better); ratio > 1 always means speechrs is better."""
    s, t = results["speechrs"], results["transformers"]
    print(f"{'metric':<24}{'speechrs':>12}{'transformers':>14}{'ratio':>9}")
    for label, key, higher_better in rows:
        ratio = s[key] / t[key] if higher_better else t[key] / s[key]
        print(f"{label:<24}{s[key]:>12.2f}{t[key]:>14.2f}{ratio:>8.2f}x")
    print("ratio > 1 means speechrs is better (faster or smaller)")
