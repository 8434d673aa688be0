"""What the HTTP routes share: the app's keys, its request metrics, body deadlines and SSE writing."""

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from speechrs.dia.voice_store import VoiceStore
from speechrs.engine.engine import Engine
from speechrs.errors import RequestTimeoutError
from speechrs.server.media import MediaPolicy


@dataclass
class Note:
    """What a request's log line says beyond method, route, status and time: its model and audio seconds."""

    model: str = ""
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0


def note(request: web.Request, model: str = "", audio_in_s: float = 0.0, audio_out_s: float = 0.0) -> None:
    """Count audio seconds in the app's metrics and in the request's log line; name its model."""
    metrics, line = request.app[METRICS], request.get(NOTE)
    metrics.audio_in_s += audio_in_s
    metrics.audio_out_s += audio_out_s
    if line is not None:
        line.model = model or line.model
        line.audio_in_s += audio_in_s
        line.audio_out_s += audio_out_s


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
MAX_UPLOAD = web.AppKey("max_upload_bytes", int)  # the largest request body, multipart bodies included
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)  # seconds a client has to send its whole body
NOTE = web.RequestKey("note", Note)  # the request's log line (the errors middleware sets it)
VOICES = web.AppKey("voices", VoiceStore)  # Dia's named voices (voice_store.py)


async def within_body_timeout(request: web.Request, read):
    """await read(), but a client that stalls while sending its body is answered 408 instead of holding its
    connection (and a slot of the body cap) open."""
    limit = request.app[BODY_TIMEOUT]
    try:
        return await asyncio.wait_for(read(), limit)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {limit:g} s") from None


async def first_event(stream):
    """Pull the first event before any byte is sent, so request errors still become 4xx responses."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def last_event(first, stream):
    """The last event of a stream whose first event was already pulled (the summary: Done, SpeechResult)."""
    last = first
    async for event in stream:
        last = event
    return last


async def sse_response(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    return resp


async def send_event(resp: web.StreamResponse, body: dict) -> None:
    await resp.write(f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode())
