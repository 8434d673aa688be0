"""Transcripts of long audio: how long the splitting takes per hour of audio, and the real-time factor of a
segmented transcription against one prompt for the same audio, with the machine's limits measured in the run.

    python benchmarks/bench_transcripts.py                                  # tiny model, 10 minutes of speech
    python benchmarks/bench_transcripts.py --size full --dtype bfloat16 --minutes 2 --tokens 60

The audio is espeak-ng speech (three sentences, 1 s pauses) repeated to --minutes. The model has random
weights, so it never says </s>: each segment generates --tokens tokens (about 100 is what 30 s of real speech
transcribes to). Segmented: decoded in 30 s blocks, split by silero-vad, one prompt per segment. One prompt:
all the audio's 30 s chunks in one prompt (transformers' and mistral-common's way), when it fits.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from common import ROOT, rss_mb

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_audio(minutes: float, out: Path) -> Path:
    from speech import RATE, speech_with_pauses

    path = out / f"speech-{minutes:g}min.flac"
    if not path.exists():
        pcm, _ = speech_with_pauses(out, pause_s=1.0)
        n = int(minutes * 60 * RATE)
        sf.write(path, np.tile(pcm, -(-n // len(pcm)))[:n], RATE)
    return path


def time_split(path: Path) -> tuple[float, int, float]:
    """-> (seconds of work, number of segments, mean segment seconds) for splitting the whole file."""
    from speechrs.audio.decode import open_stream
    from speechrs.audio.vad import split_speech

    t0 = time.perf_counter()
    segments = [s for s in split_speech(open_stream(str(path), 16000).blocks()) if not isinstance(s, float)]
    return time.perf_counter() - t0, len(segments), float(np.mean([s.duration_s for s in segments]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--tokens", type=int, default=100, help="tokens generated per segment (and per prompt)")
    ap.add_argument("--quantize", default=None, choices=[None, "int8", "int4"])
    ap.add_argument("--no-single", action="store_true", help="skip the one-prompt run")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    args = ap.parse_args()

    from bench_voxtral import encoder_gflop, prefill_gflop, write_checkpoint
    from machine import describe, limits

    from speechrs.voxtral.events import GenerationOptions
    from speechrs.voxtral.pipeline import VoxtralPipeline
    from speechrs.weights import parse_dtype

    args.cache.mkdir(parents=True, exist_ok=True)
    lim = limits()
    print(describe(lim), flush=True)
    audio = make_audio(args.minutes, args.cache)
    seconds = sf.info(str(audio)).duration
    split_s, n_segments, mean_s = time_split(audio)
    print(
        f"split {seconds:.0f} s of audio into {n_segments} segments (mean {mean_s:.1f} s) in {split_s:.2f} s: "
        f"{split_s * 3600 / seconds:.0f} s per hour of audio ({seconds / split_s:.0f}x real time)",
        flush=True,
    )
    ckpt = write_checkpoint(args.size, args.dtype, args.cache / f"voxtral-{args.size}-{args.dtype}")
    p = VoxtralPipeline.load(ckpt, "hf", parse_dtype(args.dtype), quantize=args.quantize)
    cfg = p.model.cfg
    opts = GenerationOptions(max_tokens=args.tokens)
    list(p.transcribe((np.zeros(16000, np.float32), 16000), "en", GenerationOptions(max_tokens=2)))  # warm-up
    runs = [("segmented", True)] + (
        [] if args.no_single or not p._fits_one_prompt(seconds) else [("one prompt", False)]
    )
    print(
        f"{'run':<11} {'wall s':>8} {'RTF':>6} {'encode s':>9} {'prefill s':>10} {'decode s':>9} {'tokens':>7} "
        f"{'enc+prefill GFLOP/s':>20} {'peak MiB':>9}"
    )
    for name, timestamps in runs:
        t0 = time.perf_counter()
        done = list(p.transcribe(str(audio), "en", opts, timestamps=timestamps))[-1]
        wall = time.perf_counter() - t0
        u = done.usage
        chunks = n_segments if timestamps else -(-int(seconds * 16000) // 480000)
        gflop = chunks * encoder_gflop(cfg) + (prefill_gflop(cfg, u.prompt_tokens) if u.prompt_tokens else 0)
        rate = gflop / max(u.encode_s + u.prefill_s, 1e-9)
        print(
            f"{name:<11} {wall:>8.1f} {seconds / wall:>6.2f} {u.encode_s:>9.1f} {u.prefill_s:>10.1f} "
            f"{u.decode_s:>9.1f} {u.completion_tokens:>7} {rate:>20.0f} {rss_mb():>9.0f}",
            flush=True,
        )
    print(
        f"GEMM peaks measured above: fp32 {lim['fp32_gflops']}, bf16 {lim['bf16_gflops']} GFLOP/s (the encoder and "
        f"prefill run in fp32 where the CPU has no native bf16: compute.py); threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
