"""What a Voxtral request takes (GenerationOptions, Audio parts of a chat) and yields: Token deltas, then Done;
segmented requests (transcript.py) also Progress and each Segment as it ends. Torch-free, so the server's
translation layer and the message parser import it without the model."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from speechrs.errors import InvalidRequestError

if TYPE_CHECKING:
    from speechrs.audio.decode import AudioInput


@dataclass
class Segment:
    """One transcribed piece of the audio, in OpenAI's verbose_json segment shape."""

    id: int
    start: float  # seconds of the original audio
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float  # mean log-probability of the chosen tokens
    compression_ratio: float  # text bytes / zlib-compressed bytes, as Whisper computes it (> 2.4: repetitive)
    no_speech_prob: float  # from the voice-activity detector: 1 - the highest speech probability inside
    temperature: float

    @property
    def seek(self) -> int:
        return round(self.start * 100)  # Whisper's seek: the start in 10 ms mel frames

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "seek": self.seek,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": self.tokens,
            "temperature": self.temperature,
            "avg_logprob": self.avg_logprob,
            "compression_ratio": self.compression_ratio,
            "no_speech_prob": self.no_speech_prob,
        }


@dataclass
class Progress:
    """Seconds of audio read (and split) so far, of the total; before the first segment and after each block."""

    done_s: float
    total_s: float


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    encode_s: float = 0.0  # mel + audio encoder + adapter
    prefill_s: float = 0.0
    decode_s: float = 0.0  # every step after the first token

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Token:
    id: int  # -1 for the final flush of an incomplete UTF-8 sequence
    text: str  # delta; may be "" while a UTF-8 character is incomplete


@dataclass
class Done:
    text: str
    finish_reason: str  # "stop" at </s>, "length" at max_tokens
    usage: Usage = field(default_factory=Usage)
    tokens: list[int] = field(default_factory=list)  # the generated ids, </s> excluded
    avg_logprob: float = 0.0  # mean log-probability of the chosen tokens under the model (</s> included)
    segments: list[Segment] | None = None  # when the audio was transcribed segment by segment


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int | None = None  # None: pipeline.CHAT_MAX_TOKENS for chat, one per audio token for transcription
    temperature: float = 0.0  # 0 is greedy; the model card advises 0 for transcription, 0.2 for chat
    top_p: float = 1.0  # nucleus mass kept when sampling
    seed: int | None = None  # fixes the sampling RNG; None draws a fresh seed

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 10:
            raise InvalidRequestError(f"temperature must be in [0, 10], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Audio:
    """An audio part of a chat message; `source` is anything audio.decode.load accepts (AudioInput)."""

    source: "AudioInput"
