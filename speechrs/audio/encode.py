"""Compressed speech for OpenAI's formats: mp3, opus, aac and flac, encoded with PyAV (its wheel bundles FFmpeg's
encoders, so nothing is compiled or installed beside it). wav and pcm are written by hand (decode.py).

Lossy codecs overshoot full scale on audio that sits near it, as Dia's tanh-limited, -14 LUFS output does (an
Opus file of it decoded to a peak of 1.4, which a player then clips). So each lossy file is decoded back; while
it peaks above full scale, the input is scaled down by that much (with a margin) and encoded again.
"""

import io

import numpy as np

from speechrs.audio.decode import to_s16le, wav_bytes
from speechrs.errors import InvalidRequestError

# format -> (container, codec, sample rate or None to keep the input's, content type)
FORMATS = {
    "mp3": ("mp3", "libmp3lame", None, "audio/mpeg"),
    "opus": ("ogg", "libopus", 48000, "audio/ogg; codecs=opus"),  # Opus runs at 48 kHz
    "aac": ("adts", "aac", None, "audio/aac"),  # raw AAC frames with ADTS headers, as OpenAI's aac
    "flac": ("flac", "flac", None, "audio/flac"),
}
CONTENT_TYPES = {fmt: spec[3] for fmt, spec in FORMATS.items()}
HEADROOM = 0.98  # the peak a corrected file aims at
MAX_PASSES = 4  # encodes after the first, at most; speech needs one at most, full-scale noise up to three


def encode(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    """float32 mono in [-1, 1] at `rate` Hz -> the file's bytes in `fmt` (mp3, opus, aac, flac)."""
    if fmt not in FORMATS:
        raise InvalidRequestError(f"cannot encode '{fmt}'; use one of {', '.join(FORMATS)}", "response_format")
    pcm = np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0)
    data = _encode(pcm, rate, fmt)
    if fmt == "flac" or len(pcm) == 0:
        return data
    gain = 1.0
    for _ in range(MAX_PASSES):  # a codec's error is not linear in the gain: measure again after each pass
        peak = decoded_peak(data)
        if peak <= 1.0:
            return data
        gain *= HEADROOM / peak
        data = _encode(pcm * gain, rate, fmt)
    return data


def _encode(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    import av

    container_name, codec, out_rate, _ = FORMATS[fmt]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_name) as container:
        stream = container.add_stream(codec, rate=out_rate or rate, layout="mono")
        if fmt == "flac":
            stream.format = "s16"
        # the encoder's own sample format and rate: PyAV's resampler converts (and resamples for Opus)
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        chunks = []
        if len(pcm):  # an empty clip (a request whose speech ended at once) is a valid file with no frames
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="flt", layout="mono")
            frame.sample_rate = rate
            chunks = [*resampler.resample(frame), *resampler.resample(None)]
        for chunk in chunks:
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def decoded_peak(data: bytes) -> float:
    """The largest absolute sample of an encoded file, decoded."""
    pcm = decode(data)[0]
    return float(np.abs(pcm).max()) if pcm.size else 0.0


def decode(data: bytes) -> tuple[np.ndarray, int, str]:
    """Encoded bytes -> (float32 mono samples, sample rate, codec name); for checks and tests."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [_float(f.to_ndarray()).reshape(-1) for f in container.decode(stream)]
        pcm = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        return pcm, stream.rate, stream.codec_context.name


def _float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype.kind == "i":  # FLAC decodes to integers
        return (samples / float(-np.iinfo(samples.dtype).min)).astype(np.float32)
    return samples.astype(np.float32)


def speech_content_type(fmt: str, rate: int) -> str:
    if fmt == "wav":
        return f"audio/wav; rate={rate}; channels=1"
    if fmt == "pcm":
        return f"audio/pcm; codecs=1; format=s16le; rate={rate}; channels=1"
    return CONTENT_TYPES[fmt]


def speech_bytes(pcm: np.ndarray, rate: int, fmt: str) -> tuple[bytes, str]:
    """Encoded audio and its content type; wav and pcm as mistral.rs writes them, the rest by encode()."""
    if fmt == "wav":
        return wav_bytes(pcm, rate), speech_content_type(fmt, rate)
    if fmt == "pcm":
        return to_s16le(pcm), speech_content_type(fmt, rate)
    return encode(pcm, rate, fmt), CONTENT_TYPES[fmt]
