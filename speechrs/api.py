"""The Python API: speechrs.load(model) -> an object with the family's tasks as plain methods."""
from collections.abc import Iterator
from dataclasses import dataclass

from .dia.pipeline import DiaPipeline, SpeakOptions, SpeechResult, Step
from .hub import DEFAULT_DAC, ModelSource, resolve, resolve_dac
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


class DiaModel:
    """Text in, speech out. speak() takes max_tokens, temperature, top_p, top_k, cfg_scale, seed, normalize."""

    def __init__(self, pipeline: DiaPipeline, source: ModelSource, model_id: str):
        self.pipeline, self.source, self.model_id = pipeline, source, model_id

    def speak(self, text: str, **options) -> SpeechResult:
        """[S1]/[S2] speaker tags and nonverbals like (laughs) are plain text. Returns pcm, codes, save()."""
        for event in self.speak_stream(text, **options):
            if isinstance(event, SpeechResult):
                return event
        raise RuntimeError("generation ended without a result")

    def speak_stream(self, text: str, **options) -> Iterator[Step | SpeechResult]:
        """Step(step, max_steps) events while decoding, then the SpeechResult."""
        return self.pipeline.speak(text, SpeakOptions(**options))


def load(model: str = DEFAULT_VOXTRAL, *, dtype: str = "auto", device: str = "cpu",
         dac: str | None = None) -> VoxtralModel | DiaModel:
    """Resolve a hub id or directory, detect the family and layout, and load it on `device`.

    dac: for Dia, a DAC 44 kHz hub id or directory (default: the one the checkpoint's generation uses).
    """
    source = resolve(model)
    if source.family == "dia":
        dac_dir = resolve_dac(dac or DEFAULT_DAC[source.layout])
        return DiaModel(DiaPipeline.load(source.directory, dac_dir, parse_dtype(dtype), device), source, model)
    return VoxtralModel(VoxtralPipeline.load(source.directory, source.layout, parse_dtype(dtype), device),
                        source, model)
