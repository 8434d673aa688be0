"""speechrs vs transformers (DiaForConditionalGeneration + DacModel) on the same Dia and DAC checkpoints.

    python benchmarks/bench_dia.py                                  # tiny random Dia, real-size random DAC
    python benchmarks/bench_dia.py --size full --dtype bfloat16 --quantize none,int8,int4   # Dia-1.6B's shapes

Both run greedy CFG decoding (guidance 3, top-k 45: transformers' do_sample=False) for the same number of
steps on the HF 0626 layout, each in its own process: decode steps/s, DAC decode real-time factor, peak RSS.
speechrs runs once per --quantize path. The machine's memory bandwidth and GEMM peaks are measured in the same
run (machine.py), and each path's decode is put against its ceiling: bandwidth / weight bytes read per step.
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

REPEATS = 5  # decode timings are the best of this many runs, as timeit advises: noise only ever adds time
TEXT = (
    "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts and voices. "
    "[S1] Wow. Amazing. (laughs)"
)
FULL_V01 = {  # nari-labs/Dia-1.6B's config.json
    "version": "0.1",
    "model": {
        "encoder": {"n_layer": 12, "n_embd": 1024, "n_hidden": 4096, "n_head": 16, "head_dim": 128},
        "decoder": {
            "n_layer": 18,
            "n_embd": 2048,
            "n_hidden": 8192,
            "gqa_query_heads": 16,
            "kv_heads": 4,
            "gqa_head_dim": 128,
            "cross_query_heads": 16,
            "cross_head_dim": 128,
        },
        "src_vocab_size": 256,
        "tgt_vocab_size": 1028,
        "dropout": 0.0,
        "normalization_layer_epsilon": 1e-5,
        "weight_dtype": "float32",
        "rope_min_timescale": 1,
        "rope_max_timescale": 10000,
    },
    "training": {},
    "data": {
        "text_length": 1024,
        "audio_length": 3072,
        "channels": 9,
        "text_pad_value": 0,
        "audio_eos_value": 1024,
        "audio_pad_value": 1025,
        "audio_bos_value": 1026,
        "delay_pattern": [0, 8, 9, 10, 11, 12, 13, 14, 15],
    },
}


def write_checkpoints(size: str, dtype: str, out: Path) -> tuple[Path, Path]:
    import tiny_dia
    import torch
    from safetensors.torch import save_file

    from speechrs.dia.config import DiaConfig

    dia, dac = out / "dia-0626", out / "dac-hf"
    if not (dac / "model.safetensors").exists():
        tiny_dia.write_dac(out)
    if not (dia / "model.safetensors").exists():
        if size == "tiny":
            tiny_dia.write_dia(out)
        else:
            dia.mkdir(parents=True, exist_ok=True)
            (dia / "config.json").write_text(json.dumps({**tiny_dia.hf_0626_config(FULL_V01), "torch_dtype": dtype}))
            cfg = DiaConfig.load(dia / "config.json")
            sd = tiny_dia.dia_canonical_state(cfg, dtype=getattr(torch, dtype))
            save_file(
                {("" if k == "logits_dense.weight" else "model.") + k: v for k, v in sd.items()},
                str(dia / "model.safetensors"),
                metadata={"format": "pt"},
            )
    return dia, dac


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _mask(cfg):
    import torch

    mask = torch.full((1, cfg.max_delay + 1, cfg.channels), cfg.pad)
    for c, d in enumerate(cfg.delay_pattern):
        mask[0, : d + 1, c] = cfg.bos
    return mask


def run_speechrs(dia: Path, dac: Path, steps: int, frames: int, dtype: str, quantize: str | None = None) -> dict:
    import torch

    from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text
    from speechrs.weights import parse_dtype

    base = rss_mb()
    t0 = time.perf_counter()
    p = DiaPipeline.load(dia, dac, parse_dtype(dtype), quantize=quantize)
    load_s = time.perf_counter() - t0
    ids = encode_text(TEXT, p.cfg)
    opts = p.options(SpeakOptions(max_tokens=steps, temperature=0, top_k=45, cfg_scale=3.0))
    list(p.generate_codes(ids, p.options(SpeakOptions(max_tokens=20, temperature=0))))  # warm-up: a first request
    first_s = time.perf_counter() - t0  # a lazy load pays here for what it did not read at load
    timings = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        rows = list(p.generate_codes(ids, opts))[-1]
        timings.append(time.perf_counter() - t)
    decode_s = min(timings)
    codes = torch.randint(0, 1024, (1, 9, frames), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        p.dac.decode(codes[..., :8])
        dac_s = min(_timed(p.dac.decode, codes) for _ in range(3))
    return {
        "load_s": load_s,
        "first_s": first_s,
        "steps_per_s": (len(rows) - 1) / decode_s,
        "steps": len(rows) - 1,
        "dac_rtf": frames * 512 / 44100 / dac_s,
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        # per step: the decoder's linears and the logits head; cross k/v run once per request
        "step_bytes": per_step_bytes(p.model, skip=r"^encoder|cross_attention\.[kv]_proj|self_attention\.[qkv]_proj"),
    }


def run_transformers(dia: Path, dac: Path, steps: int, frames: int, dtype: str) -> dict:
    import torch
    from transformers import DacModel, DiaForConditionalGeneration

    from speechrs.dia.config import DiaConfig

    base = rss_mb()
    t0 = time.perf_counter()
    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    model = DiaForConditionalGeneration.from_pretrained(str(dia), dtype=torch_dtype).eval()
    codec = DacModel.from_pretrained(str(dac)).eval()
    load_s = time.perf_counter() - t0
    cfg = DiaConfig.load(dia / "config.json")
    x = torch.tensor([list(TEXT.replace("[S1]", "\x01").replace("[S2]", "\x02").encode())])

    def generate(n):
        with torch.inference_mode():
            return model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                decoder_input_ids=_mask(cfg),
                decoder_attention_mask=torch.ones(1, cfg.max_delay + 1, dtype=torch.long),
                do_sample=False,
                guidance_scale=3.0,
                top_k=45,
                max_new_tokens=n,
            )

    generate(20)  # warm-up: a first request
    first_s = time.perf_counter() - t0
    timings = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        out = generate(steps)
        timings.append(time.perf_counter() - t)
    decode_s = min(timings)
    codes = torch.randint(0, 1024, (1, 9, frames), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codec.decode(audio_codes=codes[..., :8])
        dac_s = min(_timed(lambda c: codec.decode(audio_codes=c), codes) for _ in range(3))
    return {
        "load_s": load_s,
        "first_s": first_s,
        "steps_per_s": (out.shape[1] - 1) / decode_s,
        "steps": out.shape[1] - 1,
        "dac_rtf": frames * 512 / 44100 / dac_s,
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
    }


def main():
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--frames", type=int, default=430, help="DAC frames to decode (430 = 5 s)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    ap.add_argument(
        "--quantize", default="none", help="speechrs paths to run, e.g. none,int8,int4,int8-stored (speechrs quantize)"
    )
    ap.add_argument("--no-transformers", action="store_true", help="speechrs paths only")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timings are the best of this many runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dia", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dac", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    REPEATS = args.repeats
    if args.worker == "transformers":
        print(json.dumps(run_transformers(args.dia, args.dac, args.steps, args.frames, args.dtype)))
        return
    if args.worker:
        dia, quantize = load_args(args.dia, worker_quantize(args.worker))
        print(json.dumps(run_speechrs(dia, args.dac, args.steps, args.frames, args.dtype, quantize)))
        return
    from machine import describe, limits

    lim = limits()
    dia, dac = write_checkpoints(args.size, args.dtype, args.cache / f"dia-{args.size}-{args.dtype}")
    dia_mb = (dia / "model.safetensors").stat().st_size / 2**20
    weights_mb = dia_mb + (dac / "model.safetensors").stat().st_size / 2**20
    warm_page_cache(dia, dac)
    written = stored_paths(dia, args.quantize)
    paths = [f"speechrs-{q}" if q != "none" else "speechrs" for q in args.quantize.split(",")]
    results = run_workers(
        __file__,
        paths + ([] if args.no_transformers else ["transformers"]),
        [
            "--dia",
            str(dia),
            "--dac",
            str(dac),
            "--steps",
            str(args.steps),
            "--frames",
            str(args.frames),
            "--dtype",
            args.dtype,
            "--repeats",
            str(args.repeats),
        ],
    )
    print(describe(lim))
    for kind, seconds in written.items():
        print(f"speechrs quantize to {kind}: {seconds:.1f} s (0 if its directory was already written)")
    print(
        f"Dia {args.size} ({dia_mb:.0f} MiB of {args.dtype} weights) + DAC 44 kHz (float32), greedy CFG, "
        f"{', '.join(str(r['steps']) for r in results.values())} steps, {args.frames} DAC frames"
    )
    print_table(
        results,
        [
            ("load s", "load_s", False),
            ("load + 1st request s", "first_s", False),  # 20 steps, as the warm-up
            ("decode steps/s", "steps_per_s", True),
            ("DAC x real time", "dac_rtf", True),
            ("peak RSS MiB", "peak_rss_mb", False),
        ],
    )
    for name, r in results.items():
        line = (
            f"{name}: peak RSS above the post-import baseline = "
            f"{(r['peak_rss_mb'] - r['base_rss_mb']) / weights_mb:.2f} x the Dia + DAC weights"
        )
        if "step_bytes" in r:
            ceiling = lim["bandwidth_gbs"] * 1e9 / r["step_bytes"]
            line += (
                f"; {r['step_bytes'] / 2**20:.0f} MiB of weights per step, ceiling {ceiling:.1f} steps/s, "
                f"decode at {r['steps_per_s'] / ceiling:.0%} of it"
            )
        print(line)


if __name__ == "__main__":
    main()
