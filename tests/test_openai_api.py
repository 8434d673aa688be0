"""Body parsing and formatting, without HTTP."""

import io

import numpy as np
import pytest
import soundfile as sf

from speechrs.audio.encode import speech_bytes
from speechrs.errors import InvalidRequestError
from speechrs.server import openai_api as oa
from speechrs.voxtral.events import GenerationOptions


def test_chat_request_fields_become_the_cli_options():
    model, messages, opts, stream, usage = oa.chat_request(
        {
            "messages": [],
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert (model, stream, usage) == ("default", True, True)
    assert opts == GenerationOptions(max_tokens=7, temperature=0.5, top_p=0.9, seed=3)
    with pytest.raises(InvalidRequestError, match="n=1"):
        oa.chat_request({"messages": [], "n": 2})
    with pytest.raises(InvalidRequestError, match="'temperature' must be a number") as e:
        oa.chat_request({"messages": [], "temperature": "hot"})
    assert e.value.param == "temperature"


def test_speech_request_defaults_and_extensions():
    model, text, fmt, opts, stream_format = oa.speech_request(
        {"input": "[S1] hi", "voice": "alloy", "speed": 2.0, "instructions": "cheerful"}
    )
    assert (model, text, fmt, stream_format) == ("default", "[S1] hi", "mp3", None) and opts.temperature is None
    assert opts.normalize is None  # normalised unless streamed
    _, _, fmt, opts, _ = oa.speech_request(
        {"input": "x", "response_format": "pcm", "seed": 1, "cfg_scale": 4, "top_k": 50, "normalize": False}
    )
    assert fmt == "pcm" and (opts.seed, opts.cfg_scale, opts.top_k, opts.normalize) == (1, 4.0, 50, False)


@pytest.mark.parametrize(
    "fmt,stream_format,streams",
    [
        (None, None, False),
        ("pcm", None, False),
        ("pcm", "audio", True),
        ("wav", "audio", True),
        ("mp3", "audio", False),
        (None, "sse", True),
        ("pcm", "sse", True),
    ],
)
def test_which_speech_requests_stream(fmt, stream_format, streams):
    body = {"input": "x", "response_format": fmt, "stream_format": stream_format}
    _, _, fmt, _, stream_format = oa.speech_request({k: v for k, v in body.items() if v is not None})
    assert oa.streams_audio(fmt, stream_format) is streams and (stream_format != "sse" or fmt == "pcm")


def test_transcription_form_fields():
    req = oa.transcription_request(
        {
            "model": "m",
            "language": "fr",
            "response_format": "text",
            "stream": "true",
            "temperature": "0.3",
            "max_tokens": "9",
        }
    )
    assert (req.model, req.language, req.fmt, req.stream, req.timestamps) == ("m", "fr", "text", True, False)
    assert (req.opts.temperature, req.opts.max_tokens, req.to_language) == (0.3, 9, None)
    for fields in ({"response_format": "srt"}, {"response_format": "verbose_json"}):
        assert oa.transcription_request(fields).timestamps
    both = {"response_format": "verbose_json", "timestamp_granularities": ["segment"]}
    assert oa.transcription_request(both).timestamps
    translation = oa.transcription_request({"language": "de", "to_language": "French"}, translate=True)
    assert (translation.language, translation.to_language) == (None, "French")
    assert oa.transcription_request({}, translate=True).to_language == "en"
    with pytest.raises(InvalidRequestError, match="unknown target language 'klingon'"):
        oa.transcription_request({"to_language": "klingon"}, translate=True)
    with pytest.raises(InvalidRequestError, match="single value"):
        oa.transcription_request({"language": ["en", "fr"]})
    with pytest.raises(InvalidRequestError, match="'seed' must be a number"):
        oa.transcription_request({"seed": "abc"})


@pytest.mark.parametrize("fmt,rate", [("flac", 44100), ("mp3", 44100), ("opus", 48000)])
def test_compressed_speech_decodes_back(fmt, rate):
    pcm = (0.3 * np.sin(np.arange(44100) * 2 * np.pi * 440 / 44100)).astype(np.float32)
    data, content_type = speech_bytes(pcm, 44100, fmt)
    back, back_rate = sf.read(io.BytesIO(data))
    assert back_rate == rate and abs(len(back) / back_rate - 1.0) < 0.1
    assert content_type.startswith("audio/")
