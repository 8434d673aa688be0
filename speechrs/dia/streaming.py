"""Streamed Dia audio: DAC-decode frames while the decoder is still generating.

A frame is complete max_delay (15) steps after channel 0 wrote it. Complete frames go into the request's own
streaming DAC decoder (dac_stream.py) in pieces that start small, for a short time to first audio, and double up to
64 frames, the fastest piece (docs/architecture.md). Each push returns the samples later frames can no longer change
(the decoder reaches about 10 frames ahead), so every frame passes the DAC once and the chunks join into the
whole-clip decode to float rounding (tests/test_dia_streaming.py). Loudness normalisation needs the whole clip, so
streamed audio is the DAC output with descript's tanh.
"""

import time
from collections.abc import Iterator

import numpy as np
import torch

from speechrs.dia.config import DiaConfig
from speechrs.dia.dac import DAC
from speechrs.dia.dac_stream import StreamingDecoder
from speechrs.dia.delay import frames
from speechrs.dia.events import AudioChunk, SpeechResult, Step
from speechrs.request import StepInput

FIRST_PIECE, LARGEST_PIECE = 16, 64  # frames pushed into the DAC: 0.19 s, doubling to 0.74 s (the fastest piece)


def speak_streamed(
    rows_of_steps: Iterator[StepInput | tuple[Step, torch.Tensor]],
    codec: DAC,
    cfg: DiaConfig,
    device,
    n_text: int,
    prompt: torch.Tensor | None = None,
) -> Iterator[Step | AudioChunk | SpeechResult | StepInput]:
    """One piece's events from its decoder's (DiaPipeline.generate_rows: each Step with the delayed rows so far, and
    the StepInputs for the driver), with the audio decoded as its frames complete. Frame indices here count from
    the first frame of the rows, the reference's (if any) included; only frames after the reference's L are
    decoded, as in the whole-clip path (transformers decodes the new codes only)."""
    t0 = time.perf_counter()
    rate = codec.cfg.sample_rate
    L = 0 if prompt is None else len(prompt)
    dac = StreamingDecoder(codec)
    pushed, size, dac_s = L, FIRST_PIECE, 0.0  # frames given to the DAC so far (the reference's count as given)
    pieces: list[np.ndarray] = []
    rows: torch.Tensor | None = None
    step: Step | None = None

    def push(rows: torch.Tensor, stop: int, end: bool) -> AudioChunk | None:
        """Frames [pushed, stop) into the DAC -> the audio that is final now, if any."""
        nonlocal pushed, size, dac_s
        t = time.perf_counter()
        wave = dac.push(frames(rows, pushed, stop, cfg).T[None].to(device), end)[0]  # an inference tensor
        pcm = torch.tanh(wave).float().cpu().numpy()
        dac_s += time.perf_counter() - t
        pushed, size = stop, min(2 * size, LARGEST_PIECE)
        if not len(pcm):
            return None
        pieces.append(pcm)
        return AudioChunk(pcm, rate)

    for item in rows_of_steps:
        if isinstance(item, StepInput):
            yield item  # for the driver (request.py)
            continue
        step, rows = item
        yield step
        while L + step.frames >= pushed + size:  # the next piece's frames are complete
            chunk = push(rows, pushed + size, end=False)
            if chunk is not None:
                yield chunk
    if rows is None or step is None:
        raise RuntimeError("the decoder made no step")  # generate_rows always makes one
    total = L + step.frames
    chunk = push(rows, max(total, pushed), end=True)  # the clip has ended: the DAC gives the rest
    if chunk is not None:
        yield chunk
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    codes = frames(rows, L, total, cfg)
    yield SpeechResult(
        pcm,
        rate,
        codes.numpy(),
        timings={
            "steps": step.step,
            "text_tokens": n_text,
            "decode_s": time.perf_counter() - t0 - dac_s,
            "dac_s": dac_s,
        },
    )
