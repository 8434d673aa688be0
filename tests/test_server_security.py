"""Browser and network exposure (guard.py): Host names, JSON content type, the API key, CORS."""

import json

import pytest
from http_server import Server, error_of, post, request

from speechrs.server.app import make_app
from speechrs.server.guard import Security, host_name

KEY = "s3cret-key"
SPEECH = json.dumps({"input": "[S1] Hi.", "response_format": "pcm", "max_tokens": 20, "seed": 0}).encode()


@pytest.fixture(scope="module")
def guarded(engine):
    security = Security(api_key=KEY, allowed_hosts=("speech.example",), cors_origins=("http://app.example",))
    s = Server(make_app(engine, security=security))
    yield s
    s.close()


def auth(**extra) -> dict:
    return {"Authorization": f"Bearer {KEY}", **extra}


def test_host_names_parse():
    assert host_name("Example.COM:1234") == "example.com" and host_name("[::1]:80") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("::1") == "::1"


def test_a_foreign_host_header_is_refused(server, guarded):
    """DNS rebinding: a page under an attacker's name reaching 127.0.0.1 sends that name as Host."""
    for s in (server, guarded):
        status, err = error_of(request(s, "GET", "/v1/models", headers={"Host": "evil.example", **auth()}))
        assert status == 421 and err["code"] == "misdirected_request" and "--allowed-host" in err["message"]
    assert request(guarded, "GET", "/v1/models", headers={"Host": "speech.example:80", **auth()})[0] == 200
    assert request(server, "GET", "/health", headers={"Host": "localhost:1234"})[0] == 200


def test_json_routes_take_application_json_only(server):
    """A cross-site page can POST text/plain without a preflight; the JSON routes refuse it."""
    for path in ("/v1/audio/speech", "/v1/chat/completions"):
        status, err = error_of(request(server, "POST", path, SPEECH, {"Content-Type": "text/plain"}))
        assert status == 415 and err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    status, _, body = request(server, "POST", "/v1/audio/speech", SPEECH, {"Content-Type": "application/json"})
    assert status == 200 and len(body) > 0


def test_the_api_key_guards_every_v1_route_and_not_health(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, _, body = request(guarded, "GET", "/v1/models", headers=headers)
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, headers, _ = request(guarded, "POST", "/v1/audio/speech", SPEECH, {"Content-Type": "application/json"})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, body = request(guarded, "POST", "/v1/audio/speech", SPEECH, auth(**{"Content-Type": "application/json"}))
    assert status == 200 and len(body) > 0
    assert request(guarded, "GET", "/health")[0] == 200


def test_cors_headers_only_for_the_given_origins(server, guarded):
    origin = {"Origin": "http://app.example"}
    status, headers, _ = request(guarded, "GET", "/v1/models", headers=auth(**origin))
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://app.example"
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    status, headers, _ = request(guarded, "OPTIONS", "/v1/audio/speech", headers=preflight)
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
    streamed = json.dumps({"input": "[S1] Hi.", "stream_format": "sse", "max_tokens": 20, "seed": 0}).encode()
    status, headers, _ = request(
        guarded, "POST", "/v1/audio/speech", streamed, auth(**origin, **{"Content-Type": "application/json"})
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://app.example"  # streamed too
    other = request(guarded, "GET", "/v1/models", headers=auth(Origin="http://evil.example"))[1]
    assert "Access-Control-Allow-Origin" not in other
    assert "Access-Control-Allow-Origin" not in request(server, "GET", "/v1/models", headers=origin)[1]


def test_the_python_only_audio_part_is_refused_over_http(server, clip):
    """{"type": "audio", "audio": "clip.wav"} would read a path the media policy never saw."""
    body = {"messages": [{"role": "user", "content": [{"type": "audio", "audio": str(clip)}]}], "max_tokens": 2}
    status, err = error_of(post(server, "/v1/chat/completions", body))
    assert status == 400 and "Python API" in err["message"] and err["param"] == "messages[0].content[0]"
