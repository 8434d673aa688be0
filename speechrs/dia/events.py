"""What a Dia request takes and what it yields: the options, and the events of pipeline.py and streaming.py.

Both modules import these from here, so neither imports the other at run time.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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
