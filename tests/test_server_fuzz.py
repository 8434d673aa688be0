"""Generated bodies and headers against every route of the real server (hypothesis): never a 5xx, always an OpenAI
error body for a 4xx, no repr or traceback in any answer, and the server healthy afterwards. Fields take values
of every JSON type (huge integers, NaN, lone surrogates, deep lists included); generation sizes are kept small so
the valid requests that slip through stay fast on the tiny models."""

import json
import os

import pytest
from http_server import request

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_ROUTES = ("/v1/chat/completions", "/v1/audio/speech")
LEAKS = (" at 0x", "Traceback", 'File "/')

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),  # includes lone surrogates, which json.dumps escapes as \\udXXX
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def field(good):
    """A field's value: a plausible one or anything JSON can hold."""
    return st.one_of(good, json_values)


chat_bodies = st.fixed_dictionaries(
    {
        "messages": field(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "role": field(st.sampled_from(["user", "assistant", "system"])),
                        "content": field(st.text(max_size=30)),
                    }
                ),
                max_size=2,
            )
        ),
        "max_tokens": field(st.integers(1, 4)),  # always present: the default (1024) would be slow
    },
    optional={
        "model": field(st.sampled_from(["default", "tiny-voxtral", "tiny-dia"])),
        "max_completion_tokens": field(st.integers(1, 4)),
        "temperature": field(st.floats(0, 2)),
        "top_p": field(st.floats(0, 1)),
        "seed": field(st.integers(0, 2**32)),
        "stream": field(st.booleans()),
        "stream_options": field(st.fixed_dictionaries({"include_usage": field(st.booleans())})),
        "n": json_values,
    },
)

speech_bodies = st.fixed_dictionaries(
    {
        "input": field(st.text(max_size=40).map(lambda t: "[S1] " + t)),
        "max_tokens": field(st.integers(16, 40)),  # always present: the tiny Dia's default is 256 rows + DAC
    },
    optional={
        "model": field(st.sampled_from(["default", "tiny-dia", "tiny-voxtral"])),
        "response_format": field(st.sampled_from(["wav", "pcm", "flac", "mp3", "opus", "aac"])),
        "stream_format": field(st.sampled_from(["audio", "sse"])),
        "temperature": field(st.floats(0, 3)),
        "top_p": field(st.floats(0, 1)),
        "top_k": field(st.integers(1, 1100)),
        "cfg_scale": field(st.floats(0, 200)),
        "seed": field(st.integers(0, 2**64)),
        "normalize": field(st.booleans()),
        "voice": json_values,
        "speed": json_values,
        "ref_text": field(st.text(max_size=20)),
        "ref_audio": field(st.sampled_from(["", "AAAA", "data:audio/wav;base64,AAAA", "file:///dev/zero"])),
    },
)

# CI runs a fixed, derandomized sample; SPEECHRS_FUZZ_EXAMPLES=2000 runs a long random search by hand
EXAMPLES = int(os.environ.get("SPEECHRS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not EXAMPLES
)


def _check(status: int, raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    assert status < 500, text[:500]
    assert not any(leak in text for leak in LEAKS), text[:500]
    if status >= 400:
        assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(body=chat_bodies)
def test_chat_bodies(server, body):
    _check(*_post_json(server, "/v1/chat/completions", body))


@FUZZ
@given(body=speech_bodies)
def test_speech_bodies(server, body):
    _check(*_post_json(server, "/v1/audio/speech", body))


@FUZZ
@given(
    path=st.sampled_from([*JSON_ROUTES, "/v1/audio/transcriptions", "/v1/models"]),
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=latin-1",
            "text/plain",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
)
def test_arbitrary_bytes_and_content_types(server, path, raw, content_type):
    status, _, answer = request(server, "POST", path, raw, {"Content-Type": content_type} if content_type else {})
    _check(status, answer)


def test_the_server_is_healthy_after_the_fuzzing(server):
    assert request(server, "GET", "/health")[0] == 200


def _post_json(server, path: str, body) -> tuple[int, bytes]:
    status, _, raw = request(server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return status, raw
