"""The real server on a loopback port, driven by the real openai client and by raw HTTP for the errors."""

import asyncio
import base64
import http.client
import http.server
import io
import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

import speechrs
from speechrs.audio import to_s16le, wav_bytes
from speechrs.dia.checkpoint import load_dia
from speechrs.dia.pipeline import AudioChunk, DiaPipeline
from speechrs.engine import Engine, Loaded
from speechrs.hub import detect
from speechrs.media import MediaPolicy
from speechrs.server import make_app

SPEAK = "[S1] Hello there. [S2] Hi! (laughs)"


class Server:
    """make_app(engine) served by aiohttp's AppRunner on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, app: web.Application):
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, handler_cancellation=True)
        ready = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait(30)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def engine(native_dir, native_pipeline, dia_dirs, dac):
    dia = DiaPipeline(load_dia(dia_dirs[0], None), dac)
    return Engine(
        [Loaded("tiny-voxtral", detect(native_dir), native_pipeline), Loaded("tiny-dia", detect(dia_dirs[0]), dia)]
    )


@pytest.fixture(scope="module")
def server(engine):
    s = Server(make_app(engine, MediaPolicy(allow_local_files=True), max_upload_bytes=2 * 2**20))
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(native_dir, dia_dirs, dac_dirs):
    return speechrs.load(str(native_dir)), speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0]))


def post(server, path, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def error_of(status_body):
    status, _, body = status_body
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return status, err


# ---- the happy paths, equal to the Python API ----


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


@pytest.mark.parametrize("fmt,magic", [("flac", b"fLaC"), ("mp3", None), ("opus", b"OggS")])
def test_speech_in_compressed_formats(server, fmt, magic):
    status, headers, body = post(
        server, "/v1/audio/speech", {"input": SPEAK, "response_format": fmt, "max_tokens": 30, "seed": 0}
    )
    assert status == 200 and len(body) > 100
    assert magic is None or body.startswith(magic)


def test_models_health_metrics(server):
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        data = json.loads(r.read())["data"]
    assert [(m["id"], m["family"]) for m in data] == [("tiny-voxtral", "voxtral"), ("tiny-dia", "dia")]
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.loads(r.read()) == {"status": "ok"}
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    assert 'speechrs_requests_total{route="/v1/models",status="200"} 1' in text
    assert "speechrs_queue_depth 0" in text and "speechrs_audio_output_seconds_total" in text


# ---- errors: status and OpenAI error body ----


def test_chat_errors(server, clip):
    assert error_of(post(server, "/v1/chat/completions", b"{not json"))[0] == 400
    status, err = error_of(post(server, "/v1/chat/completions", {"model": "nope", "messages": []}))
    assert status == 404 and err["code"] == "model_not_found" and "tiny-voxtral" in err["message"]
    status, err = error_of(
        post(server, "/v1/chat/completions", {"model": "tiny-dia", "messages": [{"role": "user", "content": "hi"}]})
    )
    assert status == 400 and "dia model" in err["message"]
    bad_audio = "data:audio/wav;base64," + base64.b64encode(b"definitely not audio").decode()
    status, err = error_of(
        post(
            server,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": bad_audio}}]}]},
        )
    )
    assert status == 400 and "cannot decode" in err["message"]
    status, err = error_of(
        post(
            server,
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}],
                    }
                ]
            },
        )
    )
    assert status == 400 and "loopback" in err["message"] and err["param"] == "messages[0].content[0]"
    status, err = error_of(
        post(
            server,
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]},
        )
    )
    assert status == 400 and "system" in err["message"]
    status, err = error_of(
        post(
            server,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        )
    )
    assert status == 400 and "unsupported content part type 'image_url'" in err["message"]
    big = "data:audio/wav;base64," + base64.b64encode(bytes(3 * 2**20)).decode()  # the server takes 2 MiB
    status, err = error_of(
        post(
            server,
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": big}}]}]},
        )
    )
    assert status == 413 and "too large" in err["message"]
    assert error_of(post(server, "/v1/chat/completions", {"model": "default"}))[1]["param"] == "messages"


def test_transcription_errors(server):
    def multipart(fields: dict, file_bytes: bytes | None):
        boundary = "xYzBoUnDaRy"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        if file_bytes is not None:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                f"Content-Type: audio/wav\r\n\r\n".encode()
                + file_bytes
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return post(server, "/v1/audio/transcriptions", body, f"multipart/form-data; boundary={boundary}")

    assert error_of(multipart({"model": "default"}, None))[1]["param"] == "file"
    status, err = error_of(multipart({"model": "default"}, b"RIFF....garbage"))
    assert status == 400 and "cannot decode" in err["message"]
    status, err = error_of(multipart({"response_format": "srt"}, b"x"))
    assert status == 400 and "json, text" in err["message"]
    status, err = error_of(multipart({"model": "ghost"}, b"x"))
    assert status == 404
    status, err = error_of(multipart({}, bytes(3 * 2**20)))  # the server takes 2 MiB
    assert status == 413 and "too large" in err["message"]
    assert error_of(post(server, "/v1/audio/transcriptions", {"file": "x"}))[0] == 400


def test_speech_errors(server):
    status, err = error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "response_format": "aac"}))
    assert status == 400 and err["param"] == "response_format" and "wav, pcm, flac, mp3, opus" in err["message"]
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "", "response_format": "wav"}))
    assert status == 400 and "empty" in err["message"]
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "a" * 2000}))
    assert status == 400 and "at most 1024" in err["message"]
    status, err = error_of(post(server, "/v1/audio/speech", {"model": "tiny-voxtral", "input": "hi"}))
    assert status == 400 and "voxtral model" in err["message"]
    assert error_of(post(server, "/v1/audio/speech", b"[1, 2"))[0] == 400
    status, err = error_of(post(server, "/v1/audio/speech", {"model": "ghost", "input": SPEAK}))
    assert status == 404 and err["code"] == "model_not_found"
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "[S1] " + "x" * 3 * 2**20}))
    assert status == 413
    assert error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "top_p": "high"}))[1]["param"] == "top_p"


def test_unknown_route_and_method(server):
    assert error_of(post(server, "/v1/nothing", {}))[0] == 404
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/v1/audio/speech")
    assert e.value.code == 405


# ---- media policy ----


def test_file_urls_need_loopback_or_an_allowed_dir(engine, clip, tmp_path):
    remote = Server(make_app(engine, MediaPolicy(allow_local_files=False, allowed_dirs=(clip.parent,))))
    try:

        def chat(path):
            return post(
                remote,
                "/v1/chat/completions",
                {
                    "max_tokens": 2,
                    "messages": [
                        {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"file://{path}"}}]}
                    ],
                },
            )

        assert chat(clip)[0] == 200
        outside = tmp_path / "x.wav"
        outside.write_bytes(clip.read_bytes())
        status, err = error_of(chat(outside))
        assert status == 400 and "--allowed-local-media-path" in err["message"]
    finally:
        remote.close()


def test_http_audio_is_fetched_when_private_hosts_are_allowed(engine, clip):
    data = clip.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/clip.wav")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    media = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=media.serve_forever, daemon=True).start()
    trusting = Server(make_app(engine, MediaPolicy(allow_private_hosts=True, max_redirects=1)))
    try:
        url = f"http://127.0.0.1:{media.server_address[1]}/redirect"
        status, _, body = post(
            trusting,
            "/v1/chat/completions",
            {
                "max_tokens": 3,
                "messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": url}}]}],
            },
        )
        assert (
            status == 200 and json.loads(body)["usage"]["prompt_tokens"] == 379
        )  # <s>[INST][BEGIN_AUDIO][AUDIO]x375[/INST]
    finally:
        trusting.close()
        media.shutdown()


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
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as r:
            assert json.loads(r.read())["data"][0]["family"] == "voxtral"
        big = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=bytes(2 * 2**20),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big)
        assert e.value.code == 413  # --max-upload-mb 1 reached the app
    finally:
        proc.terminate()
        proc.wait(30)
    assert "serving" in proc.stderr.read()
