"""/v1/audio/transcriptions and /v1/audio/translations: a multipart upload in, text out as json, text,
verbose_json (segments with start and end), srt or vtt, or streamed as SSE events."""

from contextlib import aclosing

from aiohttp import BodyPartReader, web

from speechrs import subtitles
from speechrs.errors import InvalidRequestError
from speechrs.server import openai_api as oa
from speechrs.server.http import (
    ENGINE,
    MAX_UPLOAD,
    first_event,
    last_event,
    note,
    send_event,
    sse_response,
    within_body_timeout,
)
from speechrs.voxtral.events import Done, Token
from speechrs.voxtral.transcript import Segment


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _transcript(request, translate=False)


async def translations(request: web.Request) -> web.StreamResponse:
    return await _transcript(request, translate=True)


async def _transcript(request: web.Request, translate: bool) -> web.StreamResponse:
    engine = request.app[ENGINE]
    form, audio = await _read_form(request)
    if not audio:
        raise InvalidRequestError("'file' is required and must not be empty", "file")
    req = oa.transcription_request(form, translate)
    loaded = engine.get(req.model, "voxtral", str(request.rel_url.path))
    note(request, loaded.name)
    pipeline = loaded.voxtral

    def run():
        if req.to_language is not None:
            return pipeline.translate(audio, req.to_language, req.opts, req.timestamps)
        return pipeline.transcribe(audio, req.language, req.opts, req.timestamps)

    async with aclosing(engine.stream(run)) as events:
        first = await first_event(events)  # request errors (unreadable audio, too long) are still 4xx here
        if req.stream:
            return await _stream(request, first, events)
        done = await last_event(first, events)
    note(request, audio_in_s=done.usage.audio_seconds)
    if req.fmt == "text":
        return web.Response(text=done.text, content_type="text/plain")
    if req.fmt in ("srt", "vtt"):
        text = subtitles.timed_text(req.fmt, done.segments or [])
        return web.Response(text=text, content_type=subtitles.CONTENT_TYPES[req.fmt])
    if req.fmt == "verbose_json":
        return web.json_response(oa.verbose_transcript(done, req.language, req.to_language))
    return web.json_response(oa.transcription(done.text, done.usage))


async def _stream(request: web.Request, first, events) -> web.StreamResponse:
    """OpenAI's transcript.text.delta and transcript.text.done events; segmented requests also send a
    transcript.text.segment event (OpenAI's shape, without its diarization's speaker) as each segment ends."""
    resp = await sse_response(request)
    event = first
    while event is not None:
        if isinstance(event, Token) and event.text:
            await send_event(resp, {"type": "transcript.text.delta", "delta": event.text})
        elif isinstance(event, Segment):
            body = {"type": "transcript.text.segment", "id": f"seg_{event.id}", "start": round(event.start, 3)}
            await send_event(resp, {**body, "end": round(event.end, 3), "text": event.text})
        elif isinstance(event, Done):
            note(request, audio_in_s=event.usage.audio_seconds)
            usage = oa.transcription(event.text, event.usage)["usage"]
            await send_event(resp, {"type": "transcript.text.done", "text": event.text, "usage": usage})
        event = await first_event(events)
    await resp.write(b"data: [DONE]\n\n")
    return resp


FIELD_BYTES = 2**16  # a text field (language, model, ...) at most


async def _read_form(request: web.Request) -> tuple[dict[str, str | list[str]], bytes | None]:
    """A multipart/form-data body -> (its text fields, the 'file' field's bytes); malformed bodies are a 400.
    A field named with a trailing [] (timestamp_granularities[]) may repeat: its values become a list."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError("send multipart/form-data with a 'file' field", "file")
    form: dict[str, str | list[str]] = {}
    audio: bytes | None = None
    left = request.app[MAX_UPLOAD]  # the whole body's cap, over every part

    async def part_bytes(part: BodyPartReader, limit: int, keep: bool) -> bytes:
        """The part's bytes, read a chunk at a time against the body's cap and the part's own `limit`."""
        nonlocal left
        chunks, size = [], 0
        while chunk := await part.read_chunk(2**16):
            size, left = size + len(chunk), left - len(chunk)
            if left < 0:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=request.app[MAX_UPLOAD], actual_size=request.app[MAX_UPLOAD] - left
                )
            if size > limit:
                raise InvalidRequestError(f"form field '{part.name}' is longer than {limit} bytes", part.name)
            if keep:
                chunks.append(chunk)
        return b"".join(chunks)

    async def read() -> None:
        nonlocal audio
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequestError("nested multipart bodies are not supported; send flat form fields", "file")
            if part.name == "file":
                audio = await part_bytes(part, request.app[MAX_UPLOAD], keep=True)
            elif part.name and part.name.removesuffix("[]") in oa.TRANSCRIPTION_FIELDS:
                try:
                    value = (await part_bytes(part, FIELD_BYTES, keep=True)).decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidRequestError(f"form field '{part.name}' is not UTF-8 text", part.name) from None
                if part.name.endswith("[]"):
                    values = form.setdefault(part.name[:-2], [])
                    if isinstance(values, list):
                        values.append(value)
                else:
                    form[part.name] = value
            else:  # a field speechrs does not read: skipped, counted against the cap, not kept
                await part_bytes(part, request.app[MAX_UPLOAD], keep=False)

    try:
        await within_body_timeout(request, read)
    except (ValueError, AssertionError):  # aiohttp's parser: no boundary, a missing or broken boundary line
        raise InvalidRequestError(
            "the multipart/form-data body is malformed (boundary or part headers)", "file"
        ) from None
    return form, audio
