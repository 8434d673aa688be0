"""OpenAI-compatible HTTP server: a translation layer over the engine (parse -> options -> engine -> format)."""

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from . import openai_api as oa
from .engine import Engine
from .errors import (
    AudioError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerBusyError,
    ShuttingDownError,
    SpeechrsError,
    UnsupportedModelError,
)
from .guard import Security, add_cors_headers, is_loopback, make_guard
from .media import MediaPolicy, fetch_audio, fetch_url_or_base64
from .messages import parse_messages
from .voxtral.pipeline import Audio, Done, Token

log = logging.getLogger(__name__)


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)  # (route, status) -> count
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    speech_wall_s: float = 0.0  # time spent producing audio_out_s

    def prometheus(self, engine: Engine) -> str:
        lines = ["# TYPE speechrs_requests_total counter"]
        lines += [
            f'speechrs_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())
        ]
        rtf = self.audio_out_s / self.speech_wall_s if self.speech_wall_s else 0.0
        lines += [
            "# TYPE speechrs_audio_input_seconds_total counter",
            f"speechrs_audio_input_seconds_total {self.audio_in_s:.3f}",
            "# TYPE speechrs_audio_output_seconds_total counter",
            f"speechrs_audio_output_seconds_total {self.audio_out_s:.3f}",
            "# HELP speechrs_speech_realtime_factor seconds of speech produced per second of work",
            "# TYPE speechrs_speech_realtime_factor gauge",
            f"speechrs_speech_realtime_factor {rtf:.3f}",
            "# HELP speechrs_queue_depth requests running or waiting",
            "# TYPE speechrs_queue_depth gauge",
            f"speechrs_queue_depth {engine.queue_depth}",
            "# HELP speechrs_waiting_requests requests made and waiting for a place in their model's batch",
            "# TYPE speechrs_waiting_requests gauge",
            *(f'speechrs_waiting_requests{{model="{m.name}"}} {engine.waiting(m)}' for m in engine.models),
            "# TYPE speechrs_worker_busy_seconds_total counter",
            f"speechrs_worker_busy_seconds_total {engine.busy_s:.3f}",
            *engine.scheduler.batch_sizes.prometheus(
                "speechrs_batch_size", "requests decoded together in one decoder step"
            ),
            *engine.scheduler.queue_wait_s.prometheus(
                "speechrs_queue_wait_seconds", "time from a request's arrival to the start of its work"
            ),
        ]
        return "\n".join(lines) + "\n"


ENGINE = web.AppKey("engine", Engine)
POLICY = web.AppKey("policy", MediaPolicy)
METRICS = web.AppKey("metrics", Metrics)
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)  # seconds a client has to send its whole body

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
    metrics = request.app[METRICS]
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
    metrics.requests[(request.path if request.match_info.route.resource else "unmatched", response.status)] += 1
    return response


async def _within_body_timeout(request: web.Request, read):
    """await read(), but a client that stalls while sending its body is answered 408 instead of holding its
    connection (and a slot of the body cap) open."""
    limit = request.app[BODY_TIMEOUT]
    try:
        return await asyncio.wait_for(read(), limit)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {limit:g} s") from None


async def _json(request: web.Request) -> dict:
    try:
        body = await _within_body_timeout(request, request.json)
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


async def _first(stream):
    """Pull the first event before any byte is sent, so request errors still become 4xx responses."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _last(first, stream):
    """The last event of a stream whose first event was already pulled (the summary: Done, SpeechResult)."""
    last = first
    async for event in stream:
        last = event
    return last


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine, policy = request.app[ENGINE], request.app[POLICY]
    model_id, messages, opts, stream, include_usage = oa.chat_request(await _json(request))
    loaded = engine.get(model_id, "voxtral", "/v1/chat/completions")
    parsed = await _resolve_audio(parse_messages(messages, python_parts=False), policy)
    async with aclosing(engine.stream(lambda: loaded.voxtral.chat(parsed, opts))) as events:
        return await _chat_response(request, loaded.name, events, stream, include_usage)


async def _chat_response(request, model: str, events, stream: bool, include_usage: bool) -> web.StreamResponse:
    first = await _first(events)
    if not stream:
        done = await _last(first, events)
        request.app[METRICS].audio_in_s += done.usage.audio_seconds
        return web.json_response(oa.chat_completion(model, done.text, done.finish_reason, done.usage))
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    resp = await _sse(request)
    await _send(resp, oa.chat_chunk(cid, model, {"role": "assistant", "content": ""}))
    event = first
    while event is not None:
        if isinstance(event, Token) and event.text:
            await _send(resp, oa.chat_chunk(cid, model, {"content": event.text}))
        elif isinstance(event, Done):
            request.app[METRICS].audio_in_s += event.usage.audio_seconds
            await _send(resp, oa.chat_chunk(cid, model, {}, event.finish_reason))
            if include_usage:
                await _send(resp, oa.chat_chunk(cid, model, {}, usage=event.usage))
        event = await _first(events)
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def transcriptions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    form, audio = await _read_form(request)
    if not audio:
        raise InvalidRequestError("'file' is required and must not be empty", "file")
    model_id, language, fmt, stream, opts = oa.transcription_request(form)
    loaded = engine.get(model_id, "voxtral", "/v1/audio/transcriptions")
    async with aclosing(engine.stream(lambda: loaded.voxtral.transcribe(audio, language, opts))) as events:
        return await _transcription_response(request, events, fmt, stream)


async def _read_form(request: web.Request) -> tuple[dict[str, str], bytes | None]:
    """A multipart/form-data body -> (its text fields, the 'file' field's bytes); malformed bodies are a 400."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequestError("send multipart/form-data with a 'file' field", "file")
    form: dict[str, str] = {}
    audio: bytes | None = None

    async def read() -> None:
        nonlocal audio
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequestError("nested multipart bodies are not supported; send flat form fields", "file")
            if part.name == "file":
                audio = bytes(await part.read())
            elif part.name:
                try:
                    form[part.name] = (await part.read()).decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidRequestError(f"form field '{part.name}' is not UTF-8 text", part.name) from None

    try:
        await _within_body_timeout(request, read)
    except (ValueError, AssertionError):  # aiohttp's parser: no boundary, a missing or broken boundary line
        raise InvalidRequestError(
            "the multipart/form-data body is malformed (boundary or part headers)", "file"
        ) from None
    return form, audio


async def _transcription_response(request, events, fmt: str, stream: bool) -> web.StreamResponse:
    first = await _first(events)
    if stream:
        resp = await _sse(request)
        event = first
        while event is not None:
            if isinstance(event, Token) and event.text:
                await _send(resp, {"type": "transcript.text.delta", "delta": event.text})
            elif isinstance(event, Done):
                request.app[METRICS].audio_in_s += event.usage.audio_seconds
                await _send(
                    resp,
                    {
                        "type": "transcript.text.done",
                        "text": event.text,
                        "usage": oa.transcription(event.text, event.usage)["usage"],
                    },
                )
            event = await _first(events)
        await resp.write(b"data: [DONE]\n\n")
        return resp
    done = await _last(first, events)
    request.app[METRICS].audio_in_s += done.usage.audio_seconds
    if fmt == "text":
        return web.Response(text=done.text, content_type="text/plain")
    return web.json_response(oa.transcription(done.text, done.usage))


async def speech(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await _json(request)
    model_id, text, fmt, opts, stream_format = oa.speech_request(body)
    ref_url, ref_text = oa.speech_reference(body)
    loaded = engine.get(model_id, "dia", "/v1/audio/speech")
    ref_audio = None if ref_url is None else await fetch_url_or_base64(ref_url, request.app[POLICY], "ref_audio")
    streamed = oa.streams_audio(fmt, stream_format)
    t0 = time.perf_counter()

    def run():
        return loaded.dia.speak(text, opts, stream_audio=streamed, ref_audio=ref_audio, ref_text=ref_text)

    async with aclosing(engine.stream(run)) as events:
        first = await _first(events)  # request errors (bad options, text too long) are still 4xx here
        if streamed:
            return await _speech_stream(request, loaded.dia, first, events, fmt, stream_format, t0)
        result = await _last(first, events)
    _count_speech(request, result, t0)
    # encoding (mp3, opus resampling) takes real time: keep it off the event loop
    data, content_type = await asyncio.to_thread(oa.speech_bytes, result.pcm, result.sample_rate, fmt)
    return web.Response(body=data, headers={"Content-Type": content_type})


async def _speech_stream(request, pipeline, first, events, fmt: str, stream_format: str | None, t0: float):
    """SSE speech.audio.delta / .done events, or raw pcm / wav bytes in a chunked response, as pieces arrive."""
    from .audio import to_s16le, wav_stream_header
    from .dia.events import AudioChunk, SpeechResult

    rate = pipeline.codec.cfg.sample_rate
    if stream_format == "sse":
        resp = await _sse(request)
    else:
        resp = web.StreamResponse(headers={"Content-Type": oa.speech_content_type(fmt, rate)})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if fmt == "wav":
            await resp.write(wav_stream_header(rate))
    event = first
    while event is not None:
        if isinstance(event, AudioChunk):
            pcm = to_s16le(event.pcm)
            if stream_format == "sse":
                await _send(resp, {"type": "speech.audio.delta", "audio": base64.b64encode(pcm).decode()})
            else:
                await resp.write(pcm)
        elif isinstance(event, SpeechResult):
            _count_speech(request, event, t0)
            if stream_format == "sse":
                await _send(resp, oa.speech_done(event.timings["text_tokens"], event.timings["steps"]))
        event = await _first(events)
    await resp.write_eof()
    return resp


def _count_speech(request, result, t0: float) -> None:
    metrics = request.app[METRICS]
    metrics.audio_out_s += result.duration_s
    metrics.speech_wall_s += time.perf_counter() - t0


async def models(request: web.Request) -> web.Response:
    data = [
        {"id": m.name, "object": "model", "created": 0, "owned_by": "speechrs", "family": m.family}
        for m in request.app[ENGINE].models
    ]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].prometheus(request.app[ENGINE]), content_type="text/plain")


async def _sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    return resp


async def _send(resp: web.StreamResponse, body: dict) -> None:
    await resp.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())


def make_app(
    engine: Engine,
    policy: MediaPolicy | None = None,
    max_upload_bytes: int = 25 * 2**20,
    security: Security | None = None,
    bound_host: str | None = None,
    body_timeout_s: float = 30.0,
) -> web.Application:
    """The app over `engine`: media under `policy`, and the Host / content-type / API-key / CORS rules of
    `security` (guard.py; loopback Host names and `bound_host` are always allowed); a client has body_timeout_s
    to send its whole body."""
    guard = make_guard(security or Security(), bound_host)
    app = web.Application(middlewares=[errors, guard], client_max_size=max_upload_bytes)
    app.on_response_prepare.append(add_cors_headers)
    app[ENGINE], app[POLICY], app[METRICS] = engine, policy or MediaPolicy(), Metrics()
    app[BODY_TIMEOUT] = body_timeout_s
    app.router.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.post("/v1/audio/transcriptions", transcriptions),
            web.post("/v1/audio/speech", speech),
            web.get("/v1/models", models),
            web.get("/health", health),
            web.get("/metrics", metrics),
        ]
    )

    async def worker(app: web.Application):
        app[ENGINE].start()
        yield
        app[ENGINE].stop()

    async def drain(app: web.Application) -> None:  # shutdown begins: queued requests 503, the running one goes on
        app[ENGINE].drain()

    app.cleanup_ctx.append(worker)
    app.on_shutdown.append(drain)
    return app


def build(
    models: list[str],
    *,
    dtype="auto",
    device="auto",
    dac=None,
    max_audio_s=None,
    quantize: list[str] | None = None,
    max_queue: int | None = None,
    max_batch: int | None = None,
    request_timeout_s: float | None = None,
    log=print,
) -> Engine:
    """Load every model; quantize[i] (int8, int4 or none) is model i's."""
    from .engine import load_pipeline

    loaded = []
    for name, q in zip(models, quantize or ["none"] * len(models), strict=True):
        t0 = time.perf_counter()
        m = load_pipeline(name, dtype, device, dac, q)
        if m.family == "voxtral":
            m.voxtral.max_audio_s = max_audio_s
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
    log=print,
) -> None:
    """Load, warm up and serve until interrupted. file:// audio is open on loopback hosts, else per allowed_dirs."""
    security = security or Security()
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
        quantize=quantize,
        max_queue=max_queue,
        max_batch=max_batch,
        request_timeout_s=request_timeout_s,
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
    web.run_app(
        make_app(engine, policy, max_upload_bytes, security, bound_host=host, body_timeout_s=body_timeout_s),
        host=host,
        port=port,
        handler_cancellation=True,
        print=None,
        access_log=None,
        # on SIGTERM/SIGINT: stop listening, answer queued requests 503 (on_shutdown: drain), give the running
        # one this long, then cancel it and exit 0
        shutdown_timeout=shutdown_grace_s,
    )
