"""Speech speed (OpenAI's `speed`, 0.25-4.0): a pitch-preserving time stretch of the generated audio with librosa's
phase vocoder (`librosa.effects.time_stretch`: STFT n_fft 2048, hop 512). Dia itself has no speed control.

Streamed audio is stretched chunk by chunk: each chunk with CONTEXT samples of the audio before it (the vocoder's
window needs them), the output of that context dropped, and the last SEAM samples of each output held back and
crossfaded with their recomputation from the next chunk, where they are no longer at the edge of the signal.
"""

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from speechrs.dia.events import AudioChunk, SpeechResult

CONTEXT = 8192  # input samples (0.19 s at 44.1 kHz) before each streamed chunk
SEAM = 2048  # output samples crossfaded between two streamed chunks


def stretch(pcm: np.ndarray, speed: float) -> np.ndarray:
    """float32 mono -> the same speech `speed` times as fast (len / speed samples), at the same pitch."""
    if speed == 1.0 or len(pcm) == 0:
        return pcm
    import librosa  # slow to import (docs/architecture.md): only when a speed is asked for

    out = librosa.effects.time_stretch(np.ascontiguousarray(pcm, dtype=np.float32), rate=speed)
    return np.clip(out, -1.0, 1.0).astype(np.float32)  # the vocoder can step over full scale by a little


def warm_up() -> None:
    """librosa's import and its first time stretch (which compiles its kernels on a machine's first use): done
    before a request, where a front door can say so, not unannounced at the end of one."""
    stretch(np.zeros(4 * CONTEXT, np.float32), 2.0)


class StreamStretch:
    def __init__(self, speed: float):
        self.speed = speed
        self.context = np.zeros(0, np.float32)  # the last CONTEXT input samples
        self.held = np.zeros(0, np.float32)  # output not given out yet: it is recomputed with the next chunk

    def push(self, pcm: np.ndarray) -> np.ndarray:
        if len(pcm) == 0:
            return pcm
        out = stretch(np.concatenate([self.context, pcm]), self.speed)
        skip = round(len(self.context) / self.speed)  # what the context became
        n = min(len(self.held), skip, len(out))
        fade = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        seam = self.held[len(self.held) - n :] * (1 - fade) + out[skip - n : skip] * fade
        new = np.concatenate([self.held[: len(self.held) - n], seam, out[skip:]])
        self.context = np.concatenate([self.context, pcm])[-CONTEXT:]
        cut = max(0, len(new) - SEAM)
        self.held = new[cut:]
        return new[:cut]

    def finish(self) -> np.ndarray:
        tail, self.held = self.held, np.zeros(0, np.float32)
        return tail


def with_speed(events: Iterator, speed: float) -> Iterator:
    """A speak request's events at `speed`: streamed chunks stretched as they come, the result's audio stretched
    whole (or the streamed chunks' concatenation, when streamed) and its captions' times scaled."""
    if speed == 1.0:
        yield from events
        return
    streamer, streamed = StreamStretch(speed), []
    for event in events:
        if isinstance(event, AudioChunk):
            streamed.append(streamer.push(event.pcm))
            if len(streamed[-1]):
                yield AudioChunk(streamed[-1], event.sample_rate)
        elif isinstance(event, SpeechResult):
            if streamed:
                streamed.append(streamer.finish())
                if len(streamed[-1]):
                    yield AudioChunk(streamed[-1], event.sample_rate)
                event.pcm = np.concatenate(streamed)
            else:
                event.pcm = stretch(event.pcm, speed)
            event.segments = [replace(s, start=s.start / speed, end=s.end / speed) for s in event.segments]
            if event.segments:  # the stretch rounds the length: the last caption ends with the audio
                event.segments[-1].end = event.duration_s
            event.timings["speed"] = speed
            yield event
        else:
            yield event
