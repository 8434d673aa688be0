"""One request's work, in the form that lets many requests share a decoder step.

A pipeline turns a request into a generator (`Request.steps`) that does the request's own work in line (checks,
audio encoding, prefill, sampling, the DAC, streaming pieces) and yields two kinds of items: events for the caller
(tokens, steps, audio, the result), and a `StepInput` each time it needs the decoder to run one step on its
rows (and a `PAUSE` inside long work of its own, where others may take a step). Whoever drives the generator
answers a StepInput by filling its `logits`, then resumes it:

- alone (CLI, Python API): iterating a Request answers each StepInput with a batch-of-one step;
- together (the server): engine/scheduler.py collects the StepInputs of every running request of a model and
  answers them all with one batched step (`pipeline.step`), the linears reading each weight once for all rows.

Both run the same pipeline code; the batched forward gives each request its own positions and caches, so a
request's result does not depend on what ran beside it (tests/test_batching.py).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from speechrs.layers import RequestRows


@dataclass(eq=False)
class StepInput:
    """A request's rows for the next decoder step: `x` its input (Voxtral: token ids (1, 1); Dia: its CFG pair's
    codes (2, 1, C)), `segment` its position and caches. The driver sets `logits` (the step's output for these
    rows) before resuming the request."""

    x: torch.Tensor
    segment: RequestRows
    logits: torch.Tensor | None = None


class Pause:
    """Yielded between two pieces of a request's own long work (Voxtral's audio encoder, 30 s at a time): a
    scheduler runs the other requests' next step before resuming it, so their streams keep flowing."""


PAUSE = Pause()


class Stepper(Protocol):
    def step(self, inputs: list[StepInput]) -> None:
        """One batched decoder step over `inputs` (one row group each), setting each one's logits."""


class Request(Iterator):
    """A pipeline's request: iterate it for its events (run alone), or hand `steps` and `pipeline` to a
    scheduler that batches it with others. Closing it runs the request's clean-up."""

    def __init__(self, pipeline: Stepper, steps: Iterator[Any]):
        self.pipeline, self.steps = pipeline, steps

    def __iter__(self) -> "Request":
        return self

    def __next__(self) -> Any:
        while True:
            item = next(self.steps)
            if isinstance(item, StepInput):
                self.pipeline.step([item])
            elif not isinstance(item, Pause):
                return item

    def close(self) -> None:
        close = getattr(self.steps, "close", None)  # a generator's finally blocks run now
        if close is not None:
            close()
