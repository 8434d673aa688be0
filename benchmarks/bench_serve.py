"""Load benchmark: N concurrent clients against a running `speechrs serve` on loopback, against the same requests
sent one after another to the same server.

    python benchmarks/bench_serve.py                                   # tiny Dia + tiny Voxtral
    python benchmarks/bench_serve.py --size full --dtype bfloat16 --clients 1,2,4,8 --max-batch 8

Dia requests stream speech (stream_format sse, fixed seeds, a fixed number of decoder steps); Voxtral requests
stream chat completions (fixed seeds). For each concurrency N the same N requests run once one after another and
once all at once: aggregate decoder steps/s (Dia) and tokens/s (Voxtral), p50/p95 latency, p50 time to first
audio / token, and whether each request's output is byte-identical in both runs (continuous batching must not
change results). The machine's limits are measured in the same run (machine.py).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TEXTS = [
    "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts and voices.",
    "[S1] Hello there, how are you today? [S2] Very well, thank you.",
    "[S2] A third request, of another length. [S1] Yes.",
    "[S1] Continuous batching decodes several requests in one step.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[str], dac: str | None, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "speechrs", "serve", "--port", str(port), "--max-queue", str(args.max_queue)]
    for m in models:
        cmd += ["-m", m]
    if dac:
        cmd += ["--dac", dac]
    if args.max_batch:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.quantize != "none":
        cmd += ["--quantize", args.quantize]
    cmd += ["--dtype", args.serve_dtype]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not start within 900 s")


async def speak(session, url: str, i: int, steps: int) -> dict:
    body = {
        "input": TEXTS[i % len(TEXTS)],
        "response_format": "pcm",
        "stream_format": "sse",
        "max_tokens": steps,
        "seed": i,
    }
    t0, first, digest, done = time.perf_counter(), None, hashlib.sha256(), {}
    async with session.post(f"{url}/v1/audio/speech", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "speech.audio.delta":
                first = first or time.perf_counter() - t0
                digest.update(base64.b64decode(event["audio"]))
            elif event["type"] == "speech.audio.done":
                done = event
    return {
        "latency": time.perf_counter() - t0,
        "first": first or 0.0,
        "work": done["usage"]["output_tokens"],
        "digest": digest.hexdigest(),
    }


async def chat(session, url: str, i: int, tokens: int) -> dict:
    body = {
        "messages": [{"role": "user", "content": f"Request {i}: tell me about the sea."}],
        "max_tokens": tokens,
        "temperature": 0.7,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0, first, text, usage = time.perf_counter(), None, [], {}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter() - t0
                    text.append(choice["delta"]["content"])
    return {
        "latency": time.perf_counter() - t0,
        "first": first or 0.0,
        "work": usage["completion_tokens"],
        "digest": hashlib.sha256("".join(text).encode()).hexdigest(),
    }


async def one_level(url: str, fn, n: int, size: int) -> tuple[dict, dict]:
    """The same n requests sequentially, then concurrently -> (sequential, concurrent) summaries."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        t0 = time.perf_counter()
        alone = [await fn(session, url, i, size) for i in range(n)]
        sequential_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        together = await asyncio.gather(*(fn(session, url, i, size) for i in range(n)))
        concurrent_s = time.perf_counter() - t0
    same = sum(a["digest"] == b["digest"] for a, b in zip(alone, together, strict=True))
    return _summary(alone, sequential_s, n), {**_summary(together, concurrent_s, n), "identical": same}


async def flood(url: str, n: int, steps: int) -> dict[int, int]:
    """n speech requests at once -> how many got each status."""
    import aiohttp

    body = {"input": TEXTS[0], "response_format": "pcm", "max_tokens": steps}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:

        async def one(i: int) -> int:
            async with session.post(f"{url}/v1/audio/speech", json={**body, "seed": i}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one(i) for i in range(n)))
        async with session.get(f"{url}/health") as resp:
            healthy = resp.status == 200
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return {**counts, "healthy after": healthy}


def _rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _summary(results: list[dict], wall_s: float, n: int) -> dict:
    latencies = sorted(r["latency"] for r in results)
    return {
        "rate": sum(r["work"] for r in results) / wall_s,
        "p50": statistics.median(latencies),
        "p95": latencies[min(n - 1, round(0.95 * (n - 1)))],
        "first_p50": statistics.median(r["first"] for r in results),
        "n": n,
    }


def header(name: str, unit: str) -> None:
    print(f"\n{name}: {unit}/s aggregate, latency and time to first output in seconds")
    print(
        f"{'clients':>8}{'sequential':>12}{'concurrent':>12}{'speedup':>9}{'p50':>8}{'p95':>8}{'first p50':>11}"
        f"{'seq p50':>9}{'seq first':>11}{'identical':>11}"
    )


def row(n: int, seq: dict, conc: dict) -> None:
    """One concurrency level, printed as soon as it is measured."""
    print(
        f"{n:>8}{seq['rate']:>12.2f}{conc['rate']:>12.2f}{conc['rate'] / seq['rate']:>8.2f}x{conc['p50']:>8.1f}"
        f"{conc['p95']:>8.1f}{conc['first_p50']:>11.2f}{seq['p50']:>9.1f}{seq['first_p50']:>11.2f}"
        f"{conc['identical']:>8}/{n}",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny", help="Dia's size (Voxtral: --voxtral)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--serve-dtype", default="auto", help="the server's --dtype (the checkpoint is --dtype)")
    ap.add_argument("--voxtral", default="tiny", help="'tiny', 'none', or a Voxtral directory")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=100, help="Dia decoder steps per request")
    ap.add_argument("--tokens", type=int, default=48, help="Voxtral tokens per request")
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--quantize", default="none", choices=["none", "int8", "int4"])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument("--flood", type=int, default=0, help="then send this many speech requests at once")
    ap.add_argument("--max-queue", type=int, default=64)
    args = ap.parse_args()
    import tiny
    from bench_dia import write_checkpoints
    from machine import describe, limits

    dia, dac = write_checkpoints(args.size, args.dtype, args.cache / f"dia-{args.size}-{args.dtype}")
    models = [str(dia)]
    if args.voxtral == "tiny":
        models.append(str(tiny.write_voxtral(args.cache / "voxtral-tiny")[0]))
    elif args.voxtral != "none":
        models.append(args.voxtral)
    print(describe(limits()), flush=True)
    port = _free_port()
    server = start_server(models, str(dac), port, args)
    url = f"http://127.0.0.1:{port}"
    try:
        clients = [int(c) for c in args.clients.split(",") if c]
        header(
            f"Dia {args.size} ({args.dtype} checkpoint, --dtype {args.serve_dtype}, {args.steps} steps each)", "steps"
        )
        for n in clients:
            row(n, *asyncio.run(one_level(url, speak, n, args.steps)))
        if len(models) > 1:
            header(f"Voxtral {args.voxtral} ({args.tokens} tokens each)", "tokens")
            for n in clients:
                row(n, *asyncio.run(one_level(url, chat, n, args.tokens)))
        if args.flood:
            before = _rss_mib(server.pid, "VmRSS")
            counts = asyncio.run(flood(url, args.flood, args.steps))
            print(
                f"\nflood of {args.flood} speech requests at once (--max-queue {args.max_queue}): {counts}; server RSS "
                f"{before:.0f} MiB before, {_rss_mib(server.pid, 'VmRSS'):.0f} after (peak since start, load included: "
                f"{_rss_mib(server.pid, 'VmHWM'):.0f})",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
