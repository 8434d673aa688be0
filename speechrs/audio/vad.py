"""Where the speech is: silero-vad's speech probabilities, and a streaming splitter that packs the speech into
segments of at most 30 s (one Voxtral encoder chunk), cutting only in pauses where there are any.

silero-vad (MIT, its wheel ships the weights: nothing downloads) scores each 32 ms frame (512 samples at 16 kHz)
with a small recurrent network (silero.py runs it in plain torch). Its Python package is not imported: importing
it sets torch to one thread (`silero_vad/model.py`), which would slow every model in the process.
"""

import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from speechrs.audio.silero import CONTEXT, SileroVAD, weights_path

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME = 512  # samples per VAD frame at 16 kHz: 32 ms
FRAME_S = FRAME / SAMPLE_RATE


class VoiceActivity:
    """Speech probability per 32 ms frame of 16 kHz audio fed in blocks of any size. One per request: it holds the
    recurrent state and the last samples; the network (silero.py) is shared, loaded once per process."""

    _lock = threading.Lock()
    _model: SileroVAD | None = None

    def __init__(self) -> None:
        with self._lock:
            if VoiceActivity._model is None:
                VoiceActivity._model = _load_model()
            self.model = VoiceActivity._model
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.history = np.zeros(CONTEXT, np.float32)  # the CONTEXT samples before the next frame
        self.rest = np.zeros(0, np.float32)  # samples short of a whole frame, kept for the next block

    @torch.inference_mode()
    def push(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        """Probabilities of the whole frames now available; with last=True a final partial frame is zero-padded."""
        pcm = np.concatenate([self.rest, pcm])
        n = len(pcm) // FRAME
        if last and len(pcm) % FRAME:
            pcm = np.pad(pcm, (0, FRAME - len(pcm) % FRAME))
            n += 1
        self.rest = pcm[n * FRAME :]
        if n == 0:
            return np.zeros(0, np.float32)
        samples = np.concatenate([self.history, pcm[: n * FRAME]])
        self.history = samples[len(samples) - CONTEXT :]
        windows = torch.from_numpy(np.ascontiguousarray(samples)).unfold(0, CONTEXT + FRAME, FRAME)  # (n, 576)
        features = self.model.features(windows)  # the convolutions of every frame at once
        probs = np.empty(n, np.float32)
        for k in range(n):  # only the recurrent cell goes frame by frame
            probs[k], self.state = self.model.step(features[k : k + 1], self.state)
        return probs


def _load_model() -> SileroVAD:
    """silero's own weights, read from its TorchScript file (the model the package runs by default; matched to
    1e-5 by tests/test_transcripts.py); if this torch can no longer load TorchScript, the safetensors weights the
    wheel also ships (another release of the same network: 99% of frames agree on speech or not, measured)."""
    try:
        with warnings.catch_warnings():  # torch 2.13 calls jit.load deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(weights_path().with_name("silero_vad.jit")), map_location="cpu")
        return SileroVAD.from_scripted(scripted._model.state_dict())
    except (AttributeError, RuntimeError, OSError) as e:
        log.warning("silero's TorchScript model did not load (%s); using its safetensors weights", e)
        return SileroVAD.load()


@dataclass(frozen=True)
class SplitOptions:
    max_segment_s: float = 30.0  # one encoder chunk: a segment costs one chunk of encoder work however short
    threshold: float = 0.5  # speech starts at this probability (silero's default)
    neg_threshold: float = 0.35  # and ends when it falls below this (silero's threshold - 0.15)
    min_silence_s: float = 0.1  # a pause shorter than this does not end a speech region
    min_speech_s: float = 0.25  # speech regions shorter than this are dropped (clicks, breaths)
    pad_s: float = 0.2  # kept around the speech so word edges are not cut


@dataclass
class SpeechSegment:
    start_s: float
    end_s: float
    pcm: np.ndarray  # 16 kHz mono, start_s to end_s of the original audio
    no_speech_prob: float  # 1 - the highest speech probability inside

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class Splitter:
    """Frames' probabilities in, speech regions out, packed greedily into segments of at most max_segment_s.

    A segment closes when the next region would not fit, at the latest pause at least half as long as the longest
    among those that leave a quarter segment before them (any pause if none does), so its ends fall in pauses, long
    ones where there are any; a single region longer than
    the maximum is cut at its least speech-like frame in the last quarter of the allowed span. Works on a stream:
    only the frames since the current segment began are kept."""

    def __init__(self, opts: SplitOptions):
        self.o = opts
        self.max_frames = int((opts.max_segment_s - 2 * opts.pad_s) / FRAME_S)
        self.min_silence = max(1, round(opts.min_silence_s / FRAME_S))
        self.min_speech = round(opts.min_speech_s / FRAME_S)
        self.probs: list[float] = []  # every frame seen; small (31 per second)
        self.in_speech = False
        self.region_start = 0
        self.silence_start: int | None = None
        self.segment: list[tuple[int, int]] = []  # the current segment's finished regions [start, end) in frames
        self.done: list[tuple[int, int]] = []  # closed segments (first region start, last region end) in frames

    def push(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """Feed frames; returns the segments closed by them, as (start, end) frames."""
        for p in probs.tolist():
            i = len(self.probs)
            self.probs.append(p)
            if not self.in_speech:
                if p >= self.o.threshold:
                    self.in_speech, self.region_start, self.silence_start = True, i, None
                continue
            if p < self.o.neg_threshold:
                self.silence_start = i if self.silence_start is None else self.silence_start
                if i + 1 - self.silence_start >= self.min_silence:
                    self._end_region(self.silence_start)
            else:
                self.silence_start = None
                self._fit(i + 1)
        out, self.done = self.done, []
        return out

    def finish(self) -> list[tuple[int, int]]:
        if self.in_speech:
            self._end_region(self.silence_start if self.silence_start is not None else len(self.probs))
        if self.segment:
            self._close()
        out, self.done = self.done, []
        return out

    def _fit(self, end: int) -> None:
        """The ongoing region now reaches `end`: close the segment before it, or cut the region, if too long."""
        first = self.segment[0][0] if self.segment else self.region_start
        if end - first <= self.max_frames:
            return
        while self.segment:  # close at a long pause that leaves at least a quarter segment before it
            regions = [*self.segment, (self.region_start, end)]
            gaps = range(len(regions) - 1)
            long_enough = [i for i in gaps if regions[i][1] - regions[0][0] >= self.max_frames // 4] or list(gaps)
            gap = [regions[i + 1][0] - regions[i][1] for i in gaps]
            longest = max(gap[i] for i in long_enough)
            cut = max(i for i in long_enough if 2 * gap[i] >= longest)  # the latest of the long pauses
            self.segment, rest = self.segment[: cut + 1], self.segment[cut + 1 :]
            self._close()
            self.segment = rest
            if end - (rest[0][0] if rest else self.region_start) <= self.max_frames:
                return
        # one region longer than a segment: cut where speech is least likely, late in the span
        lo, hi = self.region_start + 3 * self.max_frames // 4, self.region_start + self.max_frames
        cut = lo + int(np.argmin(self.probs[lo:hi]))
        self.segment.append((self.region_start, cut))
        self._close()
        self.region_start = cut

    def _end_region(self, end: int) -> None:
        self.in_speech = False
        self._fit(end)
        if end - self.region_start >= self.min_speech:
            self.segment.append((self.region_start, end))

    def _close(self) -> None:
        self.done.append((self.segment[0][0], self.segment[-1][1]))
        self.segment = []


def split_speech(
    blocks: Iterator[np.ndarray], opts: SplitOptions = SplitOptions(), vad: VoiceActivity | None = None
) -> Iterator[SpeechSegment | float]:
    """16 kHz blocks in order -> the speech segments as they close, and after each block the seconds of audio read
    so far (a float, for progress). Holds only the audio since the oldest open segment could begin."""
    vad = vad or VoiceActivity()
    splitter = Splitter(opts)
    pad = round(opts.pad_s * SAMPLE_RATE)
    buf, buf_start, total = np.zeros(0, np.float32), 0, 0  # buf holds samples [buf_start, total)
    last_end = 0  # samples: a segment's padding never reaches back into the previous one

    def emit(closed: list[tuple[int, int]]) -> Iterator[SpeechSegment]:
        nonlocal last_end
        for first, last in closed:
            start, end = max(first * FRAME - pad, last_end), min(last * FRAME + pad, total)
            last_end = end
            no_speech = 1.0 - max(splitter.probs[first:last], default=0.0)
            pcm = buf[start - buf_start : end - buf_start]
            yield SpeechSegment(start / SAMPLE_RATE, end / SAMPLE_RATE, pcm, no_speech)

    pending = next(blocks, None)
    while pending is not None:
        block, pending = pending, next(blocks, None)
        buf, total = np.concatenate([buf, block]), total + len(block)
        new = vad.push(block, last=pending is None)
        closed = splitter.push(new) + (splitter.finish() if pending is None else [])
        yield from emit(closed)
        keep = _keep_from(splitter, total, pad, last_end)
        if keep > buf_start:
            buf, buf_start = buf[keep - buf_start :], keep
        yield total / SAMPLE_RATE


def _keep_from(splitter: Splitter, total: int, pad: int, last_end: int) -> int:
    """The first sample any segment still to close may include."""
    if splitter.segment:
        frame = splitter.segment[0][0]
    elif splitter.in_speech:
        frame = splitter.region_start
    else:  # in silence: the next region starts at the next frame or later
        frame = len(splitter.probs)
    return max(last_end, min(frame * FRAME - pad, total))
