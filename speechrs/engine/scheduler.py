"""The engine's worker: continuous batching of decoder steps across the requests of each model.

nano-vllm's scheduler, over request.py's generators: `waiting` holds requests made but not started, `running`
those that have started. Each pass of the worker
1. takes new jobs from the queue and makes their requests (the cheap checks: a bad request fails here, alone);
2. admits at most one waiting request per model while the model runs fewer than `max_batch`: its own work up to
   its first decoder step (audio encoder and prompt, or text encoder and reference) runs now, between two steps
   of the others, so running streams pause for one prefill, not for a whole request (a long audio's encoder and a
   long prompt's prefill yield a Pause between pieces);
3. drops requests whose client went away or whose deadline passed (their generators are closed: clean-up runs);
4. runs one batched decoder step per model over every running request waiting for one, and resumes each up to
   its next step (sampling, streaming pieces, the DAC, events for its client);
5. resumes the requests that paused in their own work, up to their next step or Pause.
An error raised inside a request (bad audio found late, a DAC failure) fails that request alone; an error in a
batched step fails the requests of that step. Events go to each request's asyncio queue via call_soon_threadsafe.
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from speechrs.errors import RequestTimeoutError, ShuttingDownError
from speechrs.request import Pause, Request, StepInput, Stepper
from speechrs.stats import Histogram

log = logging.getLogger(__name__)

END = object()  # the last item a job's queue receives when it ended without an error


@dataclass(eq=False)
class Job:
    make_events: Callable[[], Iterator]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    deadline: float | None = None  # time.monotonic() past which the request is failed
    submitted: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: bool = False  # finish() ran: set and read on the job's event loop only


@dataclass(eq=False)
class _Run:
    job: Job
    items: Iterator  # the request's events and StepInputs (request.py), or plain events
    stepper: Stepper | None  # the pipeline that steps it; None: an iterator with no steps, run through at once
    pending: StepInput | None = None  # set while it waits for the next batched step
    paused: bool = False  # in its own long work (request.Pause): resumed after the others' next step
    refused: bool = False  # answered by refuse_waiting() while the worker was busy: never admitted


def post(job: Job, fn, *args) -> bool:
    """Run fn(*args) on the request's event loop; False once that loop is gone (the server shut down)."""
    try:
        job.loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:
        return False


class Scheduler:
    def __init__(self, max_batch: int, finish: Callable[[Job, Any], None]):
        """max_batch: requests of one model decoded together; finish(job, END or an exception) runs on the job's
        event loop, at least once per job (refuse_waiting's answer and the worker's later end of the same run)."""
        self.max_batch = max_batch
        self._finish = finish
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.waiting: list[_Run] = []
        self.running: list[_Run] = []
        self.draining = False
        self._admission = threading.Lock()  # refuse_waiting (any thread) against _admit (the worker)
        self.busy_s = 0.0  # worker time spent on requests
        self.batch_sizes = Histogram((1, 2, 3, 4, 6, 8, 12, 16, 32))
        self.queue_wait_s = Histogram((0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))

    def waiting_by(self, stepper: object) -> int:
        return sum(r.stepper is stepper and not r.refused for r in self.waiting)

    def refuse_waiting(self) -> list[Job]:
        """The jobs of the requests taken from the queue and not admitted yet, marked so they never will be: drain
        answers them now, while the worker may be inside one long piece of work (another request's encoder); the
        worker ends them (closes their generators) at its next pass."""
        with self._admission:
            runs = [r for r in self.waiting if not r.refused]
            for run in runs:
                run.refused = True
        return [r.job for r in runs]

    def work(self) -> None:
        """The worker thread's body, until stop() queues None."""
        import torch

        with torch.inference_mode():
            while self._take_jobs(block=not (self.waiting or self.running)):
                t0 = time.perf_counter()
                if self.draining:
                    for run in list(self.waiting):
                        self.waiting.remove(run)
                        self._end(run, ShuttingDownError("the server is shutting down; the request was not started"))
                self._admit()
                self._expire()
                self._step()
                self._resume_paused()
                self.busy_s += time.perf_counter() - t0

    def _take_jobs(self, block: bool) -> bool:
        """Make the requests of the jobs queued so far (waiting for one when idle); False once stop() was asked."""
        while True:
            try:
                job = self.jobs.get(block=block)
            except queue.Empty:
                return True
            block = False
            if job is None:
                for run in self.waiting + self.running:
                    self._end(run, ShuttingDownError("the server stopped before the request finished"))
                return False
            run = _Run(job, iter(()), None)
            try:
                if self.draining:
                    raise ShuttingDownError("the server is shutting down; the request was not started")
                request = job.make_events()  # checks the request; heavy work waits for admission
            except Exception as e:  # handed to the awaiting request, which turns it into a response
                self._end(run, e)
                continue
            if isinstance(request, Request):
                run.items, run.stepper = request.steps, request.pipeline
            else:
                run.items = request
            self.waiting.append(run)

    def _admit(self) -> None:
        admitted: list[object] = []
        for run in list(self.waiting):
            if run.stepper in admitted:
                continue
            if run.stepper is not None and sum(r.stepper is run.stepper for r in self.running) >= self.max_batch:
                continue
            with self._admission:
                if run.refused:
                    continue
                self.waiting.remove(run)
            self.queue_wait_s.observe(time.monotonic() - run.job.submitted)
            admitted.append(run.stepper)
            self.running.append(run)
            self._advance(run)

    def _expire(self) -> None:
        now = time.monotonic()
        for run in self.running + self.waiting:
            if run.job.cancelled.is_set():
                log.info("request cancelled by its client; its batch row freed")
                self._end(run, END)
            elif run.job.deadline is not None and now > run.job.deadline:
                took = now - run.job.submitted
                message = f"the request took {took:.0f} s, past the server's --request-timeout"
                self._end(run, RequestTimeoutError(message))

    def _step(self) -> None:
        groups: dict[int, list[_Run]] = {}
        for run in self.running:
            if run.pending is not None:
                groups.setdefault(id(run.stepper), []).append(run)
        for runs in groups.values():
            stepper = runs[0].stepper
            assert stepper is not None, "only a pipeline's request waits for a step"
            try:
                stepper.step([r.pending for r in runs if r.pending is not None])
            except Exception as e:  # the model failed (out of memory...): the state of each row is unknown
                log.exception("a batched decoder step failed")
                for run in runs:
                    self._end(run, e)
                continue
            self.batch_sizes.observe(len(runs))
            for run in runs:
                run.pending = None
                self._advance(run)

    def _resume_paused(self) -> None:
        for run in [r for r in self.running if r.paused]:
            run.paused = False
            self._advance(run)

    def _advance(self, run: _Run) -> None:
        """Resume the request until it asks for a decoder step or ends, its events posted to its client."""
        job = run.job
        try:
            for item in run.items:
                if isinstance(item, StepInput):
                    run.pending = item
                    return
                if isinstance(item, Pause):
                    run.paused = True
                    return
                if job.cancelled.is_set() or not post(job, job.events.put_nowait, item):
                    log.info("request cancelled by its client; worker freed")
                    break
            result: Any = END
        except Exception as e:  # this request alone fails
            result = e
        self._end(run, result)

    def _end(self, run: _Run, result: Any) -> None:
        close = getattr(run.items, "close", None)  # a generator's finally blocks run now, on this thread
        if close is not None:
            try:
                close()
            except Exception:  # a clean-up that fails must not take the worker down
                log.exception("closing a request failed")
        for runs in (self.running, self.waiting):
            if run in runs:
                runs.remove(run)
        post(run.job, self._finish, run.job, result)
