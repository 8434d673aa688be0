import base64
import io

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import noise

from speechrs.audio import decode as audio_io
from speechrs.errors import AudioError


def _wav_bytes(pcm: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_every_input_kind_decodes_to_the_same_samples(clip):
    data = clip.read_bytes()
    ref = audio_io.load(str(clip), 16000)
    pcm, rate = sf.read(str(clip), dtype="float32")
    for source in (
        clip,
        f"file://{clip}",
        "data:audio/wav;base64," + base64.b64encode(data).decode(),
        data,
        (pcm, rate),
    ):
        np.testing.assert_array_equal(audio_io.load(source, 16000), ref)


def test_stereo_is_averaged_and_resampled_to_16k():
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t + 0.3)
    stereo = np.stack([left, right], axis=1).astype(np.float32) * 0.5
    out = audio_io.load(_wav_bytes(stereo, 44100, subtype="FLOAT"), 16000)
    assert abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 2  # the tone survives resampling


@pytest.mark.parametrize("fmt,subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_compressed_containers_decode(fmt, subtype):
    pcm = noise(1.0, 16000)
    out = audio_io.load(_wav_bytes(pcm, 16000, fmt, subtype), 16000)
    assert abs(len(out) - 16000) < 2000 and out.dtype == np.float32


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"RIFF\x00\x00garbage-not-audio", "cannot decode"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "cannot decode"),
    ],
)
def test_bad_bytes_give_a_clear_error(data, match):
    with pytest.raises(AudioError, match=match):
        audio_io.load(data, 16000)


def test_missing_file_and_bad_urls_give_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        audio_io.load(tmp_path / "nope.wav", 16000)
    with pytest.raises(AudioError, match="base64"):
        audio_io.load("data:audio/wav;base64,@@@", 16000)
    with pytest.raises(AudioError, match="scheme"):
        audio_io.load("ftp://example.com/a.wav", 16000)
    with pytest.raises(AudioError, match="empty|no samples|cannot decode"):
        audio_io.load(_wav_bytes(np.zeros(0, np.float32), 16000), 16000)


def test_log_mel_shape_and_range():
    mel = audio_io.log_mel(audio_io.pad_to_multiple(noise(3.0), 480000))
    assert mel.shape == (128, 3000)
    assert float(mel.max() - mel.min()) <= 2.0 + 1e-6  # floor at max - 8 in log10 units, then / 4


def test_wav_round_trip(tmp_path):
    pcm = noise(0.5) * 0.5
    audio_io.write_wav(tmp_path / "x.wav", pcm, 16000)
    back, rate = sf.read(tmp_path / "x.wav", dtype="float32")
    assert rate == 16000 and np.abs(back - pcm).max() < 1 / 32767 + 1e-6


@pytest.mark.reference
def test_mel_matches_transformers_processor_end_to_end(native_pipeline, native_dir, clip):
    """The whole path for a 16 kHz 16-bit file: read, pad to 30 s, mel, chunk; and the [AUDIO] count."""
    from reference import hf_processor

    expected = hf_processor(native_dir / "tekken.json").apply_transcription_request(
        language="en", audio=str(clip), model_id="x"
    )
    mel, n_tokens, _ = native_pipeline._prepare_audio(str(clip))
    assert mel.shape == expected["input_features"].shape == (1, 128, 3000)
    torch.testing.assert_close(mel, expected["input_features"], atol=1e-5, rtol=0)
    assert n_tokens == int((expected["input_ids"] == 24).sum()) == 375


@pytest.mark.reference
def test_mel_of_a_long_clip_matches_whisper_feature_extractor(native_pipeline, native_dir):
    """45 s -> two chunks whose floor uses the max over the whole clip, as VoxtralProcessor computes it.

    (The processor's file path re-encodes resampled audio as 16-bit WAV, so this compares on the same samples.)
    """
    from reference import hf_processor

    pcm = noise(45.0, seed=3)
    pcm[: 16000 * 30] *= 0.01  # a quiet first chunk: its floor must come from the loud second one
    fe = hf_processor(native_dir / "tekken.json").feature_extractor
    feats = fe(
        pcm, sampling_rate=16000, padding=True, truncation=False, pad_to_multiple_of=480000, return_tensors="pt"
    )["input_features"]
    expected = feats.reshape(128, -1, 3000).transpose(0, 1)  # VoxtralProcessor._retrieve_input_features
    mel, n_tokens, _ = native_pipeline._prepare_audio((pcm, 16000))
    assert mel.shape == expected.shape == (2, 128, 3000) and n_tokens == 750
    torch.testing.assert_close(mel, expected, atol=1e-5, rtol=0)


@pytest.mark.reference
def test_resampling_matches_soxr_hq_as_the_references_use_it():
    import soxr

    pcm = noise(2.0, 44100, seed=4)
    np.testing.assert_allclose(
        audio_io.resample(pcm, 44100, 16000), soxr.resample(pcm, 44100, 16000, quality="HQ"), atol=1e-6
    )


def test_mel_filterbank_matches_librosa_slaney():
    import librosa

    ours = audio_io.mel_filters(16000, 400, 128).double().numpy()
    expected = librosa.filters.mel(
        sr=16000, n_fft=400, n_mels=128, fmin=0.0, fmax=8000.0, htk=False, norm="slaney", dtype=np.float64
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)


def test_a_header_claiming_1_hz_is_refused_before_resampling():
    import io

    import soundfile as sf

    from speechrs.audio.decode import load
    from speechrs.errors import AudioError, AudioTooLongError

    buf = io.BytesIO()
    sf.write(buf, np.zeros(9500, dtype=np.float32), 1, format="WAV", subtype="PCM_16")  # 19 KB: "9500 s"
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        load(buf.getvalue(), 16000)
    with pytest.raises(AudioTooLongError, match="at most 60 s") as e:
        load((np.zeros(16000 * 61, dtype=np.float32), 16000), 16000, max_seconds=60)
    assert e.value.seconds == 61
