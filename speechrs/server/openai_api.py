"""OpenAI request bodies -> speechrs option dataclasses, and results -> OpenAI response bodies.

No HTTP here (server.py does that), so every rule is testable on plain dicts.
"""

import json
import math
import time
import uuid
from dataclasses import dataclass

from speechrs.dia.events import SpeakOptions
from speechrs.errors import InvalidRequestError
from speechrs.subtitles import TRANSCRIPT_FORMATS
from speechrs.voxtral.events import Done, GenerationOptions, Usage
from speechrs.voxtral.transcript import language_name, target_language

# OpenAI's six; wav and pcm by hand (exact mistral.rs bytes and content types), the others with PyAV (encode.py)
SPEECH_FORMATS = ("wav", "pcm", "mp3", "opus", "aac", "flac")
TRANSCRIPTION_FORMATS = TRANSCRIPT_FORMATS


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; OpenAI's seed is a signed 64-bit integer
INT_BOUNDS = {"seed": (0, SEED_MAX), "max_tokens": (1, 2**31), "max_completion_tokens": (1, 2**31)}


def _number(body: dict, key: str, kind=float, default=None):
    """A JSON number (an integer for kind=int), finite, and within INT_BOUNDS for the keys it names; the ranges
    that depend on the model are the pipelines' to check."""
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise InvalidRequestError(f"'{key}' must be a{'n integer' if kind is int else ' number'}", key)
    bounds = INT_BOUNDS.get(key)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        lo, hi = bounds
        raise InvalidRequestError(f"'{key}' must be in [{lo}, {hi}], got {str(value)[:24]}", key)
    try:
        number = kind(value)
        if not math.isfinite(number):
            raise OverflowError
    except OverflowError:  # NaN, Infinity, or an integer too large for a float
        raise InvalidRequestError(f"'{key}' must be a finite number", key) from None
    return number


def _boolean(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequestError(f"'{key}' must be true or false, not {json.dumps(value)[:40]}", key)
    return value


def generation_options(body: dict) -> GenerationOptions:
    """temperature, top_p, max_tokens (or max_completion_tokens, which wins), seed: the CLI's dataclass."""
    max_tokens = _number(body, "max_completion_tokens", int)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int)
    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", default=0.0),
        top_p=_number(body, "top_p", default=1.0),
        seed=_number(body, "seed", int),
    )


def chat_request(body: dict) -> tuple[str, list, GenerationOptions, bool, bool]:
    """-> (model, messages, options, stream, include_usage)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    if "messages" not in body:
        raise InvalidRequestError("'messages' is required", "messages")
    if body.get("n", 1) != 1:
        raise InvalidRequestError("only n=1 is supported", "n")
    stream = _boolean(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidRequestError("'stream_options' must be an object", "stream_options")
    include_usage = _boolean(stream_options, "include_usage")
    return body.get("model") or "default", body["messages"], generation_options(body), stream, include_usage


def speech_request(body: dict) -> tuple[str, str, str, SpeakOptions, str | None]:
    """-> (model, input text, response_format, options, stream_format). speed (0.25-4.0) time-stretches the audio
    at the same pitch; voice and instructions are accepted, unused. stream_format "sse" streams pcm deltas;
    "audio" streams pcm and wav bytes as they are made (other formats are encoded once the clip is whole); absent,
    the whole normalised file is returned."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str):
        raise InvalidRequestError("'input' is required and must be a string", "input")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio", "sse"):
        raise InvalidRequestError("stream_format must be 'audio' or 'sse'", "stream_format")
    fmt = body.get("response_format") or ("pcm" if stream_format == "sse" else "mp3")  # OpenAI's default: mp3
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequestError(
            f"response_format '{fmt}' is not supported; use one of {', '.join(SPEECH_FORMATS)}", "response_format"
        )
    if stream_format == "sse" and fmt != "pcm":
        raise InvalidRequestError(
            "stream_format 'sse' sends pcm deltas; use response_format 'pcm' (or "
            "stream_format 'audio' for a wav stream)",
            "response_format",
        )
    normalize = body.get("normalize")  # None: normalised unless streamed (SpeakOptions)
    if normalize is not None:
        normalize = _boolean(body, "normalize")
    opts = SpeakOptions(
        max_tokens=_number(body, "max_tokens", int),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=_number(body, "top_k", int),
        cfg_scale=_number(body, "cfg_scale"),
        seed=_number(body, "seed", int),
        normalize=normalize,
        speed=_number(body, "speed"),
    )
    return body.get("model") or "default", text, fmt, opts, stream_format


def speech_reference(body: dict) -> tuple[str | None, str | None]:
    """-> (ref_audio, ref_text) for voice cloning (vllm-omni's and mistral-common's field names): ref_audio is a
    data:, http(s):// or file:// URL, or base64-encoded audio; ref_text its transcript. Neither: (None, None)."""
    ref_audio, ref_text = body.get("ref_audio"), body.get("ref_text")
    if ref_audio is not None and (not isinstance(ref_audio, str) or not ref_audio):
        raise InvalidRequestError("'ref_audio' must be a URL (data:, http(s)://, file://) or base64 audio", "ref_audio")
    if ref_text is not None and not isinstance(ref_text, str):
        raise InvalidRequestError("'ref_text' must be a string: the transcript of ref_audio", "ref_text")
    return ref_audio, ref_text


def streams_audio(fmt: str, stream_format: str | None) -> bool:
    """Whether a speech request gets its audio as it is made: SSE, or raw pcm / wav bytes."""
    return stream_format == "sse" or (stream_format == "audio" and fmt in ("pcm", "wav"))


def speech_done(n_in: int, steps: int, segments=()) -> dict:
    """The last SSE event: input tokens are Dia's text bytes, output tokens its decoder steps; `segments` (an
    extension) are the script's pieces with their start and end in the audio, for captions."""
    return {
        "type": "speech.audio.done",
        "usage": {"input_tokens": n_in, "output_tokens": steps, "total_tokens": n_in + steps},
        "segments": [
            {"id": s.id, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in segments
        ],
    }


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str
    language: str | None  # the audio's (transcription); None lets the model choose
    to_language: str | None  # the translation's target; None for a transcription
    fmt: str  # one of TRANSCRIPTION_FORMATS
    stream: bool
    timestamps: bool  # segment by segment, with start and end times
    opts: GenerationOptions


def _form_text(form: dict, key: str) -> str | None:
    value = form.get(key)
    if isinstance(value, list):
        raise InvalidRequestError(f"'{key}' is a single value, not a list", key)
    return value or None


# the multipart fields a transcription reads (the rest of OpenAI's, e.g. prompt or include[], are skipped unread)
TRANSCRIPTION_FIELDS = frozenset(
    {"model", "language", "response_format", "temperature", "top_p", "max_tokens", "seed", "stream", "to_language"}
    | {"timestamp_granularities"}
)


def transcription_request(form: dict, translate: bool = False) -> TranscriptionRequest:
    """Multipart fields (strings; lists for fields sent as name[]) -> the request. A translation goes to English
    unless the `to_language` extension names another language."""
    fmt = _form_text(form, "response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise InvalidRequestError(
            f"response_format '{fmt}' is not supported; use one of {', '.join(TRANSCRIPTION_FORMATS)}",
            "response_format",
        )
    numbers = {}
    for key, kind in (("temperature", float), ("top_p", float), ("max_tokens", int), ("seed", int)):
        text = _form_text(form, key)
        if text is not None:
            try:
                numbers[key] = kind(text)
            except ValueError:
                raise InvalidRequestError(f"'{key}' must be a number", key) from None
    stream_field = str(_form_text(form, "stream") or "false").lower()
    if stream_field not in ("true", "false", "1", "0"):
        raise InvalidRequestError("'stream' must be true or false", "stream")
    stream = stream_field in ("true", "1")
    if stream and fmt in ("srt", "vtt"):
        raise InvalidRequestError(
            f"a streamed transcript arrives as JSON events; use response_format json, text or verbose_json "
            f"(segments as transcript.text.segment events), or stream false for {fmt}",
            "response_format",
        )
    granularities = form.get("timestamp_granularities", [])
    granularities = [granularities] if isinstance(granularities, str) else granularities
    for g in granularities:
        if g not in ("segment", "word"):
            raise InvalidRequestError(
                f"timestamp granularity '{g}' is not one of segment, word", "timestamp_granularities"
            )
    if "word" in granularities:
        raise InvalidRequestError(
            "word timestamps are not available: Voxtral has no timestamp tokens and speechrs has no word aligner "
            "yet; use timestamp_granularities[]=segment",
            "timestamp_granularities",
        )
    if granularities and fmt != "verbose_json":
        raise InvalidRequestError(
            "timestamp_granularities needs response_format verbose_json", "timestamp_granularities"
        )
    to_language = None
    if translate:
        to_language = _form_text(form, "to_language") or "en"
        target_language(to_language)  # a 400 for an unknown language, before any work
    return TranscriptionRequest(
        model=_form_text(form, "model") or "default",
        language=None if translate else _form_text(form, "language"),
        to_language=to_language,
        fmt=fmt,
        stream=stream,
        timestamps=fmt in ("verbose_json", "srt", "vtt") or bool(granularities),
        opts=generation_options(numbers),
    )


# ---- responses ----


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage_body(u: Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def chat_completion(model: str, text: str, finish_reason: str, usage: Usage) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": usage_body(usage),
    }


def chat_chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None, usage: Usage | None = None):
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage_body(usage)
    return body


def transcription(text: str, usage: Usage) -> dict:
    return {
        "text": text,
        "usage": {
            "type": "tokens",
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }


def verbose_transcript(done: Done, language: str | None, to_language: str | None = None) -> dict:
    """OpenAI's verbose_json (TranscriptionVerbose / TranslationVerbose): language as an English name (the target's
    for a translation; "unknown" when none was given, as Voxtral does not report what it heard)."""
    language = language_name(target_language(to_language) if to_language else language)
    duration = round(done.usage.audio_seconds, 3)
    return {
        "task": "translate" if to_language else "transcribe",
        "language": language,
        "duration": duration,
        "text": done.text,
        "segments": [s.as_dict() for s in done.segments or []],
        "usage": {"type": "duration", "seconds": duration},
    }
