"""The Python API: speechrs.load(model) -> an object with the family's tasks as plain methods.

Requests run synchronously in the caller's thread through the engine (Engine.run), with the same option
dataclasses the server builds. One object serves one request at a time.
"""

from collections.abc import Iterator
from dataclasses import dataclass

from speechrs import subtitles
from speechrs.audio.vad import SplitOptions
from speechrs.dia.events import AudioChunk, SpeakOptions, SpeechResult, Step
from speechrs.dia.pipeline import check_reference
from speechrs.dia.voice_store import VoiceStore
from speechrs.engine.engine import Engine, Loaded, load_pipeline
from speechrs.errors import InvalidRequestError, SpeechrsError
from speechrs.messages import parse_messages
from speechrs.voxtral.events import Done, GenerationOptions, Token, Usage
from speechrs.voxtral.transcript import Segment

DEFAULT_VOXTRAL = "mistralai/Voxtral-Mini-3B-2507"


@dataclass
class TextResult:
    text: str
    finish_reason: str  # "stop" or "length"
    usage: Usage
    segments: list[Segment] | None = None  # with timestamps=True, or audio too long for one prompt

    def srt(self) -> str:
        return subtitles.srt(self._timed())

    def vtt(self) -> str:
        return subtitles.vtt(self._timed())

    def _timed(self) -> list[Segment]:
        if self.segments is None:
            raise SpeechrsError("this transcript has no segments; ask for them with timestamps=True")
        return self.segments


class VoxtralModel:
    """Audio in, text out. Every method takes max_tokens, temperature, top_p and seed as keywords."""

    def __init__(self, loaded: Loaded):
        self.loaded, self.source, self.model_id, self.plan = loaded, loaded.source, loaded.name, loaded.plan
        self.pipeline = loaded.voxtral

    def transcribe(
        self, audio, language: str | None = None, timestamps: bool = False, max_segment_s: float = 30.0, **options
    ) -> TextResult:
        """audio: a path, file:// or data: URL, encoded bytes, or (float array, sample rate), of any length.
        timestamps=True (or audio too long for one prompt) transcribes it segment by segment, split at pauses
        into pieces of at most max_segment_s: the result's `segments` have start and end times."""
        return _collect(self.transcribe_stream(audio, language, timestamps, max_segment_s, **options))

    def transcribe_stream(
        self, audio, language: str | None = None, timestamps: bool = False, max_segment_s: float = 30.0, **options
    ) -> Iterator:
        """Token events, then Done; segmented requests also give Progress and each Segment as it ends."""
        opts, split = GenerationOptions(**options), split_options(max_segment_s)
        return Engine.run(lambda: self.pipeline.transcribe(audio, language, opts, timestamps, split))

    def translate(
        self, audio, to_language: str = "en", timestamps: bool = False, max_segment_s: float = 30.0, **options
    ) -> TextResult:
        """Speech in any language -> text in to_language (an ISO 639-1 code or an English name), by Voxtral's chat
        prompt; segments as in transcribe()."""
        return _collect(self.translate_stream(audio, to_language, timestamps, max_segment_s, **options))

    def translate_stream(
        self, audio, to_language: str = "en", timestamps: bool = False, max_segment_s: float = 30.0, **options
    ) -> Iterator:
        opts, split = GenerationOptions(**options), split_options(max_segment_s)
        return Engine.run(lambda: self.pipeline.translate(audio, to_language, opts, timestamps, split))

    def chat(self, messages: list[dict], **options) -> TextResult:
        """messages: OpenAI-style dicts; audio parts as audio_url, input_audio or {"type": "audio", "audio": x}."""
        return _collect(self.chat_stream(messages, **options))

    def chat_stream(self, messages: list[dict], **options) -> Iterator[Token | Done]:
        parsed, opts = parse_messages(messages), GenerationOptions(**options)
        return Engine.run(lambda: self.pipeline.chat(parsed, opts))


class DiaModel:
    """Text in, speech out. speak() takes max_tokens, temperature, top_p, top_k, cfg_scale, seed, normalize, speed."""

    def __init__(self, loaded: Loaded, voices_dir=None):
        self.loaded, self.source, self.model_id, self.plan = loaded, loaded.source, loaded.name, loaded.plan
        self.pipeline = loaded.dia
        self.voices = VoiceStore(voices_dir)  # named voices (voice_store.py): .add(name, clip, text), .list()

    def speak(
        self, text: str, ref_audio=None, ref_text: str | None = None, voice: str | None = None, **options
    ) -> SpeechResult:
        """[S1]/[S2] speaker tags and nonverbals like (laughs) are plain text; any length (long scripts go piece by
        piece). Returns pcm, codes, segments (captions), save(). ref_audio (a path, URL, bytes or (array, rate),
        5-10 s) with ref_text, its transcript, clones a voice; voice names one saved with self.voices.add."""
        for event in self.speak_stream(text, ref_audio=ref_audio, ref_text=ref_text, voice=voice, **options):
            if isinstance(event, SpeechResult):
                return event
        raise RuntimeError("generation ended without a result")

    def speak_stream(
        self,
        text: str,
        stream_audio: bool = False,
        ref_audio=None,
        ref_text: str | None = None,
        voice: str | None = None,
        **options,
    ) -> Iterator[Step | AudioChunk | SpeechResult]:
        """Step(step, max_steps, frames, piece, pieces) events while decoding, then the SpeechResult. With
        stream_audio, also AudioChunk(pcm, sample_rate) events as soon as the DAC can decode them (not
        loudness-normalised)."""
        opts = SpeakOptions(**options)
        check_reference(voice, ref_audio, ref_text)
        return Engine.run(
            lambda: self.pipeline.speak_as(text, opts, stream_audio, voice, self.voices, ref_audio, ref_text)
        )


def _collect(events: Iterator) -> TextResult:
    for event in events:
        if isinstance(event, Done):
            return TextResult(event.text, event.finish_reason, event.usage, event.segments)
    raise RuntimeError("generation ended without a Done event")


def split_options(max_segment_s: float) -> SplitOptions:
    """Segments of at most max_segment_s (1-30 s: a segment is one encoder chunk at most)."""
    if not 1.0 <= max_segment_s <= 30.0:  # a segment is one 30 s encoder chunk at most
        raise InvalidRequestError(f"max_segment_s must be in [1, 30], got {max_segment_s:g}", "max_segment_s")
    return SplitOptions(max_segment_s=max_segment_s)


def load(
    model: str = DEFAULT_VOXTRAL,
    *,
    dtype: str = "auto",
    device: str = "auto",
    dac: str | None = None,
    quantize: str | None = None,
    voices_dir=None,
) -> VoxtralModel | DiaModel:
    """Resolve a hub id or directory, detect the family and layout, and load it on `device` (auto: cuda, then mps,
    then cpu).

    dtype: auto picks the path for the device (compute.plan; `.plan.summary` says which), or float32 / bfloat16 /
    float16. quantize: "int8" (per output channel) or "int4" (groups of 32) weight-only decoder linears and
    output head, quantized at load (quant.py; Voxtral's audio encoder and Dia's text encoder to int8 either way);
    a directory `speechrs quantize` wrote brings its own. dac: for Dia, a DAC 44 kHz hub id or directory (default:
    the one the checkpoint's generation uses). voices_dir: where Dia's named voices are kept
    (voice_store.default_dir()).
    """
    loaded = load_pipeline(model, dtype, device, dac, quantize)
    return DiaModel(loaded, voices_dir) if loaded.family == "dia" else VoxtralModel(loaded)
