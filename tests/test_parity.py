"""speechrs vs transformers' VoxtralForConditionalGeneration on the same tiny HF checkpoint."""

import pytest
import torch

from speechrs.voxtral.events import Audio, Done, GenerationOptions, Token

pytestmark = pytest.mark.reference
N_NEW = 40


def _prefill_logits(pipeline, ids: list[int], mels: list[torch.Tensor]) -> torch.Tensor:
    model = pipeline.model
    with torch.inference_mode():
        embeds = model.encode_audio(torch.cat(mels)) if mels else None
        model.setup_caches(1, len(ids) + 1)
        x = model.embed(torch.tensor([ids]), embeds, pipeline.audio_token_id)
        return model(x, 0)[0, -1]


def _ours(events) -> tuple[list[int], str]:
    ids, done = [], None
    for e in events:
        if isinstance(e, Token) and e.id >= 0:
            ids.append(e.id)
        elif isinstance(e, Done):
            done = e
    return ids, done.text


@pytest.fixture(scope="module")
def processor(hf_dir):
    from reference import hf_processor

    return hf_processor(hf_dir / "tekken.json")


@pytest.mark.parametrize("layout", ["native", "hf"])
def test_transcription_greedy_ids_and_logits_match_transformers(request, layout, hf_dir, processor, clip):
    from reference import hf_greedy

    pipeline = request.getfixturevalue(f"{layout}_pipeline")
    inputs = processor.apply_transcription_request(language="en", audio=str(clip), model_id="x")
    ref_ids, ref_logits = hf_greedy(hf_dir, inputs, N_NEW)

    mel, n_tokens, _ = pipeline._prepare_audio(str(clip))
    from speechrs.voxtral.tekken import transcription_prompt

    prompt = transcription_prompt(pipeline.tokenizer, n_tokens, "en")
    assert prompt == inputs["input_ids"][0].tolist()
    torch.testing.assert_close(_prefill_logits(pipeline, prompt, [mel]), ref_logits, atol=1e-4, rtol=0)

    ids, _ = _ours(pipeline.transcribe(str(clip), "en", GenerationOptions(max_tokens=N_NEW)))
    assert len(ref_ids) == N_NEW and ids == ref_ids


def test_chat_greedy_ids_match_transformers(native_pipeline, hf_dir, processor, clip):
    from reference import hf_greedy

    conversation = [
        {
            "role": "user",
            "content": [{"type": "audio", "path": str(clip)}, {"type": "text", "text": "What is said in this clip?"}],
        }
    ]
    inputs = processor.apply_chat_template(conversation, return_dict=True, return_tensors="pt")
    ref_ids, ref_logits = hf_greedy(hf_dir, dict(inputs), N_NEW)

    events = native_pipeline.chat(
        [("user", [Audio(str(clip)), "What is said in this clip?"])], GenerationOptions(max_tokens=N_NEW)
    )
    ids, _ = _ours(events)
    assert len(ref_ids) == N_NEW and ids == ref_ids


def test_decoded_text_matches_transformers_batch_decode(native_pipeline, hf_dir, processor, clip):
    from reference import hf_greedy

    inputs = processor.apply_transcription_request(language="en", audio=str(clip), model_id="x")
    ref_ids, _ = hf_greedy(hf_dir, inputs, 32)
    expected = processor.batch_decode([ref_ids], skip_special_tokens=True)[0]
    _, text = _ours(native_pipeline.transcribe(str(clip), "en", GenerationOptions(max_tokens=32)))
    assert text == expected
