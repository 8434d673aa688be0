"""The reference stacks (transformers, mistral_common) driven the way their docs show. Test-only."""

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=2)
def hf_model(hf_dir: Path):
    from transformers import VoxtralForConditionalGeneration

    return VoxtralForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


@lru_cache(maxsize=2)
def hf_processor(tekken: Path):
    from transformers import MistralCommonBackend, VoxtralProcessor, WhisperFeatureExtractor

    return VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=MistralCommonBackend(tokenizer_path=str(tekken)),
    )


@lru_cache(maxsize=2)
def mistral_tokenizer(tekken: Path):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(tekken))


def hf_greedy(hf_dir: Path, inputs: dict, max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy generate: (new ids, step-0 logits over the vocab)."""
    model = hf_model(hf_dir)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=11,
        )
    new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return new, out.logits[0][0].float()
