"""Streamed Dia audio: DAC-decode frames while the decoder is still generating.

A frame is complete max_delay (15) steps after channel 0 wrote it. The DAC sees about 10 frames either way, so a
piece of frames [a, b) is decoded from [a - 16, b + 16) and cropped, as DAC.decode_pre_tanh does for long clips:
a piece goes out once 16 frames past its end are complete (or the clip has ended). Pieces start small, for a
short time to first audio, and double up to 128 frames, where the DAC is most efficient. The concatenated
pieces equal the whole-clip decode within float rounding (tests/test_dia_streaming.py). Loudness normalisation
needs the whole clip, so streamed audio is the DAC output with descript's tanh.
"""

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..request import StepInput
from .events import AudioChunk, SpeakSettings, SpeechResult, Step

if TYPE_CHECKING:  # pipeline.py imports this module; the pipeline is only a parameter here
    from .pipeline import DiaPipeline

CONTEXT = 16  # frames of DAC context on each side of a piece (dac.py: the decoder sees ~10)
FIRST_PIECE, LARGEST_PIECE = 16, 128  # frames: 0.19 s, then doubling to 1.5 s


def speak_streamed(
    p: "DiaPipeline", text_ids: list[int], opts: SpeakSettings, prompt: torch.Tensor | None = None
) -> Iterator[Step | AudioChunk | SpeechResult | StepInput]:
    """Frame indices here count from the first frame of the rows, the reference's (if any) included; only frames
    after the reference's L are decoded, as in the whole-clip path (transformers decodes the new codes only)."""
    t0 = time.perf_counter()
    rate, hop = p.codec.cfg.sample_rate, p.codec.cfg.hop_length
    L = 0 if prompt is None else len(prompt)
    sent, size, dac_s = L, FIRST_PIECE, 0.0
    pieces: list[np.ndarray] = []
    rows: torch.Tensor | None = None
    step: Step | None = None

    def piece(rows: torch.Tensor, keep: int, ready: int) -> AudioChunk:
        """The next `keep` frames, decoded from the complete frames before `ready`."""
        nonlocal sent, size, dac_s
        t = time.perf_counter()
        pieces.append(_decode_piece(p, rows, sent, keep, L, ready, hop))
        dac_s += time.perf_counter() - t
        sent, size = sent + keep, min(2 * size, LARGEST_PIECE)
        return AudioChunk(pieces[-1], rate)

    for item in p.generate_rows(text_ids, opts, prompt):
        if isinstance(item, StepInput):
            yield item  # for the driver (request.py)
            continue
        step, rows = item
        yield step
        while L + step.frames >= sent + size + CONTEXT:  # the piece and its right context are complete
            yield piece(rows, size, L + step.frames)
    if rows is None or step is None:
        raise RuntimeError("the decoder made no step")  # generate_rows always makes one
    total = L + step.frames
    while sent < total:  # the clip has ended: its tail has no right context to wait for
        yield piece(rows, min(size, total - sent), total)
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    codes = p.frames(rows, L, total)
    yield SpeechResult(
        pcm,
        rate,
        codes.numpy(),
        timings={
            "steps": step.step,
            "text_tokens": len(text_ids),
            "decode_s": time.perf_counter() - t0 - dac_s,
            "dac_s": dac_s,
        },
    )


@torch.inference_mode()
def _decode_piece(
    p: "DiaPipeline", rows: torch.Tensor, start: int, size: int, first: int, ready: int, hop: int
) -> np.ndarray:
    """Frames [start, start + size) as float32 PCM, decoded with up to CONTEXT frames on each side from the
    complete frames [first, ready)."""
    lo, hi = max(first, start - CONTEXT), min(ready, start + size + CONTEXT)
    codes = p.frames(rows, lo, hi)
    wave = p.codec.decode_pre_tanh(codes.T[None].to(p.device), chunk=hi - lo)[0]
    piece = wave[(start - lo) * hop : (start - lo + size) * hop]
    return torch.tanh(piece).float().cpu().numpy()
