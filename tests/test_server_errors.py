"""The real server's answers to bad requests (status, OpenAI error body) and its media policy, over raw HTTP."""

import base64
import http.client
import http.server
import json
import threading
import urllib.request

import pytest
from http_server import Server, error_of, post

from speechrs.server.app import make_app
from speechrs.server.media import MediaPolicy

SPEAK = "[S1] Hello there. [S2] Hi! (laughs)"


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
    status, err = error_of(multipart({"response_format": "xml"}, b"x"))
    assert status == 400 and "verbose_json, srt, vtt" in err["message"]
    status, err = error_of(multipart({"response_format": "srt", "stream": "true"}, b"x"))
    assert status == 400 and err["param"] == "response_format"
    status, err = error_of(multipart({"response_format": "verbose_json", "timestamp_granularities[]": "word"}, b"x"))
    assert status == 400 and "word timestamps" in err["message"] and err["param"] == "timestamp_granularities"
    status, err = error_of(multipart({"timestamp_granularities[]": "segment"}, b"x"))
    assert status == 400 and "verbose_json" in err["message"]
    status, err = error_of(multipart({"model": "ghost"}, b"x"))
    assert status == 404
    status, err = error_of(multipart({}, bytes(3 * 2**20)))  # the server takes 2 MiB
    assert status == 413 and "too large" in err["message"]
    assert error_of(post(server, "/v1/audio/transcriptions", {"file": "x"}))[0] == 400


def test_speech_errors(server):
    status, err = error_of(post(server, "/v1/audio/speech", {"input": SPEAK, "response_format": "ogg"}))
    assert status == 400 and err["param"] == "response_format" and "wav, pcm, mp3, opus, aac, flac" in err["message"]
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "", "response_format": "wav"}))
    assert status == 400 and "empty" in err["message"]
    for tags in ("[S1][S2] [S1]", "[S1]" * 500):  # speaker tags only, short or long enough to be split: was a 500
        status, err = error_of(post(server, "/v1/audio/speech", {"input": tags}))
        assert status == 400 and "only speaker tags" in err["message"] and err["param"] == "input"
    status, err = error_of(post(server, "/v1/audio/speech", {"input": "a" * 2000}))  # one "word" over a piece
    assert status == 400 and "does not fit in one piece" in err["message"]
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


# ---- malformed and extreme fields (issue 14's probe): 4xx with the field named, never a 5xx ----

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SPEECH_BODY = {"input": "[S1] Hi.", "response_format": "pcm", "max_tokens": 20, "seed": 0}


@pytest.mark.parametrize(
    "path,fields,param",
    [
        ("/v1/chat/completions", {"stream_options": "x", "stream": True}, "stream_options"),
        ("/v1/chat/completions", {"stream": "false"}, "stream"),
        ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": "no"}}, "include_usage"),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {"max_tokens": 10**12}, "max_tokens"),
        ("/v1/chat/completions", {"seed": 2**64}, "seed"),
        ("/v1/chat/completions", {"temperature": 10**400}, "temperature"),
        ("/v1/audio/speech", {"response_format": ["wav"]}, "response_format"),
        ("/v1/audio/speech", {"cfg_scale": 1e308}, None),
        ("/v1/audio/speech", {"seed": -1}, "seed"),
        ("/v1/audio/speech", {"normalize": "yes"}, "normalize"),
    ],
)
def test_malformed_fields_are_a_400_naming_the_field(server, path, fields, param):
    base = CHAT if path.endswith("completions") else SPEECH_BODY
    status, err = error_of(post(server, path, {**base, **fields}))
    assert status == 400 and "<" not in err["message"], err
    assert param is None or err["param"] == param


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": "[S1] Hi.", "cfg_scale": NaN}',  # Python's json reads NaN; it must not reach the model
        b'{"input": "[S1] Hi.", "temperature": Infinity}',
        b'{"input": "[S1] Hi.", "seed": ' + b"9" * 5000 + b"}",  # past Python's 4300-digit int limit
        b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nesting past the recursion limit
    ],
)
def test_unparseable_or_non_finite_json_is_a_400(server, raw):
    status, err = error_of(post(server, "/v1/audio/speech", raw))
    assert status == 400, err


def test_extreme_but_valid_sampling_values_answer(server):
    """A temperature or top_p of 1e-300 is the greedy limit, not a NaN in the softmax."""
    for fields in ({"temperature": 1e-300}, {"temperature": 0.5, "top_p": 1e-300}):
        status, _, body = post(server, "/v1/chat/completions", {**CHAT, **fields})
        assert status == 200, body
    status, _, body = post(server, "/v1/audio/speech", {**SPEECH_BODY, "temperature": 1e-300})
    assert status == 200 and len(body) > 0


def test_max_tokens_beyond_the_context_states_the_maximum(server, engine):
    limit = engine.models[0].voxtral.model.cfg.max_seq_len
    status, err = error_of(post(server, "/v1/chat/completions", {**CHAT, "max_tokens": limit}))
    assert status == 400 and err["param"] == "max_tokens" and "at most" in err["message"]


def test_dia_samples_with_a_top_p_that_underflows(server):
    status, _, body = post(server, "/v1/audio/speech", {**SPEECH_BODY, "temperature": 1.0, "top_p": 1e-300})
    assert status == 200 and len(body) > 0, body


def test_file_urls_read_regular_files_only_off_the_event_loop_with_one_answer(server, clip, tmp_path):
    """A FIFO (which blocked the event loop on open), a device (file:///dev/zero streamed gigabytes), a
    directory, a missing file, a file over the cap and a file that is not audio all get the same 400 (no oracle
    for which files exist), and the server answers others meanwhile."""
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    big = tmp_path / "big.wav"
    big.write_bytes(bytes(25 * 2**20 + 1))  # one byte over the media policy's cap
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 100)
    messages = [
        {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"file://{p}"}}]}
        for p in (fifo, "/dev/zero", tmp_path, tmp_path / "missing.wav", big, text)
    ]
    messages_of = [error_of(post(server, "/v1/chat/completions", {**CHAT, "messages": [m]})) for m in messages]
    assert {status for status, _ in messages_of} == {400}
    answers = {err["message"].split(": ", 1)[1] for _, err in messages_of}
    assert answers == {f"no regular, readable audio file of at most {25 * 2**20} bytes"}, answers
    assert (
        post(
            server,
            "/v1/chat/completions",
            {
                **CHAT,
                "messages": [
                    {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"file://{clip}"}}]}
                ],
            },
        )[0]
        == 200
    )


@pytest.mark.parametrize(
    "path,body,headers",
    [
        ("/v1/audio/speech", b'{"input": "[S1] Hi."}', {"Content-Type": "application/json; charset=klingon"}),
        (
            "/v1/audio/speech",
            b'{"input": "[S1] Hi."}',
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        (
            "/v1/audio/speech",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03corrupt",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        ("/v1/audio/speech", b'{"input": "[S1] \\ud800 lone surrogate"}', {"Content-Type": "application/json"}),
        ("/v1/audio/transcriptions", b"--x\r\n\r\n--x--\r\n", {"Content-Type": "multipart/form-data"}),
        (
            "/v1/audio/transcriptions",
            b'--b\r\nContent-Disposition: form-data; name="language"\r\n\r\n\xff\xfe\r\n--b--\r\n',
            {"Content-Type": "multipart/form-data; boundary=b"},
        ),
    ],
    ids=["unknown-charset", "false-gzip", "corrupt-gzip", "lone-surrogate", "no-boundary", "non-utf8-field"],
)
def test_undecodable_bodies_are_a_400(server, path, body, headers):
    from http_server import request

    status, _, raw = request(server, "POST", path, body, headers)
    assert status == 400, raw
    assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip"])
def test_compressed_bodies_are_read_and_corrupt_ones_are_a_400_with_the_error_body(server, encoding):
    """Content-Encoding br, zstd and gzip request bodies are decoded (a valid one reaches the route: here a 400 for
    its out-of-range field, said by the route); a corrupt one is a 400 with OpenAI's error body, never the HTTP
    parser's bare text."""
    import gzip

    import brotli
    from http_server import request

    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef]

    compress = {"br": brotli.compress, "zstd": zstd.compress, "gzip": gzip.compress}[encoding]
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    body = json.dumps({"input": "[S1] Hi.", "cfg_scale": 1000}).encode()
    status, _, raw = request(server, "POST", "/v1/audio/speech", compress(body), headers)
    assert status == 400 and "cfg_scale must be in" in json.loads(raw)["error"]["message"], raw
    for corrupt in (compress(body)[:-6] + b"broken", b"not compressed at all", b"\x00" * 64):
        status, _, raw = request(server, "POST", "/v1/audio/speech", corrupt, headers)
        assert status == 400 and set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}, raw


def test_the_body_cap_covers_multipart_text_fields(server):
    """The test server's cap is 2 MiB; a 3 MiB 'prompt' field must not slip past it."""
    from http_server import request

    body = b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + b"a" * (3 * 2**20) + b"\r\n--b--\r\n"
    status, _, raw = request(
        server, "POST", "/v1/audio/transcriptions", body, {"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert status == 413, raw


def test_the_body_cap_covers_many_fields_and_skips_unknown_ones(server):
    """Ten 0.5 MiB fields (5 MiB in all) under the 2 MiB cap: a 413 with an OpenAI body, whatever their names; a
    field longer than a text field's limit is a 400 naming it."""
    from http_server import request

    field = b"a" * 2**19
    parts = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="x%d"\r\n\r\n' % i + field + b"\r\n" for i in range(10)
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    status, _, raw = request(server, "POST", "/v1/audio/transcriptions", parts + b"--b--\r\n", headers)
    assert status == 413 and json.loads(raw)["error"]["code"] == "413", raw
    body = b'--b\r\nContent-Disposition: form-data; name="language"\r\n\r\n' + b"a" * 2**17 + b"\r\n--b--\r\n"
    status, _, raw = request(server, "POST", "/v1/audio/transcriptions", body, headers)
    assert status == 400 and json.loads(raw)["error"]["param"] == "language", raw


def test_a_full_queue_answers_429_with_retry_after_at_once(engine):
    """--max-queue 0: one request runs, none waits; the next is refused at once, not queued without bound."""
    import asyncio
    import threading
    import time

    from http_server import Server

    from speechrs.engine.engine import Engine

    gate = threading.Event()

    def held():  # a request that runs until the test lets it finish
        gate.wait(30)
        yield "done"

    busy = Engine(engine.models, max_queue=0, max_batch=1)
    s = Server(make_app(busy))
    try:

        async def hold():
            async for event in busy.stream(held):
                return event

        running = asyncio.run_coroutine_threadsafe(hold(), s.loop)
        deadline = time.time() + 10
        while busy.queue_depth < 1 and time.time() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        status, headers, body = post(s, "/v1/audio/speech", SPEECH_BODY)
        assert status == 429 and time.perf_counter() - t0 < 5
        assert int(headers["Retry-After"]) >= 1 and json.loads(body)["error"]["code"] == "server_busy"
        gate.set()
        assert running.result(30) == "done"
        assert post(s, "/v1/audio/speech", SPEECH_BODY)[0] == 200  # the slot is free again
    finally:
        gate.set()
        s.close()


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=b"])
def test_a_client_that_stalls_while_sending_its_body_gets_a_408(engine, content_type):
    import socket
    import time

    from http_server import Server

    s = Server(make_app(engine, body_timeout_s=1.0))
    try:
        path = "/v1/audio/speech" if content_type.startswith("application") else "/v1/audio/transcriptions"
        with socket.create_connection(("127.0.0.1", s.port), timeout=20) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            head += "Content-Length: 1000\r\n\r\n"
            sock.sendall(head.encode() + b'{"input": ')  # and then nothing more
            t0 = time.perf_counter()
            answer = sock.recv(65536).decode("utf-8", "replace")
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer, answer[:300]
        assert time.perf_counter() - t0 < 10
    finally:
        s.close()


@pytest.mark.parametrize("taken", [False, True], ids=["in-the-queue", "taken-by-the-worker"])
def test_shutdown_answers_queued_requests_503_and_lets_the_running_one_finish(engine, taken):
    """taken: the worker had already taken the queued request into its waiting list when the running one blocked it
    (both jobs read in one pass: a race CI once hit under load, the client then had no answer until the running one
    ended); here made certain by holding the first job's start until the second is queued."""
    import asyncio
    import threading
    import time

    from http_server import Server

    from speechrs.engine.engine import Engine

    gate = threading.Event()

    def held():
        gate.wait(30)
        yield "done"

    busy = Engine(engine.models)
    s = Server(make_app(busy))
    queued: dict = {}

    def make_held():
        deadline = time.time() + 10
        while taken and busy.queue_depth < 2 and time.time() < deadline:
            time.sleep(0.01)
        return held()

    try:

        async def hold():
            async for event in busy.stream(make_held):
                return event

        running = asyncio.run_coroutine_threadsafe(hold(), s.loop)
        waiter = threading.Thread(target=lambda: queued.update(answer=post(s, "/v1/audio/speech", SPEECH_BODY)))
        waiter.start()
        deadline = time.time() + 10
        while busy.queue_depth < 2 and time.time() < deadline:
            time.sleep(0.01)
        # what SIGTERM does in run_app: the runner's cleanup (the loop keeps running, so the held request's answer
        # can still arrive; Server.close would stop the loop as soon as the cleanup ends)
        if taken:  # the worker has read both jobs and runs the first
            while (busy.scheduler.jobs.qsize() or not busy.scheduler.waiting) and time.time() < deadline:
                time.sleep(0.01)
            assert busy.scheduler.waiting and not busy.scheduler.jobs.qsize()
        closing = asyncio.run_coroutine_threadsafe(s.runner.cleanup(), s.loop)
        waiter.join(10)
        status, _, body = queued["answer"]
        assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down"
        assert not running.done()  # the running request was not cut short
        gate.set()
        assert running.result(30) == "done"
        closing.result(30)
    finally:
        gate.set()
        if "waiter" in locals():  # answered before the loop stops (a thread left in urlopen crashed pytest's exit)
            waiter.join(30)
        s.loop.call_soon_threadsafe(s.loop.stop)
