"""Speech speed (speechrs/dia/tempo.py): a pitch-preserving time stretch, whole or streamed, from every front door."""

import numpy as np
import pytest

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.pipeline import AudioChunk, DiaPipeline, SpeakOptions
from speechrs.dia.tempo import StreamStretch, stretch
from speechrs.errors import InvalidRequestError

RATE = 44100


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * RATE / len(pcm))


@pytest.mark.parametrize("speed", [0.5, 2.0, 4.0])
def test_stretch_changes_the_length_and_keeps_the_pitch(speed):
    pcm = tone(2.0)
    out = stretch(pcm, speed)
    assert len(out) / RATE == pytest.approx(2.0 / speed, rel=0.03)
    assert dominant_hz(out) == pytest.approx(440.0, abs=3.0)
    assert np.abs(out).max() <= 1.0


def test_streamed_stretch_matches_the_whole_in_length_and_pitch():
    pcm = tone(3.0)
    s = StreamStretch(2.0)
    pieces = [s.push(pcm[i : i + 8192]) for i in range(0, len(pcm), 8192)] + [s.finish()]
    out = np.concatenate(pieces)
    assert len(out) == pytest.approx(len(stretch(pcm, 2.0)), rel=0.03)
    assert dominant_hz(out) == pytest.approx(440.0, abs=3.0)
    # no seam: the sample-to-sample steps stay those of a 440 Hz sine (no jump where two chunks meet)
    assert np.abs(np.diff(out[4096:-4096])).max() < 2.5 * 2 * np.pi * 440 / RATE * 0.5


@pytest.fixture(scope="module")
def pipeline(dia_dirs, dac):
    return DiaPipeline(load_dia(dia_dirs[0], None), dac)


def test_speak_at_speed_two_halves_the_duration(pipeline):
    base = list(pipeline.speak("[S1] Hello there.", SpeakOptions(max_tokens=120, seed=2)))[-1]
    fast = list(pipeline.speak("[S1] Hello there.", SpeakOptions(max_tokens=120, seed=2, speed=2.0)))[-1]
    assert fast.duration_s == pytest.approx(base.duration_s / 2, rel=0.03)
    assert np.array_equal(fast.codes, base.codes)  # the same speech, only faster
    assert fast.segments[-1].end == fast.duration_s and fast.timings["speed"] == 2.0
    events = list(pipeline.speak("[S1] Hello there.", SpeakOptions(max_tokens=120, seed=2, speed=2.0), True))
    streamed = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    assert len(streamed) / RATE == pytest.approx(fast.duration_s, rel=0.03)
    assert np.array_equal(events[-1].pcm, streamed)
    for bad in (0.2, 4.5):
        with pytest.raises(InvalidRequestError, match=r"speed must be in \[0.25, 4.0\]"):
            pipeline.speak("[S1] Hi.", SpeakOptions(speed=bad))


def test_speed_from_the_server_and_the_cli(server, dia_dirs, dac_dirs, tmp_path):
    import io

    import soundfile as sf
    from http_server import error_of, post
    from test_cli import invoke

    status, err = error_of(post(server, "/v1/audio/speech", {"input": "[S1] Hi.", "speed": 5}))
    assert status == 400 and err["param"] == "speed"
    body = {"input": "[S1] Hello there.", "response_format": "wav", "seed": 2, "max_tokens": 120}
    slow = post(server, "/v1/audio/speech", {**body, "speed": 0.5})
    normal = post(server, "/v1/audio/speech", body)
    ratio = sf.info(io.BytesIO(slow[2])).duration / sf.info(io.BytesIO(normal[2])).duration
    assert ratio == pytest.approx(2.0, rel=0.03)
    out = tmp_path / "fast.wav"
    args = ["[S1] Hello there.", "-m", dia_dirs[0], "--dac", dac_dirs[0], "--seed", "2", "--max-tokens", "120"]
    assert invoke("speak", *args, "--speed", "2", "-o", out, "-q").exit_code == 0
    assert sf.info(str(out)).duration == pytest.approx(sf.info(io.BytesIO(normal[2])).duration / 2, rel=0.03)
