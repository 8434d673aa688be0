"""Audio in and out: decode any common container, downmix, resample, and Voxtral's log-mel front end.

The log-mel matches transformers' WhisperFeatureExtractor (torch path) as VoxtralProcessor drives it:
pad to a multiple of 30 s, periodic Hann STFT n_fft 400 hop 160, last frame dropped, power spectrum,
Slaney mel 0-8 kHz, log10 clamped at 1e-10, floor at (max over the whole clip) - 8, then (x + 4) / 4.
"""

import base64
import binascii
import io
import struct
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechrs.errors import AudioError, AudioTooLongError

AudioInput = str | Path | bytes | tuple[np.ndarray, int]  # path, file:// or data: URL, encoded bytes, (pcm, rate)


def data_url_bytes(url: str) -> bytes:
    """The payload of a base64 data: URL (data:audio/wav;base64,...)."""
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise AudioError("data: URLs must be base64-encoded (data:audio/wav;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioError(f"invalid base64 in data: URL: {e}") from None


def file_url_path(url: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def _bytes_from_url(url: str) -> bytes:
    if url.startswith("data:"):
        return data_url_bytes(url)
    if url.startswith("file://"):
        return _read_path(file_url_path(url))
    raise AudioError(f"unsupported audio URL scheme in '{url[:40]}'; use a path, file:// or data: URL")


def _read_path(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except OSError as e:
        raise AudioError(f"cannot read audio file {path}: {e.strerror}") from None


def decode(data: bytes, name: str = "audio") -> tuple[np.ndarray, int]:
    """Encoded bytes (wav, flac, ogg, mp3, ...) -> (float32 mono samples, sample rate)."""
    if not data:
        raise AudioError(f"{name} is empty")
    try:
        pcm, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:  # its message names the BytesIO by repr: give libsndfile's reason alone
        raise AudioError(f"cannot decode {name}: not a readable wav/flac/ogg/mp3 file ({e.error_string})") from None
    except (RuntimeError, TypeError, ValueError):
        raise AudioError(f"cannot decode {name}: not a readable wav/flac/ogg/mp3 file") from None
    if pcm.shape[0] == 0:
        raise AudioError(f"{name} contains no samples")
    return pcm.mean(axis=1).astype(np.float32), int(rate)  # downmix: average channels


MIN_SAMPLE_RATE = 1000  # below this a "sample rate" is a malformed header, and resampling it up costs gigabytes


def load(audio: AudioInput, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Any AudioInput -> float32 mono at `sample_rate`. Audio longer than max_seconds is refused from its
    decoded length, before it is resampled (a WAV header claiming 1 Hz would otherwise be resampled 16000x)."""
    if isinstance(audio, tuple):
        pcm, rate = audio
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim == 2:  # (samples, channels)
            pcm = pcm.mean(axis=1)
        if pcm.size == 0:
            raise AudioError("audio array is empty")
    elif isinstance(audio, bytes):
        pcm, rate = decode(audio)
    else:
        text = str(audio)
        if text.startswith("data:") or "://" in text:
            pcm, rate = decode(_bytes_from_url(text), name=text[:40])
        else:
            pcm, rate = decode(_read_path(Path(text)), name=text)
    _check_rate_and_length(rate, len(pcm), max_seconds)
    if not np.isfinite(pcm).all():
        raise AudioError("audio contains NaN or infinite samples")
    return resample(pcm, rate, sample_rate)


def _check_rate_and_length(rate: int, n_samples: int, max_seconds: float | None) -> None:
    if not MIN_SAMPLE_RATE <= rate <= 1_000_000:
        raise AudioError(f"audio sample rate {rate} Hz is not usable; expected {MIN_SAMPLE_RATE} Hz to 1 MHz")
    if max_seconds is not None and n_samples / rate > max_seconds:
        seconds = n_samples / rate
        raise AudioTooLongError(f"audio is {seconds:.1f} s long; at most {max_seconds:g} s is accepted here", seconds)


BLOCK_SECONDS = 30.0  # AudioStream decodes this much of the source at a time


@dataclass
class AudioStream:
    """Audio of any length, decoded `BLOCK_SECONDS` at a time: mono float32 blocks at `sample_rate`, so an hour of
    44.1 kHz stereo is never held decoded at once. Opening it reads the header only (length, rate, format), so
    unreadable or too long audio is refused before any work."""

    source: AudioInput
    sample_rate: int  # of the blocks
    source_rate: int
    source_frames: int

    @property
    def duration_s(self) -> float:
        return self.source_frames / self.source_rate

    def blocks(self) -> Iterator[np.ndarray]:
        import soxr

        resampler = (
            None
            if self.source_rate == self.sample_rate
            else soxr.ResampleStream(self.source_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        )  # the same samples as resample() on the whole (soxr streams seamlessly)
        step = int(BLOCK_SECONDS * self.source_rate)
        for raw, last in _raw_blocks(self.source, step):
            if not np.isfinite(raw).all():
                raise AudioError("audio contains NaN or infinite samples")
            out = raw if resampler is None else resampler.resample_chunk(raw, last=last)
            if len(out):
                yield out.astype(np.float32, copy=False)


def open_stream(audio: AudioInput, sample_rate: int, max_seconds: float | None = None) -> AudioStream:
    """An AudioStream over any AudioInput; URLs are read here (data: and file:// only, as load() reads them)."""
    if isinstance(audio, tuple):
        pcm = np.asarray(audio[0], dtype=np.float32)
        pcm = pcm.mean(axis=1) if pcm.ndim == 2 else pcm
        if pcm.size == 0:
            raise AudioError("audio array is empty")
        source: AudioInput = (pcm, int(audio[1]))
        rate, frames = int(audio[1]), len(pcm)
    else:
        text = "" if isinstance(audio, bytes) else str(audio)
        name = text[:40] if text else "audio"
        if text.startswith("data:") or "://" in text:
            audio = _bytes_from_url(text)
        elif not isinstance(audio, bytes) and not Path(text).is_file():
            raise AudioError(f"audio file not found: {text}")
        if (len(audio) if isinstance(audio, bytes) else Path(text).stat().st_size) == 0:
            raise AudioError(f"{name} is empty")
        source = audio
        try:
            info = sf.info(io.BytesIO(audio) if isinstance(audio, bytes) else str(audio))
        except sf.LibsndfileError as e:  # as decode() says it: libsndfile's reason, not a repr
            raise AudioError(f"cannot decode {name}: not a readable wav/flac/ogg/mp3 file ({e.error_string})") from None
        except (RuntimeError, TypeError, ValueError):
            raise AudioError(f"cannot decode {name}: not a readable wav/flac/ogg/mp3 file") from None
        rate, frames = int(info.samplerate), int(info.frames)
        if frames <= 0:
            raise AudioError("audio contains no samples")
    _check_rate_and_length(rate, frames, max_seconds)
    return AudioStream(source, sample_rate, rate, frames)


def _raw_blocks(source: AudioInput, step: int) -> Iterator[tuple[np.ndarray, bool]]:
    """(mono float32 block at the source's rate, whether it is the last)."""
    if isinstance(source, tuple):
        pcm = source[0]
        for start in range(0, len(pcm), step):
            yield pcm[start : start + step], start + step >= len(pcm)
        return
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as f:
            block = f.read(step, dtype="float32", always_2d=True)
            while len(block):
                following = f.read(step, dtype="float32", always_2d=True)
                yield block.mean(axis=1), len(following) == 0
                block = following
    except sf.LibsndfileError as e:
        raise AudioError(f"cannot decode audio past its header ({e.error_string})") from None


def resample(pcm: np.ndarray, rate: int, target: int) -> np.ndarray:
    """soxr "HQ", as mistral-common and transformers resample (and librosa's soxr_hq)."""
    if rate == target:
        return pcm
    import soxr

    return soxr.resample(pcm, rate, target, quality="HQ").astype(np.float32)


def pad_to_multiple(pcm: np.ndarray, multiple: int) -> np.ndarray:
    n = -(-len(pcm) // multiple) * multiple
    return np.pad(pcm, (0, n - len(pcm)))


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (librosa htk=False)."""
    mel = f / (200.0 / 3)
    log_region = f >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    hz = m * (200.0 / 3)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), hz)


@lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_max: float = 8000.0) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filterbank (n_mels, n_fft/2+1), 0 Hz to 8 kHz, as Whisper uses.

    The recipe of librosa.filters.mel(sr, n_fft, n_mels, fmax=8000, htk=False, norm="slaney"), in numpy:
    librosa's own takes most of a second to import and compile."""
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(f_max)), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]  # Slaney: equal area per filter
    return torch.from_numpy(weights).float()


def log_mel(
    pcm: np.ndarray, n_mels: int = 128, n_fft: int = 400, hop: int = 160, sample_rate: int = 16000
) -> torch.Tensor:
    """float32 samples -> log-mel (n_mels, len // hop); the floor uses the max of the whole clip."""
    wave = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))
    stft = torch.stft(wave, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()  # (n_fft/2+1, frames); last frame dropped
    mel = mel_filters(sample_rate, n_fft, n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def to_s16le(pcm: np.ndarray) -> bytes:
    """Raw 16-bit little-endian PCM: clamp to [-1, 1], scale by 32767 (mistral.rs)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def wav_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM RIFF/WAV, mono."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(pcm, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono WAV whose length is not known yet: RIFF and data sizes 0xFFFFFFFF,
    as streaming servers write it; players read the samples to the end of the stream."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        sample_rate,
        2 * sample_rate,
        2,
        16,
        b"data",
        0xFFFFFFFF,
    )


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int) -> None:
    Path(path).write_bytes(wav_bytes(pcm, sample_rate))
