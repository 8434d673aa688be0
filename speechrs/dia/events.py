"""What a Dia request takes and what it yields: the options, and the events of pipeline.py and of the modules it
imports (streaming.py, script.py, tempo.py), which take them from here rather than from the pipeline.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechrs.errors import InvalidRequestError

MIN_SPEED, MAX_SPEED = 0.25, 4.0  # speak's speed: a time stretch beyond these sounds broken


@dataclass(frozen=True)
class SpeakOptions:
    """A request's options as a client gives them; None means the generation's default (pipeline.DEFAULTS)."""

    max_tokens: int | None = None  # decoder steps, EOS countdown included; None: the config's audio_length
    temperature: float | None = None  # 0 is greedy; None: the generation's default (DEFAULTS)
    top_p: float | None = None
    top_k: int | None = None  # cfg_filter_top_k
    cfg_scale: float | None = None
    seed: int | None = None  # None draws a fresh seed
    # -14 LUFS then tanh (mistral.rs); False: the DAC output with descript's tanh. None: True for a whole clip,
    # False for streamed audio (integrated loudness needs the whole clip, so streamed audio cannot have it)
    normalize: bool | None = None
    speed: float | None = None  # 0.25-4.0: a pitch-preserving time stretch of the audio (tempo.py); None: 1

    def check(self, max_steps: int | None = None, min_steps: int = 1, vocab: int | None = None) -> None:
        """The ranges of the values given (None is a default, always valid): what any front door checks before the
        model loads; the pipeline adds its config's bounds (max_steps, min_steps, vocab)."""
        low, high = min_steps, max_steps
        if self.max_tokens is not None and not (low <= self.max_tokens and (high is None or self.max_tokens <= high)):
            bound = f"[{low}, {high}]" if high is not None else f">= {low}"
            raise InvalidRequestError(f"max_tokens must be {'in ' if high else ''}{bound}, got {self.max_tokens}")
        if self.temperature is not None and not 0 <= self.temperature <= 10:
            raise InvalidRequestError(f"temperature must be in [0, 10], got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and not (self.top_k >= 1 and (vocab is None or self.top_k <= vocab)):
            raise InvalidRequestError(f"top_k must be in [1, {vocab or 'the vocabulary'}], got {self.top_k}")
        if self.cfg_scale is not None and not 1 <= self.cfg_scale <= 100:  # far beyond 3 the logits overflow
            raise InvalidRequestError(f"cfg_scale must be in [1, 100], got {self.cfg_scale}")
        if self.speed is not None and not MIN_SPEED <= self.speed <= MAX_SPEED:
            raise InvalidRequestError(f"speed must be in [{MIN_SPEED}, {MAX_SPEED}], got {self.speed:g}", "speed")


@dataclass(frozen=True)
class SpeakSettings:
    """SpeakOptions with every default filled in and every range checked (DiaPipeline.options)."""

    temperature: float
    top_p: float
    top_k: int
    cfg_scale: float
    normalize: bool
    max_tokens: int | None = None  # None: all the rows the config has room for after the reference
    seed: int | None = None
    speed: float = 1.0


@dataclass
class Step:
    step: int  # decoder steps done (in this piece)
    max_steps: int  # upper bound, for a progress bar
    frames: int = 0  # complete audio frames (512 samples each) so far: all 9 channels known
    piece: int = 0  # which piece of a long script (script.py) this step belongs to
    pieces: int = 1


@dataclass
class SpeechSegment:
    """One piece of the script and where it lies in the audio (seconds): a caption (subtitles.srt / .vtt)."""

    id: int
    start: float
    end: float
    text: str


@dataclass
class AudioChunk:
    """The next samples of a streamed clip (speak(..., stream_audio=True)): float32 mono, in order."""

    pcm: np.ndarray
    sample_rate: int


@dataclass
class SpeechResult:
    pcm: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    codes: np.ndarray  # (T, C) undelayed codes, int64
    channels: int = 1
    timings: dict = field(default_factory=dict)  # steps, text_tokens (with a reference's transcript), decode_s, dac_s
    segments: list[SpeechSegment] = field(default_factory=list)  # the pieces of the script with their times

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate

    def save(self, path) -> None:
        from speechrs.audio.decode import write_wav

        write_wav(Path(path), self.pcm, self.sample_rate)
