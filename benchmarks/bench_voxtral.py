"""speechrs vs transformers on the same Voxtral checkpoint (HF layout), one run, printed side by side.

    python benchmarks/bench_voxtral.py                    # tiny random-weight checkpoint, float32
    python benchmarks/bench_voxtral.py --size full --dtype bfloat16 --quantize none,int8,int4   # 4.7B random

Each implementation runs in its own subprocess (so peak memory is its own) on the same clip and prompt:
load time, audio encoder time, prefill tokens/s, decode tokens/s (greedy, after a warm-up, best of 5 runs),
peak RSS; speechrs once per --quantize path. The machine's bandwidth and GEMM peaks are measured in the same run
(machine.py): the encoder and the prefill are put against the GEMM peak, decode against bandwidth / the weight
bytes one token reads.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from common import (
    ROOT,
    load_args,
    per_step_bytes,
    print_table,
    rss_mb,
    run_workers,
    stored_paths,
    warm_page_cache,
    worker_quantize,
)

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

REPEATS = 5  # timings are the best of this many runs, as timeit advises: noise only ever adds time

# Voxtral-Mini-3B-2507's real sizes, as its params.json gives them
FULL = {
    "dim": 3072,
    "n_layers": 30,
    "head_dim": 128,
    "hidden_dim": 8192,
    "n_heads": 32,
    "n_kv_heads": 8,
    "rope_theta": 1e8,
    "norm_eps": 1e-5,
    "vocab_size": 131072,
    "max_seq_len": 131072,
    "multimodal": {
        "whisper_model_args": {
            "encoder_args": {
                "audio_encoding_args": {
                    "sampling_rate": 16000,
                    "num_mel_bins": 128,
                    "hop_length": 160,
                    "window_size": 400,
                },
                "dim": 1280,
                "n_layers": 32,
                "head_dim": 64,
                "hidden_dim": 5120,
                "n_heads": 20,
                "vocab_size": 51866,
                "max_source_positions": 1500,
            },
            "downsample_args": {"downsample_factor": 4},
        }
    },
}


def write_checkpoint(size: str, dtype: str, out: Path) -> Path:
    """HF layout (both implementations read it); full size is written tensor-group by tensor-group in dtype."""
    import tiny
    import torch

    hf = out / "voxtral-hf"
    if (hf / "model.safetensors.index.json").exists():
        return hf
    params = tiny.TINY_VOXTRAL if size == "tiny" else FULL
    if size == "tiny":
        return tiny.write_voxtral(out, params=params)[1]
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    hf.mkdir(parents=True, exist_ok=True)
    tiny.write_tekken(hf / "tekken.json")
    (hf / "config.json").write_text(json.dumps({**tiny.hf_voxtral_config(params), "torch_dtype": dtype}))
    sd = tiny.native_to_hf(tiny.voxtral_native_state(params, dtype=torch_dtype), params)
    sd["audio_tower.embed_positions.weight"] = sd["audio_tower.embed_positions.weight"].to(torch_dtype)
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (hf / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": {k: "model.safetensors" for k in sd}})
    )
    return hf


def encoder_gflop(cfg) -> float:
    """One 30 s chunk through the Whisper encoder: q, k, v, o and the two MLP matrices per position, and the
    attention's two (T x T x D) products; the conv front end is under 1% and left out."""
    e, t = cfg.encoder, cfg.encoder.max_source_positions
    linears = 2 * t * (4 * e.dim * e.dim + 2 * e.dim * e.hidden_dim)
    return e.n_layers * (linears + 4 * t * t * e.dim) / 1e9


def prefill_gflop(cfg, tokens: int) -> float:
    """Decoder matmuls for `tokens` prompt tokens (2 FLOP per weight per token; the output head for the last
    position only, as the pipeline computes it); causal attention is under 1% at this length."""
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer = cfg.dim * (cfg.n_heads * cfg.head_dim) * 2 + cfg.dim * kv * 2 + 3 * cfg.dim * cfg.hidden_dim
    return (2 * tokens * cfg.n_layers * per_layer + 2 * cfg.dim * cfg.vocab_size) / 1e9


def run_speechrs(ckpt: Path, clip: Path, n_new: int, dtype: str, quantize: str | None = None) -> dict:
    import torch

    from speechrs.voxtral.events import GenerationOptions
    from speechrs.voxtral.pipeline import VoxtralPipeline
    from speechrs.weights import parse_dtype

    base = rss_mb()
    t0 = time.perf_counter()
    p = VoxtralPipeline.load(ckpt, "hf", parse_dtype(dtype), quantize=quantize)
    load_s = time.perf_counter() - t0
    list(p.transcribe(str(clip), "en", GenerationOptions(max_tokens=4)))  # warm-up
    first_s = time.perf_counter() - t0
    runs = [list(p.transcribe(str(clip), "en", GenerationOptions(max_tokens=n_new)))[-1].usage for _ in range(REPEATS)]
    u = runs[0]
    return {
        "load_s": load_s,
        "first_s": first_s,
        "encode_s": min(r.encode_s for r in runs),
        "prompt_tokens": u.prompt_tokens,
        "prefill_tps": max(r.prompt_tokens / r.prefill_s for r in runs),
        "new_tokens": u.completion_tokens,
        "decode_tps": max((r.completion_tokens - 1) / r.decode_s for r in runs),
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        "threads": torch.get_num_threads(),
        # what one decode step reads: the decoder's linears (not the views a fused one holds) and the head
        "step_bytes": per_step_bytes(p.model, skip=r"^mm_whisper|\.w[qkv]$|\.w[13]$"),
        "encoder_gflop": encoder_gflop(p.model.cfg),
        "prefill_gflop": prefill_gflop(p.model.cfg, u.prompt_tokens),
    }


def run_transformers(ckpt: Path, clip: Path, n_new: int, dtype: str) -> dict:
    import torch
    from reference import hf_processor
    from transformers import VoxtralForConditionalGeneration

    base = rss_mb()
    t0 = time.perf_counter()
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    model = VoxtralForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch_dtype).eval()
    load_s = time.perf_counter() - t0
    inputs = hf_processor(ckpt / "tekken.json").apply_transcription_request(
        language="en", audio=str(clip), model_id="x"
    )
    inputs = {k: (v.to(torch_dtype) if v.is_floating_point() else v) for k, v in inputs.items()}

    def generate(n):
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=11)
        return time.perf_counter() - t, out.shape[1] - inputs["input_ids"].shape[1]

    def encode():
        with torch.inference_mode():
            t = time.perf_counter()
            model.get_audio_features(inputs["input_features"])
            return time.perf_counter() - t

    generate(4)  # warm-up
    first_request_s = time.perf_counter() - t0
    encode_s = min(encode() for _ in range(REPEATS))
    first_s = min(generate(1)[0] for _ in range(REPEATS))
    totals = [generate(n_new) for _ in range(REPEATS)]
    n = totals[0][1]
    prompt = inputs["input_ids"].shape[1]
    return {
        "load_s": load_s,
        "first_s": first_request_s,
        "encode_s": encode_s,
        "prompt_tokens": prompt,
        "prefill_tps": prompt / (first_s - encode_s),
        "new_tokens": n,
        "decode_tps": max((n - 1) / (total - first_s) for total, _ in totals),
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        "threads": torch.get_num_threads(),
    }


def main():
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--clip", type=Path, default=ROOT / "tests" / "data" / "clip_en_16k.wav")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument(
        "--quantize", default="none", help="speechrs paths to run, e.g. none,int8,int4,int8-stored (speechrs quantize)"
    )
    ap.add_argument("--no-transformers", action="store_true", help="speechrs paths only")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timings are the best of this many runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    REPEATS = args.repeats

    if args.worker == "transformers":
        print(json.dumps(run_transformers(args.ckpt, args.clip, args.new_tokens, args.dtype)))
        return
    if args.worker:
        ckpt, q = load_args(args.ckpt, worker_quantize(args.worker))
        print(json.dumps(run_speechrs(ckpt, args.clip, args.new_tokens, args.dtype, q)))
        return
    from machine import describe, limits

    lim = limits()

    ckpt = write_checkpoint(args.size, args.dtype, args.cache / f"{args.size}-{args.dtype}")
    ckpt_mb = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**20
    warm_page_cache(ckpt)
    written = stored_paths(ckpt, args.quantize)
    paths = [f"speechrs-{q}" if q != "none" else "speechrs" for q in args.quantize.split(",")]
    results = run_workers(
        __file__,
        paths + ([] if args.no_transformers else ["transformers"]),
        ["--ckpt", str(ckpt), "--clip", str(args.clip), "--new-tokens", str(args.new_tokens), "--dtype", args.dtype]
        + ["--repeats", str(args.repeats)],
    )
    s = results[paths[0]]
    print(describe(lim))
    for kind, seconds in written.items():
        print(f"speechrs quantize to {kind}: {seconds:.1f} s (0 if its directory was already written)")
    print(
        f"Voxtral {args.size} ({ckpt_mb:.0f} MiB of {args.dtype} weights), {s['prompt_tokens']}-token transcription "
        f"prompt, {args.new_tokens} greedy tokens, {s['threads']} threads"
    )
    print_table(
        results,
        [
            ("load s", "load_s", False),
            ("load + 1st request s", "first_s", False),
            ("audio encoder s", "encode_s", False),
            ("prefill tok/s", "prefill_tps", True),
            ("decode tok/s", "decode_tps", True),
            ("peak RSS MiB", "peak_rss_mb", False),
        ],
    )
    peak = max(lim["fp32_gflops"], lim["bf16_gflops"])
    for name, r in results.items():
        line = (
            f"{name}: peak RSS above the post-import baseline = {(r['peak_rss_mb'] - r['base_rss_mb']) / ckpt_mb:.2f}"
            f" x checkpoint bytes"
        )
        if "step_bytes" in r:
            encoder = r["encoder_gflop"] / r["encode_s"]
            prefill = r["prefill_gflop"] * r["prefill_tps"] / r["prompt_tokens"]
            ceiling = lim["bandwidth_gbs"] * 1e9 / r["step_bytes"]
            line += (
                f"; encoder {encoder:.0f} GFLOP/s ({encoder / peak:.0%} of the GEMM peak), prefill {prefill:.0f}"
                f" ({prefill / peak:.0%}); {r['step_bytes'] / 2**20:.0f} MiB read per token, ceiling "
                f"{ceiling:.1f} tok/s, decode at {r['decode_tps'] / ceiling:.0%} of it"
            )
        print(line)


if __name__ == "__main__":
    main()
