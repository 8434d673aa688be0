"""speechrs vs transformers' DiaForConditionalGeneration on the same tiny HF 0626 checkpoint."""
from functools import lru_cache

import pytest
import torch

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.config import HF_0626
from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text
from test_dia import TEXT, step0_logits

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
        out = reference(hf_dir)(input_ids=torch.cat([ids, torch.zeros_like(ids)]),
                                attention_mask=torch.ones(2, ids.shape[1], dtype=torch.long),
                                decoder_input_ids=torch.full((2, 1, 9), ours.cfg.bos))
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
            input_ids=x, attention_mask=torch.ones_like(x), decoder_input_ids=_delay_mask(pipeline.cfg),
            decoder_attention_mask=torch.ones(1, 16, dtype=torch.long), do_sample=False, guidance_scale=3.0,
            top_k=45, max_new_tokens=n)[0]
    assert expected.shape == ours.shape == (n + 1, 9)
    assert torch.equal(ours, expected)
