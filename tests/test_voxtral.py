import json
import shutil

import pytest
import torch
from conftest import noise

from speechrs.errors import AudioError, ModelNotFoundError, UnsupportedModelError
from speechrs.hub import detect, resolve
from speechrs.layers import half_split_to_interleaved, interleaved_to_half_split
from speechrs.voxtral.checkpoint import load_voxtral
from speechrs.voxtral.events import Audio, Done, GenerationOptions
from speechrs.voxtral.pipeline import VoxtralPipeline


def _logits(pipeline, ids, mels):
    m = pipeline.model
    with torch.inference_mode():
        m.setup_caches(1, len(ids) + 8)
        emb = m.encode_audio(torch.cat(mels)) if mels else None
        return m(m.embed(torch.tensor([ids]), emb, pipeline.audio_token_id), 0, last_only=False)[0]


def test_native_and_hf_layouts_give_the_same_logits(native_pipeline, hf_pipeline, clip):
    mel, n, _ = native_pipeline._prepare_audio(str(clip))
    from speechrs.voxtral.tekken import transcription_prompt

    ids = transcription_prompt(native_pipeline.tokenizer, n, "en")
    torch.testing.assert_close(
        _logits(native_pipeline, ids, [mel]), _logits(hf_pipeline, ids, [mel]), atol=1e-5, rtol=1e-5
    )


def test_rope_permutation_round_trips():
    w = torch.randn(4 * 32, 128)
    assert torch.equal(half_split_to_interleaved(interleaved_to_half_split(w, 4), 4), w)


def test_cached_decode_matches_full_forward(native_pipeline):
    m, ids = native_pipeline.model, [1, 3, 1500, 2000, 2500, 3000, 4, 7000, 7100, 7200]
    full = _logits(native_pipeline, ids, [])
    with torch.inference_mode():
        m.setup_caches(1, 32)
        m(m.embed(torch.tensor([ids[:6]]), None, 24), 0)
        steps = [m(m.embed(torch.tensor([[t]]), None, 24), 6 + i)[0, -1] for i, t in enumerate(ids[6:])]
        chunk = m(m.embed(torch.tensor([ids[6:]]), None, 24), 6, last_only=False)[0]  # T > 1 after a prefix
    torch.testing.assert_close(torch.stack(steps), full[6:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunk, full[6:], atol=1e-5, rtol=1e-5)


def test_audio_chunks_and_token_counts(native_pipeline):
    mel, n, seconds = native_pipeline._prepare_audio((noise(45.0), 16000))
    assert mel.shape == (2, 128, 3000) and n == 750 and seconds == 45.0
    assert native_pipeline.model.encode_audio(mel).shape == (750, native_pipeline.model.cfg.dim)


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(native_pipeline, clip):
    def run(**kw):
        return [e for e in native_pipeline.transcribe(str(clip), None, GenerationOptions(max_tokens=12, **kw))][-1]

    a, b = run(temperature=1.0, top_p=0.9, seed=7), run(temperature=1.0, top_p=0.9, seed=7)
    assert a.text == b.text and a.usage.completion_tokens == b.usage.completion_tokens
    assert run(temperature=1.0, seed=8).text != a.text or run(temperature=0.0).text != a.text


def test_bfloat16_load(native_dir, clip):
    from speechrs.voxtral.tekken import Tekken

    p = VoxtralPipeline(load_voxtral(native_dir, "native", torch.bfloat16), Tekken(native_dir / "tekken.json"))
    assert p.model.tok_embeddings.weight.dtype == torch.bfloat16
    done = list(p.transcribe(str(clip), "en", GenerationOptions(max_tokens=4)))[-1]
    assert isinstance(done, Done) and done.usage.completion_tokens >= 1


def test_usage_and_finish_reason(native_pipeline, clip):
    done = list(native_pipeline.transcribe(str(clip), "en", GenerationOptions(max_tokens=5)))[-1]
    assert done.finish_reason == "length" and done.usage.completion_tokens == 5
    assert done.usage.prompt_tokens == 383 and abs(done.usage.audio_seconds - 5.895) < 0.01


def test_audio_longer_than_the_context_is_refused_in_chat_and_segmented_in_transcription(native_dir, tmp_path):
    small = tmp_path / "small-context"
    shutil.copytree(native_dir, small)
    params = json.loads((small / "params.json").read_text())
    (small / "params.json").write_text(json.dumps({**params, "max_seq_len": 500}))
    p = VoxtralPipeline.load(small, "native")
    with pytest.raises(AudioError, match="more than the model's context of 500"):
        list(p.chat([("user", [Audio((noise(45.0), 16000)), "hi"])]))
    with pytest.raises(AudioError, match="exceeds the model's context of 500"):  # audio fits, prompt with it not
        list(p.chat([("user", [Audio((noise(25.0), 16000)), "hi " * 200])]))
    done = list(p.transcribe((noise(45.0), 16000)))[-1]
    assert isinstance(done, Done) and done.segments is not None  # no single prompt: segment by segment


def test_layout_detection(native_dir, hf_dir, tmp_path):
    assert (detect(native_dir).layout, detect(hf_dir).layout) == ("native", "hf")
    both = tmp_path / "both"
    shutil.copytree(native_dir, both)
    shutil.copy(hf_dir / "config.json", both / "config.json")
    assert detect(both).layout == "native"  # params.json wins, as in mistral.rs


def test_realtime_checkpoint_is_refused_by_name(native_dir, tmp_path):
    rt = tmp_path / "realtime"
    rt.mkdir()
    params = json.loads((native_dir / "params.json").read_text())
    params["multimodal"]["whisper_model_args"]["encoder_args"]["causal"] = True
    (rt / "params.json").write_text(json.dumps(params))
    with pytest.raises(UnsupportedModelError, match="Realtime"):
        resolve(str(rt))


def test_unknown_and_missing_models(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    with pytest.raises(UnsupportedModelError, match="BertModel"):
        resolve(str(tmp_path / "odd"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither params.json nor config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="neither a directory nor a hub id"):
        resolve(str(tmp_path / "missing" / "dir"))


def test_wrong_shapes_and_missing_tensors_are_named(native_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(native_dir, bad)
    params = json.loads((bad / "params.json").read_text())
    (bad / "params.json").write_text(json.dumps({**params, "hidden_dim": 512}))
    with pytest.raises(UnsupportedModelError, match="feed_forward.w1.weight' has shape"):
        load_voxtral(bad, "native", None)


def test_fast_argmax_picks_the_first_maximum_like_torch():
    from speechrs.sampling import argmax

    x = torch.randn(131072, generator=torch.Generator().manual_seed(0))
    assert argmax(x) == int(x.argmax())
    x[5000] = x[70000] = x.max() + 1  # a tie: the first one wins, as in torch.argmax
    assert argmax(x) == int(x.argmax()) == 5000


def test_kv_cache_grows_past_its_initial_capacity(native_pipeline):
    m, ids = native_pipeline.model, list(range(1500, 1540))
    full = _logits(native_pipeline, ids, [])
    with torch.inference_mode():
        m.caches, m._rope_len = [], 0
        m.setup_caches(1, 8)  # far too small: every write past the end doubles cache and RoPE table
        m(m.embed(torch.tensor([ids[:4]]), None, 24), 0)
        steps = [m(m.embed(torch.tensor([[t]]), None, 24), 4 + i)[0, -1] for i, t in enumerate(ids[4:])]
    assert m.caches[0].max_len >= len(ids)
    torch.testing.assert_close(torch.stack(steps), full[4:], atol=1e-5, rtol=1e-5)
