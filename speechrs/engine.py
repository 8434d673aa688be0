"""The engine: loaded pipelines by model id, one worker thread per device, and the asyncio bridge.

Pipelines are synchronous and serve one request at a time. The CLI and the Python API iterate them in the
caller's thread (`Engine.run`); the server submits them to the worker (`Engine.stream`), which feeds an
asyncio queue through call_soon_threadsafe. A consumer that stops early (a client that went away) sets the
job's cancel flag; the worker checks it between events, so the next request starts at once.
"""

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .compute import ComputePlan, plan
from .errors import InvalidRequestError, ModelNotFoundError, ServerBusyError, ShuttingDownError
from .hub import DEFAULT_DAC, ModelSource, resolve, resolve_dac

if TYPE_CHECKING:  # the pipelines import torch and the models: loaded when a model is
    from .dia.pipeline import DiaPipeline
    from .voxtral.pipeline import VoxtralPipeline

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    name: str  # the id it was loaded by, as clients name it
    source: ModelSource
    pipeline: "VoxtralPipeline | DiaPipeline"
    plan: ComputePlan  # the device, dtype and quantization it was loaded with, and why

    @property
    def family(self) -> str:
        return self.source.family

    @property
    def voxtral(self) -> "VoxtralPipeline":
        from .voxtral.pipeline import VoxtralPipeline

        if not isinstance(self.pipeline, VoxtralPipeline):
            raise InvalidRequestError(f"model '{self.name}' is a {self.family} model, not Voxtral")
        return self.pipeline

    @property
    def dia(self) -> "DiaPipeline":
        from .dia.pipeline import DiaPipeline

        if not isinstance(self.pipeline, DiaPipeline):
            raise InvalidRequestError(f"model '{self.name}' is a {self.family} model, not Dia")
        return self.pipeline


def load_pipeline(
    model: str, dtype: str = "auto", device: str = "auto", dac: str | None = None, quantize: str | None = None
) -> Loaded:
    """Resolve a hub id or directory, detect family and layout, and build its pipeline on `device` with the compute
    path compute.plan chooses (dtype, int8 / int4 weights)."""
    from .dia.pipeline import DiaPipeline
    from .voxtral.pipeline import VoxtralPipeline

    asked, device = device, resolve_device(device)
    try:
        how = plan(device, dtype, quantize, chosen_by="auto" if asked == "auto" else "")
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    source = resolve(model)
    if source.family == "dia":
        dac_dir = resolve_dac(dac or DEFAULT_DAC[source.layout])
        pipeline: VoxtralPipeline | DiaPipeline = DiaPipeline.load(
            source.directory, dac_dir, how.dtype, device, how.quantize
        )
    else:
        pipeline = VoxtralPipeline.load(source.directory, source.layout, how.dtype, device, how.quantize)
    return Loaded(model, source, pipeline, how)


def resolve_device(device: str) -> str:
    """'auto' -> cuda, then mps, then cpu, whichever this machine has; any other name is checked and kept."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidRequestError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"device '{device}' asked for, but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidRequestError(
            f"device '{device}' does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


@dataclass
class _Job:
    make_events: Callable[[], Iterator]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)


_END = object()


def _post(job: _Job, fn, *args) -> bool:
    """Run fn(*args) on the request's event loop; False once that loop is gone (the server shut down)."""
    try:
        job.loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:
        return False


class Engine:
    def __init__(self, models: list[Loaded], max_queue: int | None = None):
        """max_queue: requests that may wait behind the running one; past it a request is refused at once
        (ServerBusyError: a 429 with Retry-After), so neither waits nor memory grow without bound."""
        if not models:
            raise ValueError("an engine needs at least one model")
        self.models = models
        self.max_queue = max_queue
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self.queue_depth = 0  # requests submitted and not yet finished (running one included)
        self.busy_s = 0.0  # worker time spent on requests
        self.finished = 0  # requests the worker has finished
        self.draining = False  # set by drain(): waiting requests are refused, the running one finishes

    def get(self, model: str | None, family: str, route: str) -> Loaded:
        """`model` as a client names it; "default" (or None) is the first loaded model of `family`."""
        if model in (None, "", "default"):
            for m in self.models:
                if m.family == family:
                    return m
            raise InvalidRequestError(
                f"{route} needs a {family} model; this server runs "
                f"{', '.join(f'{m.name} ({m.family})' for m in self.models)}"
            )
        for m in self.models:
            if m.name == model:
                if m.family != family:
                    raise InvalidRequestError(f"model '{model}' is a {m.family} model; {route} needs {family}")
                return m
        raise ModelNotFoundError(
            f"model '{model}' is not loaded; available: {', '.join(m.name for m in self.models)} (or 'default')"
        )

    @staticmethod
    def run(make_events: Callable[[], Iterator]) -> Iterator:
        """Synchronous path (CLI, Python API): the pipeline's generator in the caller's thread."""
        return make_events()

    def start(self) -> None:
        """Start the worker, unless it runs; an engine drained and stopped starts afresh (tests share one engine
        between several apps, each of which drains and stops it when it closes)."""
        if self._worker is None:
            self.draining = False
            self._worker = threading.Thread(target=self._work, name="speechrs-worker", daemon=True)
            self._worker.start()

    def drain(self) -> None:
        """Stop taking work: requests still waiting get ShuttingDownError (a 503) at once, and new ones too; the
        running request goes on (the server gives it a grace period, then cancels its client)."""
        self.draining = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:  # stop() already asked the worker to end: leave that to it
                self._jobs.put(None)
                return
            _post(job, self._finish, job, ShuttingDownError("the server is shutting down; the request was not started"))

    def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    async def stream(self, make_events: Callable[[], Iterator]) -> AsyncGenerator:
        """Run `make_events()` on the worker and yield its events here; exceptions are re-raised here."""
        if self.draining and self._worker is not None:
            raise ShuttingDownError("the server is shutting down; retry on another instance or after its restart")
        if self.max_queue is not None and self.queue_depth > self.max_queue:
            per_request = self.busy_s / self.finished if self.finished else 10.0
            raise ServerBusyError(
                f"the server is busy: {self.queue_depth} requests are running or waiting (--max-queue "
                f"{self.max_queue}); retry later",
                max(1, math.ceil(per_request * (self.queue_depth - self.max_queue))),
            )
        self.start()
        job = _Job(make_events, asyncio.get_running_loop(), asyncio.Queue())
        self.queue_depth += 1
        self._jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # no-op when finished; frees the worker when the consumer left early

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            t0 = time.perf_counter()
            events: Iterator | None = None
            try:
                if self.draining:
                    raise ShuttingDownError("the server is shutting down; the request was not started")
                if not job.cancelled.is_set():
                    events = job.make_events()
                    for event in events:
                        if job.cancelled.is_set() or not _post(job, job.events.put_nowait, event):
                            log.info("request cancelled by its client; worker freed")
                            break
                result = _END
            except Exception as e:  # handed to the awaiting request, which turns it into a response
                result = e
            finally:
                close = getattr(events, "close", None)  # a generator's finally blocks run now, on this thread
                if close is not None:
                    close()
                self.busy_s += time.perf_counter() - t0
            _post(job, self._finish, job, result)

    def _finish(self, job: _Job, result) -> None:
        self.queue_depth -= 1
        self.finished += 1
        job.events.put_nowait(result)

    def warm_up(self) -> None:
        """One tiny request per model, so the first client does not pay for lazy initialisation."""
        import numpy as np

        from .dia.events import SpeakOptions
        from .voxtral.pipeline import GenerationOptions

        for m in self.models:
            t0 = time.perf_counter()
            if m.family == "voxtral":
                list(m.voxtral.transcribe((np.zeros(16000, np.float32), 16000), None, GenerationOptions(max_tokens=1)))
            else:
                list(m.dia.speak("[S1] Warm up.", SpeakOptions(max_tokens=m.dia.cfg.max_delay + 2, seed=0)))
            log.info("warmed up %s in %.1f s", m.name, time.perf_counter() - t0)
