"""Named voices (speechrs/dia/voice_store.py): saved once, encoded once, the same speech as passing the clip itself,
from the Python API, the CLI and the server; damaged or unknown voices are clear errors."""

import json

import numpy as np
import pytest
from http_server import Server, error_of, post, request
from test_cli import invoke

import speechrs
from speechrs.dia.voice_store import VoiceStore
from speechrs.errors import AudioError, InvalidRequestError

TRANSCRIPT = "[S1] What the clip says."
LINE = "[S1] Now in that voice."
OPTS = {"seed": 4, "max_tokens": 40}


@pytest.fixture()
def clip(clip, tmp_path):
    """The test clip's first 1.5 s: the tiny Dia has room for 3 s of reference and speech together."""
    import soundfile as sf

    pcm, rate = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "voice.wav", pcm[: int(1.5 * rate)], rate)
    return tmp_path / "voice.wav"


@pytest.fixture()
def tts(dia_dirs, dac_dirs, tmp_path):
    return speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0]), voices_dir=tmp_path / "voices")


def test_a_named_voice_speaks_as_its_clip_and_is_encoded_once(tts, clip, monkeypatch):
    voice = tts.voices.add("narrator", str(clip), TRANSCRIPT)
    assert voice.seconds == pytest.approx(1.5, abs=0.01) and [v.name for v in tts.voices.list()] == ["narrator"]
    named = tts.speak(LINE, voice="narrator", **OPTS)
    direct = tts.speak(LINE, ref_audio=str(clip), ref_text=TRANSCRIPT, **OPTS)
    assert np.array_equal(named.pcm, direct.pcm) and np.array_equal(named.codes, direct.codes)
    assert (voice.directory / "codes.npz").is_file()

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached codes should have been used")

    monkeypatch.setattr("speechrs.dia.voices.encode_reference", no_encoding)
    again = tts.speak(LINE, voice="narrator", **OPTS)  # from the codes on disk
    assert np.array_equal(again.pcm, named.pcm)
    with pytest.raises(InvalidRequestError, match="either a named voice or ref_audio"):
        tts.speak(LINE, voice="narrator", ref_audio=str(clip), ref_text=TRANSCRIPT)


def test_store_errors_are_clear(tmp_path, clip):
    store = VoiceStore(tmp_path)
    with pytest.raises(InvalidRequestError, match="no voice named 'ghost'; the voices are: none yet"):
        store.get("ghost")
    with pytest.raises(InvalidRequestError, match="must be 1-64 letters"):
        store.add("../escape", str(clip), TRANSCRIPT)
    with pytest.raises(InvalidRequestError, match="transcript"):
        store.add("quiet", str(clip), "  ")
    with pytest.raises(AudioError, match="0.5-20 s"):
        store.add("short", (np.zeros(1000, np.float32), 44100), TRANSCRIPT)
    store.add("a", str(clip), TRANSCRIPT)
    (tmp_path / "a" / "voice.json").write_text("{not json")
    with pytest.raises(AudioError, match="voice 'a' is damaged"):
        store.get("a")
    assert store.list() == [] and store.names() == ["a"]  # listed as a name, skipped as a voice
    store.remove("a")
    assert store.names() == []


def test_server_voice_field_and_voices_route(engine, clip, tmp_path, tts):
    from speechrs.server.app import make_app

    tts.voices.add("narrator", str(clip), TRANSCRIPT)
    server = Server(make_app(engine, voices_dir=tts.voices.directory))
    try:
        status, _, body = request(server, "GET", "/v1/audio/voices")
        listed = json.loads(body)["data"]
        assert status == 200 and [(v["name"], v["text"]) for v in listed] == [("narrator", TRANSCRIPT)]
        base = {"input": LINE, "response_format": "pcm", **OPTS}
        status, _, named = post(server, "/v1/audio/speech", {**base, "voice": "narrator"})
        assert status == 200
        expected = tts.speak(LINE, voice="narrator", normalize=True, **OPTS)
        from speechrs.audio.decode import to_s16le

        assert named == to_s16le(expected.pcm)
        _, _, alloy = post(server, "/v1/audio/speech", {**base, "voice": "alloy"})  # OpenAI's name: Dia's own voice
        _, _, plain = post(server, "/v1/audio/speech", base)
        assert alloy == plain != named
        status, err = error_of(post(server, "/v1/audio/speech", {**base, "voice": "ghost"}))
        assert status == 400 and err["param"] == "voice" and "narrator" in err["message"]
        (tts.voices.directory / "narrator" / "voice.json").write_text("[]")  # damaged on disk: a 400, not a crash
        status, err = error_of(post(server, "/v1/audio/speech", {**base, "voice": "narrator"}))
        assert status == 400 and "damaged" in err["message"]
        assert request(server, "GET", "/health")[0] == 200
    finally:
        server.close()


def test_cli_voices_add_list_speak_remove(dia_dirs, dac_dirs, clip, tmp_path):
    voices = tmp_path / "v"
    added = invoke("voices", "add", "host", clip, "--text", TRANSCRIPT, "--voices-dir", voices)
    assert added.exit_code == 0 and "added voice 'host'" in added.stderr
    listed = invoke("voices", "list", "--voices-dir", voices)
    assert listed.stdout.startswith("host\t1.5 s\t[S1] What the clip says.")
    out = tmp_path / "line.wav"
    args = [LINE, "-m", dia_dirs[0], "--dac", dac_dirs[0], "--seed", "4", "--max-tokens", "40", "-q"]
    spoken = invoke("speak", *args, "--voice", "host", "--voices-dir", voices, "-o", out)
    assert spoken.exit_code == 0, spoken.stderr
    direct = tmp_path / "direct.wav"
    assert invoke("speak", *args, "--ref-audio", clip, "--ref-text", TRANSCRIPT, "-o", direct).exit_code == 0
    assert out.read_bytes() == direct.read_bytes()
    missing = invoke("speak", *args, "--voice", "nobody", "--voices-dir", voices, "-o", out)
    assert missing.exit_code == 1 and "no voice named 'nobody'; the voices are: host" in missing.stderr
    assert invoke("voices", "remove", "host", "--voices-dir", voices).exit_code == 0
    assert invoke("voices", "list", "--voices-dir", voices).stdout == ""
