"""Transcripts with timestamps and translations through the real server and the real openai client, equal to the
Python API on the same tiny model and the same real speech (espeak-ng sentences with pauses)."""

import json
import urllib.request

import openai
import pytest
from openai.types.audio import TranscriptionVerbose, TranslationVerbose

import speechrs

OPTS = {"max_tokens": 6}
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks translations so


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(native_dir):
    return speechrs.load(str(native_dir), device="cpu")


def test_verbose_json_has_openai_segments_equal_to_the_python_api(client, api, paused_speech, server):
    path, truth, duration = paused_speech
    with open(path, "rb") as f:
        out = client.audio.transcriptions.create(
            model="tiny-voxtral",
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["segment"],
            extra_body=OPTS,
        )
    assert isinstance(out, TranscriptionVerbose)
    TranscriptionVerbose.model_validate(out.model_dump())  # every required field present and typed
    expected = api.transcribe(str(path), "en", timestamps=True, **OPTS)
    assert out.text == expected.text and out.language == "english"
    assert out.duration == pytest.approx(duration, abs=1e-3)
    assert [(s.id, s.start, s.end, s.text, s.tokens) for s in out.segments] == [
        (s.id, round(s.start, 3), round(s.end, 3), s.text, s.tokens) for s in expected.segments
    ]
    assert out.segments[-1].end <= duration


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitle_formats_equal_the_python_api(client, api, paused_speech, fmt):
    path = paused_speech[0]
    with open(path, "rb") as f:
        text = client.audio.transcriptions.create(model="default", file=f, response_format=fmt, extra_body=OPTS)
    expected = api.transcribe(str(path), timestamps=True, **OPTS)
    assert text == (expected.srt() if fmt == "srt" else expected.vtt())


def test_translations_route_with_the_openai_client(client, api, paused_speech):
    path = paused_speech[0]
    with open(path, "rb") as f:
        out = client.audio.translations.create(model="default", file=f, response_format="verbose_json", extra_body=OPTS)
    assert isinstance(out, TranslationVerbose) and out.language == "english" and out.segments
    assert out.text == api.translate(str(path), "en", timestamps=True, **OPTS).text
    with open(path, "rb") as f:  # the to_language extension, one prompt (no timestamps asked, 46 s fits)
        fr = client.audio.translations.create(model="default", file=f, extra_body={**OPTS, "to_language": "fr"})
    assert fr.text == api.translate(str(path), "fr", **OPTS).text
    with open(path, "rb") as f, pytest.raises(openai.BadRequestError, match="unknown target language"):
        client.audio.translations.create(model="default", file=f, extra_body={"to_language": "xx-nope"})


def test_streamed_segments_arrive_as_they_end(server, api, paused_speech):
    """SSE: text deltas, a transcript.text.segment event per segment, then transcript.text.done."""
    path = paused_speech[0]
    boundary = "b0undary"
    fields = {"model": "default", "stream": "true", "response_format": "verbose_json", "max_tokens": "6"}
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    body += path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{server.url}/v1/audio/transcriptions", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        lines = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    expected = api.transcribe(str(path), timestamps=True, **OPTS)
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert [(e["start"], e["end"], e["text"]) for e in segments] == [
        (round(s.start, 3), round(s.end, 3), s.text) for s in expected.segments
    ]
    assert "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta") == expected.text
    assert events[-1]["type"] == "transcript.text.done" and events[-1]["text"] == expected.text


def test_word_timestamps_are_refused_clearly(client, paused_speech):
    with open(paused_speech[0], "rb") as f, pytest.raises(openai.BadRequestError, match="word timestamps"):
        client.audio.transcriptions.create(
            model="default", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
