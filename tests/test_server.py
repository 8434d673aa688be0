"""The real server on a loopback port, driven by the real openai client and by raw HTTP for the errors."""

import base64
import http.client
import http.server
import io
import json
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from http_server import error_of, post

import speechrs
from speechrs.audio.decode import to_s16le, wav_bytes
from speechrs.dia.pipeline import AudioChunk

SPEAK = "[S1] Hello there. [S2] Hi! (laughs)"


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(native_dir, dia_dirs, dac_dirs):
    return speechrs.load(str(native_dir)), speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0]))


# ---- the happy paths, equal to the Python API ----


def test_openai_model_names_reach_the_family_s_first_model(client, api, clip):
    """Code written for OpenAI's API runs unchanged: its model names stand for the first model of the family their
    route needs; a name of the other family is a 400 that says so."""
    import openai

    with open(clip, "rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", extra_body={"max_tokens": 8})
    assert out.text == api[0].transcribe(clip, language="en", max_tokens=8).text
    for name in ("tts-1", "gpt-4o-mini-tts"):
        speech = client.audio.speech.create(
            model=name, voice="alloy", input=SPEAK, response_format="wav", extra_body={"max_tokens": 30}
        )
        assert speech.content[:4] == b"RIFF"
    with pytest.raises(openai.BadRequestError, match="OpenAI's name for a voxtral model"):
        client.audio.speech.create(model="whisper-1", voice="alloy", input=SPEAK)


def test_each_request_is_one_line_on_the_access_log(client, clip, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="speechrs.access"):
        with open(clip, "rb") as f:
            client.audio.transcriptions.create(model="default", file=f, extra_body={"max_tokens": 4})
        with pytest.raises(Exception):  # noqa: B017 (the error's class is the client's business; the line is ours)
            client.audio.speech.create(model="nosuch", voice="alloy", input=SPEAK)
    lines = [r.getMessage() for r in caplog.records if r.name == "speechrs.access"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("POST /v1/audio/transcriptions 200 tiny-voxtral in ") and lines[0].endswith("s")
    assert lines[1].startswith("POST /v1/audio/speech 404 - ") and "model 'nosuch' is not loaded" in lines[1]


def test_transcription_equals_the_python_api(client, api, clip):
    with open(clip, "rb") as f:
        out = client.audio.transcriptions.create(model="default", file=f, language="en", extra_body={"max_tokens": 16})
    assert out.text == api[0].transcribe(clip, language="en", max_tokens=16).text
    with open(clip, "rb") as f:
        text = client.audio.transcriptions.create(
            model="tiny-voxtral", file=f, response_format="text", extra_body={"max_tokens": 16}
        )
    assert text.strip() == api[0].transcribe(clip, max_tokens=16).text.strip()


@pytest.mark.parametrize("kind", ["audio_url", "input_audio"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_with_audio_equals_the_python_api(client, api, clip, kind, stream):
    if kind == "audio_url":
        part = {"type": "audio_url", "audio_url": {"url": f"file://{clip}"}}
    else:
        part = {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(clip.read_bytes()).decode(), "format": "wav"},
        }
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is said?"}]}]
    expected = api[0].chat(messages, max_tokens=12, seed=1, temperature=0.7)
    kwargs = dict(model="default", messages=messages, max_tokens=12, seed=1, temperature=0.7)
    if not stream:
        out = client.chat.completions.create(**kwargs)
        assert out.choices[0].message.content == expected.text
        assert out.usage.prompt_tokens == expected.usage.prompt_tokens
        assert out.choices[0].finish_reason == expected.finish_reason
    else:
        chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected.text
        assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_speech_equals_the_python_api(client, api, server, fmt):
    out = client.audio.speech.create(
        model="default", voice="alloy", input=SPEAK, response_format=fmt, extra_body={"seed": 3, "max_tokens": 40}
    )
    result = api[1].speak(SPEAK, seed=3, max_tokens=40)
    assert out.content == (wav_bytes(result.pcm, 44100) if fmt == "wav" else to_s16le(result.pcm))
    expected_type = {
        "wav": "audio/wav; rate=44100; channels=1",
        "pcm": "audio/pcm; codecs=1; format=s16le; rate=44100; channels=1",
    }[fmt]
    assert out.response.headers["content-type"] == expected_type


def _streamed_pcm(api, **options) -> np.ndarray:
    events = api[1].speak_stream(SPEAK, stream_audio=True, **options)
    return np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])


def test_speech_streams_sse_deltas_equal_to_the_python_api(client, api):
    with client.audio.speech.with_streaming_response.create(
        model="default", voice="alloy", input=SPEAK, stream_format="sse", extra_body={"seed": 3, "max_tokens": 60}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) >= 1 and all(e["type"] == "speech.audio.delta" for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert audio == to_s16le(_streamed_pcm(api, seed=3, max_tokens=60))
    n_in = len(SPEAK.replace("[S1]", "1").replace("[S2]", "2"))
    assert done["type"] == "speech.audio.done" and done["usage"]["input_tokens"] == n_in
    assert done["usage"]["total_tokens"] == n_in + done["usage"]["output_tokens"] > n_in


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_speech_streams_raw_audio_bytes(server, api, fmt):
    req = urllib.request.Request(
        server.url + "/v1/audio/speech",
        headers={"Content-Type": "application/json"},
        data=json.dumps(
            {"input": SPEAK, "response_format": fmt, "stream_format": "audio", "seed": 5, "max_tokens": 60}
        ).encode(),
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        body = resp.read()
    pcm = to_s16le(_streamed_pcm(api, seed=5, max_tokens=60))
    if fmt == "wav":
        assert body[:4] == b"RIFF" and body[40:44] == b"\xff\xff\xff\xff" and body[44:] == pcm
        data, rate = sf.read(
            io.BytesIO(
                body[:4]
                + (len(body) - 8).to_bytes(4, "little")
                + body[8:40]
                + (len(pcm)).to_bytes(4, "little")
                + body[44:]
            ),
            dtype="int16",
        )
        assert rate == 44100 and len(data) == len(pcm) // 2
    else:
        assert body == pcm


def test_streamed_speech_errors(server):
    status, err = error_of(
        post(server, "/v1/audio/speech", {"input": SPEAK, "stream_format": "sse", "response_format": "mp3"})
    )
    assert status == 400 and err["param"] == "response_format" and "pcm" in err["message"]
    status, err = error_of(
        post(server, "/v1/audio/speech", {"input": SPEAK, "stream_format": "sse", "normalize": True})
    )
    assert status == 400 and "whole clip" in err["message"]
    status, err = error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "stream_format": "video"}))
    assert status == 400 and err["param"] == "stream_format"
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "", "stream_format": "sse"}))
    assert status == 400 and "empty" in err["message"]


def test_speech_clones_a_voice_like_the_python_api(client, api, server, clip, tmp_path):
    ref, wav = "[S1] A reference voice.", tmp_path / "ref.wav"
    pcm, rate = sf.read(str(clip), dtype="float32")
    sf.write(str(wav), pcm[: int(1.5 * rate)], rate)  # the tiny Dia's 256-row context holds 1.5 s
    expected = api[1].speak(SPEAK, ref_audio=str(wav), ref_text=ref, temperature=0, max_tokens=40)
    for ref_audio in (
        base64.b64encode(wav.read_bytes()).decode(),
        wav.as_uri(),
        "data:audio/wav;base64," + base64.b64encode(wav.read_bytes()).decode(),
    ):
        out = client.audio.speech.create(
            model="default",
            voice="alloy",
            input=SPEAK,
            response_format="pcm",
            extra_body={"ref_audio": ref_audio, "ref_text": ref, "temperature": 0, "max_tokens": 40},
        )
        assert out.content == to_s16le(expected.pcm)
    status, err = error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "ref_audio": wav.as_uri()}))
    assert status == 400 and err["param"] == "ref_text" and "transcript" in err["message"]
    status, err = error_of(
        post(server, "/v1/audio/speech", {"input": SPEAK, "ref_audio": "not base64!", "ref_text": ref})
    )
    assert status == 400 and err["param"] == "ref_audio"
    short = base64.b64encode(wav_bytes(np.zeros(4410, dtype=np.float32), 44100)).decode()
    status, err = error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "ref_audio": short, "ref_text": ref}))
    assert status == 400 and "at least 0.5 s" in err["message"]
    status, err = error_of(
        post(server, "/v1/audio/speech", {"input": SPEAK, "ref_audio": "http://127.0.0.1:9/x", "ref_text": ref})
    )
    assert status == 400 and err["param"] == "ref_audio"  # private hosts refused by the media policy


@pytest.mark.parametrize("fmt,magic", [("flac", b"fLaC"), ("mp3", None), ("opus", b"OggS"), ("aac", b"\xff\xf1")])
def test_speech_in_compressed_formats(server, fmt, magic):
    status, headers, body = post(
        server, "/v1/audio/speech", {"input": SPEAK, "response_format": fmt, "max_tokens": 30, "seed": 0}
    )
    assert status == 200 and len(body) > 100
    assert magic is None or body.startswith(magic)


def test_models_health_metrics(server):
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        data = json.loads(r.read())["data"]
    assert [(m["id"], m["family"]) for m in data][:2] == [("tiny-voxtral", "voxtral"), ("tiny-dia", "dia")]
    aliases = {m["id"]: m["alias_of"] for m in data[2:]}
    assert aliases == {
        **dict.fromkeys(("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"), "tiny-voxtral"),
        **dict.fromkeys(("tts-1", "tts-1-hd", "gpt-4o-mini-tts"), "tiny-dia"),
    }
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    assert 'speechrs_requests_total{route="/v1/models",status="200"} 1' in text
    assert "speechrs_queue_depth 0" in text and "speechrs_audio_output_seconds_total" in text


# ---- cancellation ----


def test_a_client_that_disconnects_frees_the_worker(server, engine):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(
            {"stream": True, "max_tokens": 100000, "messages": [{"role": "user", "content": "Tell a very long story."}]}
        ),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read1(100)  # generation has started
    conn.sock.close()  # the client goes away mid-generation
    conn.close()
    t0 = time.perf_counter()
    status, _, body = post(
        server, "/v1/chat/completions", {"max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and time.perf_counter() - t0 < 10
    deadline = time.time() + 10
    while engine.queue_depth and time.time() < deadline:
        time.sleep(0.05)
    assert engine.queue_depth == 0


def test_speechrs_serve_command_serves_until_stopped(native_dir, tmp_path):
    """The real entry point: flags -> engine -> policy -> aiohttp, in its own process."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "speechrs",
            "serve",
            "-m",
            str(native_dir),
            "--port",
            str(port),
            "--no-warmup",
            "--max-upload-mb",
            "1",
            "--allowed-host",
            "speech.example",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "SPEECHRS_API_KEY": "k3y"},
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as e:  # SPEECHRS_API_KEY reached the app
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models")
        assert e.value.code == 401
        models = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k3y", "Host": "speech.example"}
        )
        with urllib.request.urlopen(models) as r:  # and so did --allowed-host
            assert json.loads(r.read())["data"][0]["family"] == "voxtral"
        big = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=bytes(2 * 2**20),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k3y"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big)
        assert e.value.code == 413  # --max-upload-mb 1 reached the app
    finally:
        proc.terminate()
        proc.wait(30)
    assert "serving" in proc.stderr.read()
