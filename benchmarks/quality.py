"""How close a quantized model stays to the float32 one, teacher-forced on the same inputs: top-1 agreement and
mean KL(float32 || quantized) per position.

    python benchmarks/quality.py --model ./Voxtral-Mini-3B-2507 --quantize int8
    python benchmarks/quality.py --model ./Dia-1.6B --quantize int4 --tokens 300

Voxtral: the test clip's transcription prompt and a chat prompt about it, each followed by the tokens the
float32 model chooses greedily. Dia: a dialogue, the delayed rows the float32 model writes greedily (CFG 3, top-k
45), and the CFG logits of every channel. The float32 model runs first and is freed before the quantized one
loads, so the peak is one model at a time. Random weights have almost no margin between their top logits, so
the figures say something about a format only on real weights (docs/performance.md, "Quality").
"""

import argparse
import gc
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "tests" / "data" / "clip_en_16k.wav"
DIALOGUE = "[S1] Dia is an open weights text to dialogue model. [S2] You get full control over scripts. [S1] Wow."


def compare(ref: torch.Tensor, ours: torch.Tensor, margin: float = 0.0) -> dict:
    """Logits (..., V) of the same positions -> top-1 agreement, mean KL(ref || ours) and the largest difference.

    `margin` > 0 counts top-1 only where ref's first two logits are more than `margin` apart ("decided"): where
    they are closer, any rounding of another summation order may swap them, so agreement there says nothing about
    a path. "max_diff" is max |ref - ours| over max |ref| (the logits' scale)."""
    ref, ours = ref.reshape(-1, ref.shape[-1]).float(), ours.reshape(-1, ours.shape[-1]).float()
    kl = F.kl_div(ours.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    top2 = ref.topk(2, dim=-1).values
    decided = (top2[:, 0] - top2[:, 1] > margin) if margin > 0 else torch.ones(len(ref), dtype=torch.bool)
    agree = ref.argmax(-1) == ours.argmax(-1)
    return {
        "positions": len(ref),
        "decided": int(decided.sum()),
        "top1": round(agree[decided].float().mean().item(), 4) if decided.any() else float("nan"),
        "kl": float(f"{kl.mean().item():.3g}"),
        "max_diff": float(f"{((ref - ours).abs().max() / ref.abs().max()).item():.3g}"),
    }


def _voxtral_cases(pipeline, tokens: int) -> list[tuple[str, list[int], torch.Tensor, int]]:
    """(name, ids, mel, prompt length): the prompt, then `tokens` greedy tokens of this (float32) pipeline."""
    from speechrs.voxtral.events import Audio, GenerationOptions
    from speechrs.voxtral.tekken import chat_prompt, transcription_prompt

    mel, n_audio, _ = pipeline._prepare_audio(str(CLIP))
    opts = GenerationOptions(max_tokens=tokens)
    cases = []
    prompt = transcription_prompt(pipeline.tokenizer, n_audio, "en")
    new = [e.id for e in pipeline.transcribe(str(CLIP), "en", opts) if hasattr(e, "id") and e.id >= 0]
    cases.append(("transcription", prompt + new, mel, len(prompt)))
    from speechrs.voxtral.tekken import AudioPart

    question = "What does the speaker ask for?"
    prompt = chat_prompt(pipeline.tokenizer, [("user", [AudioPart(n_audio), question])])
    new = [e.id for e in pipeline.chat([("user", [Audio(str(CLIP)), question])], opts) if hasattr(e, "id")]
    cases.append(("chat", prompt + [i for i in new if i >= 0], mel, len(prompt)))
    return cases


def voxtral_logits(
    model, audio_id: int, ids: list[int], mel: torch.Tensor, start: int = 0, steps: int = 0
) -> torch.Tensor:
    """Teacher-forced logits (float32) of the positions from `start - 1` on (those that predict ids[start:] and
    the next token); start 0: every position. The last `steps` positions go one at a time, as decode steps do
    (a decode step's few rows take a quantized layer's kernel, a prefill's many its GEMM)."""
    with torch.inference_mode():
        model.setup_caches(1, len(ids) + 8)
        x = model.embed(torch.tensor([ids]), model.encode_audio(mel), audio_id)
        split = len(ids) - steps
        out = [model(x[:, :split], 0, last_only=False)]
        out += [model(x[:, t : t + 1], t, last_only=False) for t in range(split, len(ids))]
        return torch.cat(out, dim=1)[0, max(start - 1, 0) :].float()


def voxtral_quality(directory: Path, layout: str, quantize: str, dtype: str, tokens: int) -> dict:
    from speechrs.linear.compute import plan
    from speechrs.voxtral.pipeline import VoxtralPipeline

    reference = VoxtralPipeline.load(directory, layout, torch.float32)
    cases = _voxtral_cases(reference, tokens)
    audio_id = reference.audio_token_id
    ref_logits = [voxtral_logits(reference.model, audio_id, ids, mel, start) for _, ids, mel, start in cases]
    del reference
    gc.collect()
    how = plan("cpu", dtype, quantize)
    quantized = VoxtralPipeline.load(directory, layout, how.dtype, "cpu", how.quantize)
    return {
        name: compare(ref, voxtral_logits(quantized.model, audio_id, ids, mel, start))
        for (name, ids, mel, start), ref in zip(cases, ref_logits, strict=True)
    }


def dia_logits(model, text_ids: list[int], rows: torch.Tensor) -> torch.Tensor:
    """Teacher-forced CFG logits (T, C, V) of delayed rows (T, C), cond and uncond in one batch, CFG scale 3."""
    ids = torch.tensor([text_ids])
    with torch.inference_mode():
        cross = model.cross_cache(model.encoder(torch.cat([ids, torch.zeros_like(ids)])))
        model.setup_caches(2, len(rows) + 1)
        logits = model(rows.expand(2, -1, -1), 0, cross).float()  # (2, T, C, V)
        return logits[0] + 3.0 * (logits[0] - logits[1])


def dia_quality(directory: Path, quantize: str, dtype: str, tokens: int) -> dict:
    from speechrs.dia.checkpoint import load_dia
    from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text
    from speechrs.linear.compute import plan

    reference = DiaPipeline(load_dia(directory, torch.float32), None)
    text_ids = encode_text(DIALOGUE, reference.cfg)
    opts = reference.options(SpeakOptions(max_tokens=tokens, temperature=0, top_k=45, cfg_scale=3.0))
    rows = list(reference.generate_codes(text_ids, opts))[-1][:-1]  # the rows the float32 model read
    ref = dia_logits(reference.model, text_ids, rows)
    del reference
    gc.collect()
    how = plan("cpu", dtype, quantize)
    quantized = load_dia(directory, how.dtype, quantize=how.quantize)
    return {"dialogue": compare(ref, dia_logits(quantized, text_ids, rows))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a Voxtral or Dia checkpoint directory")
    ap.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8")
    ap.add_argument("--dtype", default="auto", help="dtype of the quantized run (auto: the device's path)")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens (Voxtral) or decoder steps (Dia)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from speechrs.hub import detect

    source = detect(args.model)
    quantize = None if args.quantize == "none" else args.quantize
    if source.family == "dia":
        result = dia_quality(source.directory, quantize, args.dtype, args.tokens)
    else:
        result = voxtral_quality(source.directory, source.layout, quantize, args.dtype, args.tokens)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.model} ({source.family}), {args.quantize} against float32, teacher-forced:")
    for name, r in result.items():
        print(f"  {name:<14} {r['positions']:>6} positions   top-1 {r['top1']:.2%}   mean KL {r['kl']:.3g}")


if __name__ == "__main__":
    main()
