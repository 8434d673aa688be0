"""Transcripts of any length, with segment timestamps: the audio is decoded in blocks, split at pauses into
segments of at most 30 s (vad.py), and each segment is transcribed (or translated) with its own prompt, one
after another inside one request. Voxtral-Mini-3B has no timestamp tokens; a segment's times are where its
audio lies in the file, so their precision is the splitter's (32 ms frames, 0.2 s of padding).
"""

import zlib
from collections.abc import Callable, Iterator

from speechrs.audio.decode import AudioStream
from speechrs.audio.vad import SplitOptions, split_speech
from speechrs.errors import InvalidRequestError
from speechrs.request import PAUSE
from speechrs.voxtral.events import Done, Progress, Segment, Token, Usage

# ISO 639-1 -> the lower-case English names OpenAI's verbose_json reports (Voxtral's eight first)
LANGUAGES = {
    "en": "english",
    "es": "spanish",
    "fr": "french",
    "pt": "portuguese",
    "hi": "hindi",
    "de": "german",
    "nl": "dutch",
    "it": "italian",
    "ar": "arabic",
    "ca": "catalan",
    "cs": "czech",
    "da": "danish",
    "el": "greek",
    "fi": "finnish",
    "he": "hebrew",
    "hu": "hungarian",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "no": "norwegian",
    "pl": "polish",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "tr": "turkish",
    "uk": "ukrainian",
    "vi": "vietnamese",
    "zh": "chinese",
}


def language_name(language: str | None) -> str:
    """A code or name -> OpenAI's lower-case English name; None -> "unknown" (Voxtral does not say which)."""
    if not language:
        return "unknown"
    return LANGUAGES.get(language.lower(), language.lower())


def target_language(value: str) -> str:
    """A translation target given as a code (fr) or a name (French) -> its English name, capitalised."""
    key = value.strip().lower()
    if key in LANGUAGES:
        return LANGUAGES[key].capitalize()
    if key in LANGUAGES.values():
        return key.capitalize()
    raise InvalidRequestError(
        f"unknown target language '{value[:40]}'; use an ISO 639-1 code or name: {', '.join(LANGUAGES)}", "to_language"
    )


def translation_instruction(language: str) -> str:
    """The chat text that asks Voxtral for a translation (its transcription prompt cannot translate)."""
    return f"Translate this audio into {language}. Answer with the translation only."


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class _Joiner:
    """Segment texts, stripped, joined by one space, delta by delta: the deltas streamed add up to exactly the
    final text (whitespace at a segment's end is held back until more text of the same segment follows)."""

    def __init__(self) -> None:
        self.text = ""  # everything emitted
        self.segment_text = ""  # this segment's emitted text
        self.held = ""  # trailing whitespace not emitted yet

    def start_segment(self) -> None:
        self.segment_text, self.held = "", ""

    def push(self, delta: str) -> str:
        if not self.segment_text:
            delta = delta.lstrip()
        body = delta.rstrip()
        if not body:
            self.held += delta
            return ""
        out = (" " if self.text and not self.segment_text else "") + self.held + body
        self.held = delta[len(body) :]
        self.segment_text += out.lstrip(" ") if not self.segment_text else out
        self.text += out
        return out


def segmented(pipeline, stream: AudioStream, prompt: Callable[[int], list[int]], opts, split: SplitOptions) -> Iterator:
    """The request's generator: Progress, Token deltas, each Segment as it completes, then Done with all of them.
    `prompt(n_audio_tokens)` builds one segment's prompt ids (transcription or translation)."""
    usage = Usage(audio_seconds=stream.duration_s)
    segments: list[Segment] = []
    joiner, finish = _Joiner(), "stop"
    yield Progress(0.0, stream.duration_s)
    for item in split_speech(stream.blocks(), split):
        if isinstance(item, float):
            yield Progress(min(item, stream.duration_s), stream.duration_s)
            yield PAUSE  # splitting is work of this request's own: others step meanwhile
            continue
        mel, n_tokens = pipeline.mel_chunks(item.pcm)
        joiner.start_segment()
        done = None
        for event in pipeline.generate(prompt(n_tokens), [mel], item.duration_s, opts, max(64, n_tokens)):
            if isinstance(event, Done):
                done = event
            elif isinstance(event, Token):
                delta = joiner.push(event.text)
                if delta or event.id >= 0:
                    yield Token(event.id, delta)
            else:
                yield event  # StepInput and Pause go to the driver
        assert done is not None
        for name in ("prompt_tokens", "completion_tokens", "encode_s", "prefill_s", "decode_s"):
            setattr(usage, name, getattr(usage, name) + getattr(done.usage, name))
        finish = "length" if done.finish_reason == "length" else finish
        text = joiner.segment_text
        segment = Segment(
            len(segments),
            item.start_s,
            item.end_s,
            text,
            done.tokens,
            done.avg_logprob,
            compression_ratio(text),
            item.no_speech_prob,
            opts.temperature,
        )
        segments.append(segment)
        yield segment
    yield Done(joiner.text, finish, usage, segments=segments)
