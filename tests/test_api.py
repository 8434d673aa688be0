import base64

import pytest
import soundfile as sf

import speechrs
from speechrs.errors import InvalidRequestError
from speechrs.voxtral.events import Done, Token


@pytest.fixture(scope="module")
def model(native_dir):
    return speechrs.load(str(native_dir))


def test_transcribe_accepts_every_audio_kind(model, clip):
    pcm, rate = sf.read(str(clip), dtype="float32")
    data = clip.read_bytes()
    sources = [
        str(clip),
        clip,
        f"file://{clip}",
        "data:audio/wav;base64," + base64.b64encode(data).decode(),
        data,
        (pcm, rate),
    ]
    results = [model.transcribe(s, language="en", max_tokens=8) for s in sources]
    assert len({r.text for r in results}) == 1
    r = results[0]
    assert r.finish_reason == "length" and r.usage.completion_tokens == 8 and r.usage.prompt_tokens == 383


def test_stream_deltas_join_to_the_final_text(model, clip):
    events = list(model.transcribe_stream(clip, max_tokens=10))
    assert isinstance(events[-1], Done)
    assert "".join(e.text for e in events if isinstance(e, Token)) == events[-1].text


def test_chat_with_openai_parts_in_order(model, clip):
    b64 = base64.b64encode(clip.read_bytes()).decode()
    via_url = model.chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "audio_url", "audio_url": {"url": f"file://{clip}"}},
                    {"type": "text", "text": "What is said?"},
                ],
            }
        ],
        max_tokens=6,
    )
    via_input_audio = model.chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
                    {"type": "text", "text": "What is said?"},
                ],
            }
        ],
        max_tokens=6,
    )
    assert via_url.text == via_input_audio.text and via_url.usage.audio_seconds > 5


def test_chat_errors_are_invalid_requests(model, clip):
    with pytest.raises(InvalidRequestError, match="system"):
        model.chat(
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "audio", "audio": str(clip)}]},
            ]
        )
    with pytest.raises(InvalidRequestError, match="unsupported content part type 'image_url'"):
        model.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(InvalidRequestError, match="non-empty"):
        model.chat([])


def test_dia_speak_result(dia_dirs, dac_dirs, tmp_path):
    import soundfile as sf

    tts = speechrs.load(str(dia_dirs[1]), dac=str(dac_dirs[1]))
    result = tts.speak("[S1] Hi. [S2] Hello! (laughs)", max_tokens=40, seed=0)
    frames = result.codes.shape[0]  # 24 unless the random model samples EOS early
    assert result.sample_rate == 44100 and result.channels == 1 and result.codes.shape[1] == 9 and 0 < frames <= 24
    assert len(result.pcm) == frames * 512 and result.pcm.dtype.name == "float32"
    result.save(tmp_path / "x.wav")
    assert sf.info(str(tmp_path / "x.wav")).frames == frames * 512
    steps = [e.step for e in tts.speak_stream("[S1] Hi.", max_tokens=20, seed=0) if hasattr(e, "step")]
    assert steps == list(range(1, len(steps) + 1)) and 15 < len(steps) <= 20
