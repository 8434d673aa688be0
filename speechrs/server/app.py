"""OpenAI-compatible HTTP server: a translation layer over the engine (parse -> options -> engine -> format)."""

import asyncio
import base64
import json
import logging
import time
import uuid
from contextlib import aclosing

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from speechrs.audio.encode import speech_bytes, speech_content_type
from speechrs.dia.pipeline import check_reference
from speechrs.dia.voice_store import OPENAI_VOICES, VoiceStore
from speechrs.engine.engine import OPENAI_MODELS, Engine, served_name
from speechrs.errors import (
    AudioError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerBusyError,
    ShuttingDownError,
    SpeechrsError,
    UnsupportedModelError,
)
from speechrs.messages import parse_messages
from speechrs.server import openai_api as oa
from speechrs.server.guard import Security, add_cors_headers, is_loopback, make_guard
from speechrs.server.http import (
    BODY_TIMEOUT,
    ENGINE,
    MAX_UPLOAD,
    METRICS,
    NOTE,
    POLICY,
    VOICES,
    Metrics,
    Note,
    first_event,
    last_event,
    note,
    send_event,
    sse_response,
    within_body_timeout,
)
from speechrs.server.media import MediaPolicy, fetch_audio, fetch_url_or_base64
from speechrs.server.transcripts import transcriptions, translations
from speechrs.voxtral.events import Audio, Done, Token

log = logging.getLogger(__name__)
access_log = logging.getLogger("speechrs.access")  # one line per request (serve --access-log)


_STATUS = {
    InvalidRequestError: 400,
    AudioError: 400,
    ModelNotFoundError: 404,
    UnsupportedModelError: 400,
    RequestTimeoutError: 408,
    ShuttingDownError: 503,
}


@web.middleware
async def errors(request: web.Request, handler):
    """Every failure becomes an OpenAI error body; only real faults are 5xx, and none shows a traceback."""
    metrics, t0 = request.app[METRICS], time.perf_counter()
    request[NOTE] = Note()
    reason = ""
    try:
        response = await handler(request)
    except ConnectionResetError:  # the client went away; nobody to answer
        raise
    except (HttpProcessingError, RequestPayloadError) as e:  # a body that is not what its headers say (gzip...)
        message = f"the request body could not be read: {getattr(e, 'message', '') or type(e).__name__}"
        response = web.json_response(oa.error_body(message[:300], code="400"), status=400)
    except web.HTTPException as e:
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        message = e.text or e.reason if e.status != 413 else f"request body too large ({e.text})"
        response = web.json_response(oa.error_body(message, kind, code=str(e.status)), status=e.status)
    except ServerBusyError as e:  # OpenAI's rate-limit shape
        body = oa.error_body(str(e), "rate_limit_error", None, "server_busy")
        response = web.json_response(body, status=429, headers={"Retry-After": str(e.retry_after_s)})
    except SpeechrsError as e:
        status = _STATUS.get(type(e), 400)
        code = {404: "model_not_found", 503: "shutting_down"}.get(status)
        kind = "server_error" if status >= 500 else "invalid_request_error"
        response = web.json_response(oa.error_body(str(e), kind, getattr(e, "param", None), code), status=status)
    except Exception:
        log.exception("internal error on %s", request.path)
        response = web.json_response(
            oa.error_body("internal server error; see the server log", "server_error"), status=500
        )
    if response.status >= 400 and isinstance(response, web.Response) and response.body is not None:
        reason = _error_message(response.body)
    metrics.requests[(request.path if request.match_info.route.resource else "unmatched", response.status)] += 1
    _log_request(request, response.status, time.perf_counter() - t0, reason)
    return response


def _error_message(body) -> str:
    try:
        return str(json.loads(bytes(body))["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return ""


def _log_request(request: web.Request, status: int, seconds: float, reason: str) -> None:
    """One line per request on the access log: method, route, status, model, audio in / out, time, and why not."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    note = request[NOTE]
    parts = [request.method, request.path, str(status), note.model or "-"]
    if note.audio_in_s:
        parts.append(f"in {note.audio_in_s:.1f}s")
    if note.audio_out_s:
        parts.append(f"out {note.audio_out_s:.1f}s")
    parts.append(f"{seconds:.2f}s")
    line = " ".join(parts) + (f": {reason}" if reason else "")
    access_log.log(logging.WARNING if status >= 500 else logging.INFO, line)


async def _json(request: web.Request) -> dict:
    try:
        body = await within_body_timeout(request, request.json)
        # a lone UTF-16 surrogate ("\ud800") is valid JSON but no text: it would fail deep in a tokenizer
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError("the body holds an unpaired UTF-16 surrogate escape; send valid Unicode") from None
    except LookupError:
        raise InvalidRequestError(f"unknown charset '{request.charset}' in Content-Type; send UTF-8") from None
    except (ValueError, RecursionError):  # ValueError: bad JSON or UTF-8, or an integer of 4300+ digits
        raise InvalidRequestError("the body is not valid JSON (or nests or counts beyond what is accepted)") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


async def _resolve_audio(messages: list, policy: MediaPolicy) -> list:
    """audio_url parts hold URLs; fetch them here under the media policy so the pipeline sees bytes only."""
    out = []
    for i, (role, parts) in enumerate(messages):
        resolved = []
        for j, part in enumerate(parts):
            if isinstance(part, Audio) and isinstance(part.source, str):
                part = Audio(await fetch_audio(part.source, policy, f"messages[{i}].content[{j}]"))
            resolved.append(part)
        out.append((role, resolved))
    return out


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine, policy = request.app[ENGINE], request.app[POLICY]
    model_id, messages, opts, stream, include_usage = oa.chat_request(await _json(request))
    loaded = engine.get(model_id, "voxtral", "/v1/chat/completions")
    note(request, loaded.name)
    parsed = await _resolve_audio(parse_messages(messages, python_parts=False), policy)
    async with aclosing(engine.stream(lambda: loaded.voxtral.chat(parsed, opts))) as events:
        return await _chat_response(request, loaded.name, events, stream, include_usage)


async def _chat_response(request, model: str, events, stream: bool, include_usage: bool) -> web.StreamResponse:
    first = await first_event(events)
    if not stream:
        done = await last_event(first, events)
        note(request, audio_in_s=done.usage.audio_seconds)
        return web.json_response(oa.chat_completion(model, done.text, done.finish_reason, done.usage))
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    resp = await sse_response(request)
    await send_event(resp, oa.chat_chunk(cid, model, {"role": "assistant", "content": ""}))
    event = first
    while event is not None:
        if isinstance(event, Token) and event.text:
            await send_event(resp, oa.chat_chunk(cid, model, {"content": event.text}))
        elif isinstance(event, Done):
            note(request, audio_in_s=event.usage.audio_seconds)
            await send_event(resp, oa.chat_chunk(cid, model, {}, event.finish_reason))
            if include_usage:
                await send_event(resp, oa.chat_chunk(cid, model, {}, usage=event.usage))
        event = await first_event(events)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def speech(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await _json(request)
    model_id, text, fmt, opts, stream_format = oa.speech_request(body)
    ref_url, ref_text = oa.speech_reference(body)
    loaded = engine.get(model_id, "dia", "/v1/audio/speech")
    note(request, loaded.name)
    voice = _named_voice(request.app[VOICES], body.get("voice"))
    check_reference(voice, ref_url, ref_text)
    ref_audio = None if ref_url is None else await fetch_url_or_base64(ref_url, request.app[POLICY], "ref_audio")
    streamed = oa.streams_audio(fmt, stream_format)
    t0 = time.perf_counter()

    def run():  # in the engine's worker: encoding a voice the first time is a DAC encoder pass
        return loaded.dia.speak_as(text, opts, streamed, voice, request.app[VOICES], ref_audio, ref_text)

    async with aclosing(engine.stream(run)) as events:
        first = await first_event(events)  # request errors (bad options, text too long) are still 4xx here
        if streamed:
            return await _speech_stream(request, loaded.dia, first, events, fmt, stream_format, t0)
        result = await last_event(first, events)
    _count_speech(request, result, t0)
    # encoding (mp3, opus resampling) takes real time: keep it off the event loop
    data, content_type = await asyncio.to_thread(speech_bytes, result.pcm, result.sample_rate, fmt)
    return web.Response(body=data, headers={"Content-Type": content_type})


async def _speech_stream(request, pipeline, first, events, fmt: str, stream_format: str | None, t0: float):
    """SSE speech.audio.delta / .done events, or raw pcm / wav bytes in a chunked response, as pieces arrive."""
    from speechrs.audio.decode import to_s16le, wav_stream_header
    from speechrs.dia.events import AudioChunk, SpeechResult

    rate = pipeline.codec.cfg.sample_rate
    if stream_format == "sse":
        resp = await sse_response(request)
    else:
        resp = web.StreamResponse(headers={"Content-Type": speech_content_type(fmt, rate)})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if fmt == "wav":
            await resp.write(wav_stream_header(rate))
    event = first
    while event is not None:
        if isinstance(event, AudioChunk):
            pcm = to_s16le(event.pcm)
            if stream_format == "sse":
                await send_event(resp, {"type": "speech.audio.delta", "audio": base64.b64encode(pcm).decode()})
            else:
                await resp.write(pcm)
        elif isinstance(event, SpeechResult):
            _count_speech(request, event, t0)
            if stream_format == "sse":
                done = oa.speech_done(event.timings["text_tokens"], event.timings["steps"], event.segments)
                await send_event(resp, done)
        event = await first_event(events)
    await resp.write_eof()
    return resp


def _named_voice(store: VoiceStore, voice) -> str | None:
    """The `voice` field -> a saved voice's name, or None for Dia's own voices (no field, or one of OpenAI's
    built-in names that no saved voice takes). Any other name must be a saved voice: a 400 lists them."""
    if voice is None or voice == "":
        return None
    if not isinstance(voice, str):
        raise InvalidRequestError("'voice' must be a string: a saved voice's name", "voice")
    if voice not in store.names() and voice.lower() in OPENAI_VOICES:
        return None
    return store.get(voice).name


async def voices(request: web.Request) -> web.Response:
    data = [
        {"name": v.name, "object": "voice", "text": v.text, "seconds": v.seconds} for v in request.app[VOICES].list()
    ]
    return web.json_response({"object": "list", "data": data})


def _count_speech(request, result, t0: float) -> None:
    note(request, audio_out_s=result.duration_s)
    request.app[METRICS].speech_wall_s += time.perf_counter() - t0


async def models(request: web.Request) -> web.Response:
    """The served models, then OpenAI's names for the families loaded, each naming the model it stands for."""
    loaded = request.app[ENGINE].models
    data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "speechrs", "family": m.family} for m in loaded]
    for family, names in OPENAI_MODELS.items():
        first = next((m for m in loaded if m.family == family), None)
        if first is not None:
            alias = {"object": "model", "created": 0, "owned_by": "speechrs", "family": family, "alias_of": first.name}
            data += [{"id": n, **alias} for n in names]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].prometheus(request.app[ENGINE]), content_type="text/plain")


def make_app(
    engine: Engine,
    policy: MediaPolicy | None = None,
    max_upload_bytes: int = 25 * 2**20,
    security: Security | None = None,
    bound_host: str | None = None,
    body_timeout_s: float = 30.0,
    ui: bool = True,
    voices_dir=None,
) -> web.Application:
    """The app over `engine`: media under `policy`, and the Host / content-type / API-key / CORS rules of
    `security` (guard.py; loopback Host names and `bound_host` are always allowed); a client has body_timeout_s
    to send its whole body; `ui` adds the page at / (speechrs/web)."""
    guard = make_guard(security or Security(), bound_host)
    app = web.Application(middlewares=[errors, guard], client_max_size=max_upload_bytes)
    app.on_response_prepare.append(add_cors_headers)
    app[ENGINE], app[POLICY], app[METRICS] = engine, policy or MediaPolicy(), Metrics()
    app[BODY_TIMEOUT] = body_timeout_s
    app[MAX_UPLOAD] = max_upload_bytes
    app[VOICES] = VoiceStore(voices_dir)
    app.router.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.post("/v1/audio/transcriptions", transcriptions),
            web.post("/v1/audio/translations", translations),
            web.post("/v1/audio/speech", speech),
            web.get("/v1/audio/voices", voices),
            web.get("/v1/models", models),
            web.get("/health", health),
            web.get("/metrics", metrics),
        ]
    )
    if ui:  # the page at / (speechrs/web): static files over the same public API
        from speechrs.server import web as page

        app.router.add_routes(page.routes())

    async def worker(app: web.Application):
        app[ENGINE].start()
        yield
        app[ENGINE].stop()

    async def drain(app: web.Application) -> None:  # shutdown begins: queued requests 503, the running one goes on
        app[ENGINE].drain()

    app.cleanup_ctx.append(worker)
    app.on_shutdown.append(drain)
    return app


def set_up_logging(level: str, access: bool) -> None:
    """speechrs's loggers at `level` on stderr; the access log (one line per request) at info, unless `access` is
    off."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    speechrs_log = logging.getLogger("speechrs")
    speechrs_log.setLevel(level.upper())
    if not any(getattr(h, "speechrs", False) for h in speechrs_log.handlers):
        handler.speechrs = True  # type: ignore[attr-defined]
        speechrs_log.addHandler(handler)
        speechrs_log.propagate = False
    access_log.setLevel(logging.INFO if access else logging.WARNING)


def check_served_names(models: list[str], names: list[str]) -> None:
    """One served name per -m, none twice and none of OpenAI's (they stand for a family's first model)."""
    if len(names) != len(models):
        raise InvalidRequestError(f"--served-model-name is given {len(names)} times for {len(models)} models")
    taken = {n for family in OPENAI_MODELS.values() for n in family} | {"default"}
    for i, name in enumerate(names):
        if name in taken or name in names[:i]:
            why = "another model's" if name in names[:i] else "a name speechrs keeps for a family's first model"
            raise InvalidRequestError(f"cannot serve {models[i]} as '{name}': that is {why}; give --served-model-name")


def build(
    models: list[str],
    *,
    dtype="auto",
    device="auto",
    dac=None,
    max_audio_s=None,
    max_input_chars: int | None = None,
    quantize: list[str] | None = None,
    max_queue: int | None = None,
    max_batch: int | None = None,
    request_timeout_s: float | None = None,
    served_names: list[str] | None = None,
    log=print,
) -> Engine:
    """Load every model; quantize[i] (int8, int4 or none) is model i's, served_names[i] the id it is served as."""
    from speechrs.engine.engine import load_pipeline

    names = served_names or [served_name(m) for m in models]
    check_served_names(models, names)
    loaded = []
    for name, q, served in zip(models, quantize or ["none"] * len(models), names, strict=True):
        t0 = time.perf_counter()
        m = load_pipeline(name, dtype, device, dac, q, served)
        if m.family == "voxtral":
            m.voxtral.max_audio_s = max_audio_s
        else:
            m.dia.max_input_chars = max_input_chars
        loaded.append(m)
        log(
            f"loaded {name} ({m.family}, {m.source.layout} layout) in {time.perf_counter() - t0:.1f} s; "
            f"{m.plan.summary}"
        )
    engine = Engine(loaded, max_queue, max_batch, request_timeout_s)
    log(f"batching up to {engine.max_batch} requests per model; {max_queue} more may wait")
    return engine


def run(
    models: list[str],
    *,
    host: str,
    port: int,
    dtype: str,
    device: str,
    dac: str | None,
    max_upload_bytes: int,
    max_audio_s: float,
    max_input_chars: int | None = None,
    allowed_dirs: tuple,
    allow_private_hosts: bool,
    warmup: bool,
    quantize: list[str] | None = None,
    security: Security | None = None,
    max_queue: int | None = None,
    max_batch: int | None = None,
    request_timeout_s: float | None = None,
    body_timeout_s: float = 30.0,
    shutdown_grace_s: float = 30.0,
    ui: bool = True,
    voices_dir=None,
    served_names: list[str] | None = None,
    log_level: str = "info",
    access_log: bool = True,
    log=print,
) -> None:
    """Load, warm up and serve until interrupted. file:// audio is open on loopback hosts, else per allowed_dirs.
    Requests are logged one line each on stderr at log_level info (access_log)."""
    security = security or Security()
    set_up_logging(log_level, access_log)
    if not is_loopback(host) and not security.api_key:
        log(
            f"warning: listening on {host} without an API key: anyone who can reach this port can use the models; "
            "set --api-key (or SPEECHRS_API_KEY)"
        )
    engine = build(
        models,
        dtype=dtype,
        device=device,
        dac=dac,
        max_audio_s=max_audio_s,
        max_input_chars=max_input_chars,
        quantize=quantize,
        max_queue=max_queue,
        max_batch=max_batch,
        request_timeout_s=request_timeout_s,
        served_names=served_names,
        log=log,
    )
    if warmup:
        engine.warm_up()
    policy = MediaPolicy(
        max_bytes=max_upload_bytes,
        allow_local_files=is_loopback(host),
        allowed_dirs=tuple(allowed_dirs),
        allow_private_hosts=allow_private_hosts,
    )
    log(f"serving {', '.join(m.name for m in engine.models)} on http://{host}:{port}/v1")
    if ui:
        log(f"a page to try them: http://{'localhost' if is_loopback(host) else host}:{port}/")
    web.run_app(
        make_app(
            engine,
            policy,
            max_upload_bytes,
            security,
            bound_host=host,
            body_timeout_s=body_timeout_s,
            ui=ui,
            voices_dir=voices_dir,
        ),
        host=host,
        port=port,
        handler_cancellation=True,
        print=None,
        access_log=None,
        # on SIGTERM/SIGINT: stop listening, answer queued requests 503 (on_shutdown: drain), give the running
        # one this long, then cancel it and exit 0
        shutdown_timeout=shutdown_grace_s,
    )
