"""The Python API: speechrs.load(model) -> an object with the family's tasks as plain methods."""
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import UnsupportedModelError
from .hub import ModelSource, resolve
from .messages import parse_messages
from .voxtral.pipeline import Done, GenerationOptions, Token, Usage, VoxtralPipeline
from .weights import parse_dtype

DEFAULT_VOXTRAL = "mistralai/Voxtral-Mini-3B-2507"


@dataclass
class TextResult:
    text: str
    finish_reason: str  # "stop" or "length"
    usage: Usage


class VoxtralModel:
    """Audio in, text out. Every method takes max_tokens, temperature, top_p and seed as keywords."""

    def __init__(self, pipeline: VoxtralPipeline, source: ModelSource, model_id: str):
        self.pipeline, self.source, self.model_id = pipeline, source, model_id

    def transcribe(self, audio, language: str | None = None, **options) -> TextResult:
        """audio: a path, file:// or data: URL, encoded bytes, or (float array, sample rate)."""
        return _collect(self.transcribe_stream(audio, language, **options))

    def transcribe_stream(self, audio, language: str | None = None, **options) -> Iterator[Token | Done]:
        return self.pipeline.transcribe(audio, language, GenerationOptions(**options))

    def chat(self, messages: list[dict], **options) -> TextResult:
        """messages: OpenAI-style dicts; audio parts as audio_url, input_audio or {"type": "audio", "audio": x}."""
        return _collect(self.chat_stream(messages, **options))

    def chat_stream(self, messages: list[dict], **options) -> Iterator[Token | Done]:
        return self.pipeline.chat(parse_messages(messages), GenerationOptions(**options))


def _collect(events: Iterator[Token | Done]) -> TextResult:
    for event in events:
        if isinstance(event, Done):
            return TextResult(event.text, event.finish_reason, event.usage)
    raise RuntimeError("generation ended without a Done event")


def load(model: str = DEFAULT_VOXTRAL, *, dtype: str = "auto", device: str = "cpu") -> VoxtralModel:
    """Resolve a hub id or directory, detect the family and layout, and load it on `device`."""
    source = resolve(model)
    if source.family == "dia":
        raise UnsupportedModelError(f"{model} is a Dia checkpoint ({source.layout}); Dia text-to-speech is not "
                                    "implemented in this version of speechrs yet")
    return VoxtralModel(VoxtralPipeline.load(source.directory, source.layout, parse_dtype(dtype), device),
                        source, model)
