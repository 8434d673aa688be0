"""speechrs vs transformers' DiaForConditionalGeneration on the same tiny HF 0626 checkpoint."""

from functools import lru_cache

import pytest
import torch
from test_dia import TEXT, step0_logits

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.config import HF_0626
from speechrs.dia.delay import frames
from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text

pytestmark = pytest.mark.reference


@lru_cache(maxsize=1)
def reference(hf_dir):
    from transformers import DiaForConditionalGeneration

    return DiaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def _delay_mask(cfg) -> torch.Tensor:
    """What DiaProcessor builds for text-only generation: BOS where row <= delay[c], PAD ("to predict") after."""
    mask = torch.full((1, cfg.max_delay + 1, cfg.channels), cfg.pad)
    for c, d in enumerate(cfg.delay_pattern):
        mask[0, : d + 1, c] = cfg.bos
    return mask


def test_step0_logits_match_transformers(dia_dirs):
    hf_dir = dia_dirs[1]
    ours = load_dia(hf_dir, None)
    ids = torch.tensor([encode_text(TEXT, ours.cfg)])
    with torch.inference_mode():
        out = reference(hf_dir)(
            input_ids=torch.cat([ids, torch.zeros_like(ids)]),
            attention_mask=torch.ones(2, ids.shape[1], dtype=torch.long),
            decoder_input_ids=torch.full((2, 1, 9), ours.cfg.bos),
        )
    expected = out.logits.view(2, 9, 1, -1).transpose(1, 2)  # (B*C, T, V) -> (B, T, C, V)
    torch.testing.assert_close(step0_logits(ours), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", [0, 1], ids=["nari-weights", "hf-weights"])
def test_greedy_delayed_codes_match_transformers_generate(dia_dirs, layout):
    hf_dir = dia_dirs[1]
    pipeline = DiaPipeline(load_dia(dia_dirs[layout], None, generation=HF_0626), None)
    n = 96  # 80 free steps, then the 15-step EOS countdown
    opts = pipeline.options(SpeakOptions(max_tokens=n, temperature=0, top_k=45, cfg_scale=3.0))
    ids = encode_text(TEXT, pipeline.cfg)
    ours = list(pipeline.generate_codes(ids, opts))[-1]
    x = torch.tensor([ids])
    with torch.inference_mode():
        expected = reference(hf_dir).generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            decoder_input_ids=_delay_mask(pipeline.cfg),
            decoder_attention_mask=torch.ones(1, 16, dtype=torch.long),
            do_sample=False,
            guidance_scale=3.0,
            top_k=45,
            max_new_tokens=n,
        )[0]
    assert expected.shape == ours.shape == (n + 1, 9)
    assert torch.equal(ours, expected)


def test_voice_cloning_matches_transformers_generate_with_an_audio_prompt(dia_dirs, dac_dirs):
    """DiaProcessor(text=[transcript + text], audio=reference) -> generate, against speak(ref_audio, ref_text):
    the same DAC codes for the reference, the same prefill and delay mask, the same greedy rows after it."""
    from test_dac_encoder import _speechlike
    from transformers import DacModel, DiaFeatureExtractor, DiaProcessor, DiaTokenizer

    from speechrs.dia.dac import load_dac
    from speechrs.dia.voices import encode_reference

    hf_dir, ref_text, text = dia_dirs[1], "[S1] This is how I sound.", "[S2] And now something new."
    pipeline = DiaPipeline(load_dia(hf_dir, None), load_dac(dac_dirs[0]))
    wave = _speechlike(0.9).numpy()
    prompt = encode_reference(pipeline, (wave, 44100))
    n = 40
    opts = pipeline.options(SpeakOptions(max_tokens=n, temperature=0, top_k=45, cfg_scale=3.0))
    ours = list(pipeline.generate_codes(encode_text(ref_text + " " + text, pipeline.cfg), opts, prompt))[-1]

    processor = DiaProcessor(
        DiaFeatureExtractor(sampling_rate=44100), DiaTokenizer(), DacModel.from_pretrained(str(dac_dirs[1]))
    )
    inputs = processor(text=[ref_text + " " + text], audio=[wave], return_tensors="pt")
    assert processor.get_audio_prompt_len(inputs["decoder_attention_mask"]) == len(prompt) + 1  # BOS + frames
    with torch.inference_mode():
        expected = reference(hf_dir).generate(
            **inputs, do_sample=False, guidance_scale=3.0, top_k=45, max_new_tokens=n
        )[0]
    assert ours.shape == expected.shape and torch.equal(ours, expected)
    result = list(
        pipeline.speak(
            text,
            SpeakOptions(max_tokens=n, temperature=0, top_k=45, cfg_scale=3.0),
            ref_audio=(wave, 44100),
            ref_text=ref_text,
        )
    )[-1]
    L = len(prompt)
    assert result.codes.shape[0] <= n - 16 and len(result.pcm) == result.codes.shape[0] * 512
    assert torch.equal(torch.from_numpy(result.codes), frames(ours, L, L + result.codes.shape[0], pipeline.cfg))
