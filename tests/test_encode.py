"""OpenAI's compressed speech formats through PyAV (speechrs/audio/encode.py): the right codec, the right length and
pitch, and no decoded sample past full scale however hot the input."""

import numpy as np
import pytest

from speechrs.audio.encode import _encode, decode, decoded_peak, encode, speech_bytes
from speechrs.errors import InvalidRequestError

RATE = 44100
CODECS = {"mp3": "mp3float", "opus": "opus", "aac": "aac", "flac": "flac"}


def tone(seconds=1.5, hz=440.0, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


@pytest.mark.parametrize("fmt", list(CODECS))
def test_each_format_decodes_to_the_same_tone(fmt):
    data, content_type = speech_bytes(tone(), RATE, fmt)
    pcm, rate, codec = decode(data)
    assert codec == CODECS[fmt] and content_type.startswith("audio/")
    assert rate == (48000 if fmt == "opus" else RATE)
    assert len(pcm) / rate == pytest.approx(1.5, abs=0.06)  # codecs add priming
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    assert np.argmax(spectrum) * rate / len(pcm) == pytest.approx(440.0, abs=2.0)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac"])
def test_lossy_files_never_decode_past_full_scale(fmt):
    square = np.sign(np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)).astype(np.float32)
    hot = np.tanh(4 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32)
    for signal in (square, hot):
        assert decoded_peak(_encode(signal, RATE, fmt)) > 1.05  # uncorrected, each codec overshoots (1.2-3.2)
        assert decoded_peak(encode(signal, RATE, fmt)) <= 1.0
    quiet = tone()
    # nothing to correct: encoded once, at full gain (samples compared: Ogg's stream serial number is random)
    assert np.array_equal(decode(encode(quiet, RATE, fmt))[0], decode(_encode(quiet, RATE, fmt))[0])


@pytest.mark.parametrize("fmt", list(CODECS))
def test_an_empty_clip_is_an_empty_file(fmt):
    data = encode(np.zeros(0, np.float32), RATE, fmt)  # no error: a request whose speech ended at once
    if fmt == "flac":  # a header with no frames; the lossy muxers write nothing without a packet
        assert len(decode(data)[0]) == 0
    else:
        assert data == b""


def test_unknown_format():
    with pytest.raises(InvalidRequestError, match="cannot encode 'ogg'"):
        encode(tone(), RATE, "ogg")


def test_cli_speak_writes_the_format_of_its_suffix(dia_dirs, dac_dirs, tmp_path):
    from test_cli import invoke

    args = ["[S1] Hello there.", "-m", dia_dirs[0], "--dac", dac_dirs[0], "--seed", "1", "--max-tokens", "60"]
    for name, codec in (("out.mp3", "mp3float"), ("out.ogg", "opus"), ("out.aac", "aac"), ("out.flac", "flac")):
        result = invoke("speak", *args, "-o", tmp_path / name)
        assert result.exit_code == 0, result.stderr
        assert decode((tmp_path / name).read_bytes())[2] == codec
    streamed = invoke("speak", *args, "--stream", "-o", tmp_path / "s.mp3")
    assert streamed.exit_code == 1 and "--stream writes wav or pcm" in streamed.stderr
