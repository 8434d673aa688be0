"""A long script through speechrs's piece-by-piece path, timed: pieces, decoder steps/s, DAC time, the real-time
factor of the whole, and what the splitter makes of a 2-minute script.

    python benchmarks/bench_long_speech.py                                    # tiny random Dia
    python benchmarks/bench_long_speech.py --size full --quantize int8 --steps 200 --turns 6

Random weights never say EOS, so every piece runs --steps decoder steps (real Dia ends a piece when its text is
spoken: about 86 steps per second of speech). The figures are per step and per second of audio made, the
machine's limits measured in the same run.
"""

import argparse
import sys
import time

from common import ROOT, rss_mb

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TURN = "[S{}] This is turn number {} of the benchmark script, and it says a sentence of an ordinary length."
BYTES_PER_S = 15  # Dia's speaking rate, roughly: 1024 bytes fill its 35 s window at a brisk pace (script.py)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--quantize", default=None, choices=[None, "int8", "int4"])
    ap.add_argument("--steps", type=int, default=100, help="decoder steps per piece")
    ap.add_argument("--turns", type=int, default=8)
    args = ap.parse_args()

    from bench_dia import write_checkpoints
    from machine import describe, limits

    import speechrs
    from speechrs.dia.script import PIECE_BYTES, split_script

    print(describe(limits()), flush=True)
    two_minutes = " ".join(TURN.format(1 + i % 2, i) for i in range(200))[: 120 * BYTES_PER_S]
    pieces = split_script(two_minutes, PIECE_BYTES)
    print(
        f"a 2-minute script ({len(two_minutes.encode())} bytes at ~{BYTES_PER_S} bytes/s) -> {len(pieces)} pieces "
        f"({len(pieces) / 2:.1f} per minute of speech)"
    )
    dtype = "bfloat16" if args.size == "full" else "float32"
    dia_dir, dac_dir = write_checkpoints(args.size, dtype, ROOT / ".cache" / "bench" / f"dia-{args.size}-{dtype}")
    tts = speechrs.load(str(dia_dir), dac=str(dac_dir), quantize=args.quantize)
    print(tts.plan.summary)
    text = " ".join(TURN.format(1 + i % 2, i) for i in range(args.turns))
    tts.speak("[S1] Warm up.", max_tokens=20, seed=0)
    t0 = time.perf_counter()
    result = tts.speak(text, max_tokens=args.steps, seed=0)
    wall = time.perf_counter() - t0
    t = result.timings
    print(
        f"{t.get('pieces', 1)} pieces, {t['steps']} steps in {t['decode_s']:.1f} s ({t['steps'] / t['decode_s']:.2f} "
        f"steps/s), DAC {t['dac_s']:.1f} s; {result.duration_s:.1f} s of audio in {wall:.1f} s: RTF "
        f"{result.duration_s / wall:.3f} (x real time); peak RSS {rss_mb():.0f} MiB"
    )


if __name__ == "__main__":
    main()
