"""The engine: loaded pipelines by model id, the worker that batches their requests, and the asyncio bridge.

A pipeline's request is a generator of events and decoder steps (request.py). The CLI and the Python API
iterate it alone in the caller's thread (`Engine.run`); the server submits it to the worker (`Engine.stream`),
whose scheduler decodes the requests of a model together (scheduler.py) and feeds each request's asyncio queue
through call_soon_threadsafe. A consumer that stops early (a client that went away) sets the job's cancel flag;
the worker checks it between steps and events, so its row is freed at once.
"""

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from speechrs.engine.scheduler import END, Job, Scheduler, post
from speechrs.errors import InvalidRequestError, ModelNotFoundError, ServerBusyError, ShuttingDownError
from speechrs.hub import DEFAULT_DAC, ModelSource, resolve, resolve_dac
from speechrs.linear.compute import ComputePlan, plan
from speechrs.linear.kinds import check_quantization
from speechrs.linear.quant_store import quantization_to_load
from speechrs.weights import parse_dtype

if TYPE_CHECKING:  # the pipelines import torch and the models: loaded when a model is
    from speechrs.dia.pipeline import DiaPipeline
    from speechrs.voxtral.pipeline import VoxtralPipeline

log = logging.getLogger(__name__)


# OpenAI's model names, taken for the first loaded model of the family their routes need, so code written for
# OpenAI's API runs unchanged
OPENAI_MODELS = {
    "voxtral": ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"),
    "dia": ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"),
}


def served_name(model: str) -> str:
    """The id a model is served as by default: a local directory's name, else the hub id as given."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


@dataclass
class Loaded:
    name: str  # the id clients name it by (--served-model-name, else served_name of the -m given)
    source: ModelSource
    pipeline: "VoxtralPipeline | DiaPipeline"
    plan: ComputePlan  # the device, dtype and quantization it was loaded with, and why
    aliases: tuple[str, ...] = ()  # other names clients may use: the -m it was loaded by

    @property
    def family(self) -> str:
        return self.source.family

    @property
    def voxtral(self) -> "VoxtralPipeline":
        from speechrs.voxtral.pipeline import VoxtralPipeline

        if not isinstance(self.pipeline, VoxtralPipeline):
            raise InvalidRequestError(f"model '{self.name}' is a {self.family} model, not Voxtral")
        return self.pipeline

    @property
    def dia(self) -> "DiaPipeline":
        from speechrs.dia.pipeline import DiaPipeline

        if not isinstance(self.pipeline, DiaPipeline):
            raise InvalidRequestError(f"model '{self.name}' is a {self.family} model, not Dia")
        return self.pipeline


def load_pipeline(
    model: str,
    dtype: str = "auto",
    device: str = "auto",
    dac: str | None = None,
    quantize: str | None = None,
    served: str | None = None,
) -> Loaded:
    """Resolve a hub id or directory, detect family and layout, and build its pipeline on `device` with the compute
    path compute.plan chooses (dtype, int8 / int4 weights). `served`: the id clients use (default served_name),
    the -m text staying an alias."""
    from speechrs.dia.model import Dia
    from speechrs.dia.pipeline import DiaPipeline
    from speechrs.voxtral.model import Voxtral
    from speechrs.voxtral.pipeline import VoxtralPipeline

    asked, device = device, resolve_device(device)
    try:
        quantize = check_quantization(quantize)
        parse_dtype(dtype)
    except ValueError as e:  # before resolving the model: a mistake is said before any slow work
        raise InvalidRequestError(str(e)) from None
    source = resolve(model)
    model_class = Dia if source.family == "dia" else Voxtral
    try:  # a `speechrs quantize` directory brings its own quantization
        stored = quantization_to_load(source.directory, quantize)
        how = plan(device, dtype, stored, "auto" if asked == "auto" else "", model_class.ALWAYS_INT8)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    if source.family == "dia":
        dac_dir = resolve_dac(dac or DEFAULT_DAC[source.layout])
        pipeline: VoxtralPipeline | DiaPipeline = DiaPipeline.load(
            source.directory, dac_dir, how.dtype, device, how.quantize
        )
    else:
        pipeline = VoxtralPipeline.load(source.directory, source.layout, how.dtype, device, how.quantize)
    name = served or served_name(model)
    return Loaded(name, source, pipeline, how, (model,) if name != model else ())


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


def torch_device_type(device) -> str:
    """'cuda:1' -> 'cuda'; a torch.device -> its type."""
    return str(device).split(":")[0]


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


DEFAULT_MAX_BATCH = {"cpu": 4, "cuda": 16, "mps": 8}  # requests of one model decoded together, per device type


class Engine:
    def __init__(
        self,
        models: list[Loaded],
        max_queue: int | None = None,
        max_batch: int | None = None,
        request_timeout_s: float | None = None,
    ):
        """max_queue: requests that may wait beyond a full batch; past it a request is refused at once
        (ServerBusyError: a 429 with Retry-After), so neither waits nor memory grow without bound. max_batch:
        requests of one model decoded together (scheduler.py; None: DEFAULT_MAX_BATCH for the device).
        request_timeout_s: a request still running after this long is failed (RequestTimeoutError)."""
        if not models:
            raise ValueError("an engine needs at least one model")
        self.models = models
        self.max_queue = max_queue
        device = getattr(models[0].pipeline, "device", "cpu")
        self.max_batch = max_batch or DEFAULT_MAX_BATCH.get(torch_device_type(device), 4)
        self.request_timeout_s = request_timeout_s
        self.scheduler = Scheduler(self.max_batch, self._finish)
        self._worker: threading.Thread | None = None
        self.queue_depth = 0  # requests submitted and not yet finished (running ones included)
        self.finished = 0  # requests the worker has finished

    @property
    def busy_s(self) -> float:
        return self.scheduler.busy_s

    @property
    def draining(self) -> bool:  # set by drain(): waiting requests are refused, running ones finish
        return self.scheduler.draining

    def get(self, model: str | None, family: str, route: str) -> Loaded:
        """`model` as a client names it: a served name or alias; "default" (or None), or one of OpenAI's model names
        for `family` (OPENAI_MODELS), is the first loaded model of `family`."""
        for other, names in OPENAI_MODELS.items():
            if model in names and other != family:
                raise InvalidRequestError(f"'{model}' is OpenAI's name for a {other} model; {route} needs {family}")
        if model in (None, "", "default") or model in OPENAI_MODELS.get(family, ()):
            for m in self.models:
                if m.family == family:
                    return m
            raise InvalidRequestError(
                f"{route} needs a {family} model; this server runs "
                f"{', '.join(f'{m.name} ({m.family})' for m in self.models)}"
            )
        for m in self.models:
            if model == m.name or model in m.aliases:
                if m.family != family:
                    raise InvalidRequestError(f"model '{model}' is a {m.family} model; {route} needs {family}")
                return m
        raise ModelNotFoundError(
            f"model '{model}' is not loaded; available: {', '.join(m.name for m in self.models)} (or 'default')"
        )

    @staticmethod
    def run(make_events: Callable[[], Iterator]) -> Iterator:
        """Synchronous path (CLI, Python API): the request alone, in the caller's thread (request.py)."""
        return make_events()

    def waiting(self, m: Loaded) -> int:
        """Requests for model `m` made and waiting for a place in its batch."""
        return self.scheduler.waiting_by(m.pipeline)

    def start(self) -> None:
        """Start the worker, unless it runs; an engine drained and stopped starts afresh (tests share one engine
        between several apps, each of which drains and stops it when it closes)."""
        if self._worker is None:
            self.scheduler.draining = False
            self._worker = threading.Thread(target=self.scheduler.work, name="speechrs-worker", daemon=True)
            self._worker.start()

    def drain(self) -> None:
        """Stop taking work: requests still waiting get ShuttingDownError (a 503) at once, and new ones too; the
        running ones go on (the server gives them a grace period, then cancels their clients)."""
        self.scheduler.draining = True
        refused = ShuttingDownError("the server is shutting down; the request was not started")
        for taken in self.scheduler.refuse_waiting():  # taken by the worker before it began a long piece of work
            post(taken, self._finish, taken, refused)
        while True:
            try:
                job = self.scheduler.jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:  # stop() already asked the worker to end: leave that to it
                self.scheduler.jobs.put(None)
                return
            post(job, self._finish, job, refused)

    def stop(self) -> None:
        if self._worker is not None:
            self.scheduler.jobs.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    async def stream(self, make_events: Callable[[], Iterator]) -> AsyncGenerator:
        """Run `make_events()` on the worker, batched with other requests of its model, and yield its events here;
        exceptions are re-raised here."""
        if self.draining and self._worker is not None:
            raise ShuttingDownError("the server is shutting down; retry on another instance or after its restart")
        # a full batch plus max_queue waiting, counted from what was submitted (a burst arrives before the worker
        # has admitted any of it)
        waiting = self.queue_depth - self.max_batch
        if self.max_queue is not None and waiting >= self.max_queue:
            per_request = self.busy_s / self.finished if self.finished else 10.0
            raise ServerBusyError(
                f"the server is busy: {self.queue_depth} requests are running or waiting (--max-batch "
                f"{self.max_batch}, --max-queue {self.max_queue}); retry later",
                max(1, math.ceil(per_request * (waiting + 1) / self.max_batch)),
            )
        self.start()
        deadline = time.monotonic() + self.request_timeout_s if self.request_timeout_s else None
        job = Job(make_events, asyncio.get_running_loop(), asyncio.Queue(), deadline)
        self.queue_depth += 1
        self.scheduler.jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # no-op when finished; frees its batch row when the consumer left early

    def _finish(self, job: Job, result) -> None:
        if job.answered:  # refused by drain() and ended again by the worker
            return
        job.answered = True
        self.queue_depth -= 1
        self.finished += 1
        job.events.put_nowait(result)

    def warm_up(self) -> None:
        """One tiny request per model, so the first client does not pay for lazy initialisation (nor the first
        batch for the probe of whether batching keeps each request's bits: ProbedBatching)."""
        import numpy as np

        from speechrs.dia.events import SpeakOptions
        from speechrs.voxtral.events import GenerationOptions

        for m in self.models:
            t0 = time.perf_counter()
            if self.scheduler.max_batch > 1:
                m.pipeline.model.batch_invariant  # noqa: B018 (probed on first read)
            if m.family == "voxtral":
                list(m.voxtral.transcribe((np.zeros(16000, np.float32), 16000), None, GenerationOptions(max_tokens=1)))
            else:
                list(m.dia.speak("[S1] Warm up.", SpeakOptions(max_tokens=m.dia.cfg.max_delay + 2, seed=0)))
            log.info("warmed up %s in %.1f s", m.name, time.perf_counter() - t0)
