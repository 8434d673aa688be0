"""Scripts of any length: split into pieces Dia can speak (speaker turns, then sentences, then words), each piece
after the first generated with the previous piece's codes and text as its voice reference, so the speakers keep
their voices; the pieces are joined with a short crossfade, and each becomes a caption with its times.

Budget: Dia holds 3072 frames (35.7 s) for the reference and the new speech together, so a piece is at most
PIECE_BYTES, about 16 s of speech (docs/architecture.md), and a piece and its reference fit with room to spare.
Text within the budget is one generation.
"""

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch

from speechrs.dia.config import DiaConfig
from speechrs.dia.events import AudioChunk, SpeechResult, SpeechSegment, Step
from speechrs.errors import InvalidRequestError

PIECE_BYTES = 240
CROSSFADE = 1024  # samples (23 ms at 44.1 kHz): the seam between two pieces, which falls in a pause
TAG = re.compile(r"(\[S[12]\])")
SENTENCE_END = re.compile(r"(?<=[.!?…;:])\s+")


def check_script(text: str) -> None:
    """A script must say something besides its speaker tags (a 400 before any work)."""
    if not TAG.sub("", text or "").strip():
        what = "has only speaker tags" if text and text.strip() else "is empty"
        raise InvalidRequestError(f"text {what}; give something to say, e.g. '[S1] Hello.'", "input")


def encode_text(text: str, cfg: DiaConfig) -> list[int]:
    """UTF-8 bytes with [S1] -> 0x01 and [S2] -> 0x02 (nari, transformers' DiaTokenizer)."""
    check_script(text)
    data = text.replace("[S1]", "\x01").replace("[S2]", "\x02").encode("utf-8")
    if len(data) > cfg.text_length:
        raise InvalidRequestError(
            f"text is {len(data)} bytes; Dia takes at most {cfg.text_length} "
            "(about 20 s of speech): split it into shorter requests"
        )
    return list(data)


def split_script(text: str, budget: int) -> list[str]:
    """Pieces of at most `budget` UTF-8 bytes, cut between speaker turns where possible, else between sentences,
    else between words; a piece that starts inside a turn repeats the turn's speaker tag."""
    units: list[str] = []
    tag, body = "", ""
    for part in TAG.split(text):
        if TAG.fullmatch(part):
            units += _turn_units(tag, body, budget)
            tag, body = part, ""
        else:
            body += part
    units += _turn_units(tag, body, budget)
    pieces: list[str] = []
    for unit in units:
        if pieces and len((pieces[-1] + " " + unit).encode()) <= budget:
            pieces[-1] += " " + unit
        else:
            pieces.append(unit)
    return pieces


def _turn_units(tag: str, body: str, budget: int) -> list[str]:
    """One speaker turn as units of at most `budget` bytes, each with the turn's tag."""
    body = " ".join(body.split())
    if not body:
        return []
    whole = f"{tag} {body}".strip()
    if len(whole.encode()) <= budget:
        return [whole]
    units: list[str] = []
    for sentence in SENTENCE_END.split(body):
        words, line = sentence.split(), tag
        for word in words:
            candidate = f"{line} {word}".strip()
            if len(candidate.encode()) > budget and line != tag:
                units.append(line)
                candidate = f"{tag} {word}".strip()
            if len(candidate.encode()) > budget:
                raise InvalidRequestError(f"a word of {len(word.encode())} bytes does not fit in one piece of speech")
            line = candidate
        if line != tag:
            units.append(line)
    merged: list[str] = []  # sentences of the same turn share a piece while they fit
    for unit in units:
        if merged and len(f"{merged[-1]} {unit.removeprefix(tag).strip()}".encode()) <= budget:
            merged[-1] = f"{merged[-1]} {unit.removeprefix(tag).strip()}"
        else:
            merged.append(unit)
    return merged


class Joiner:
    """Pieces of PCM in, one clip out: the last CROSSFADE samples of a piece are held back and crossfaded with the
    start of the next (linear), so the seam has no click. Works on streamed chunks (of any size) as well as whole
    pieces; the seam overlaps the two pieces by the held length."""

    def __init__(self) -> None:
        self.held = np.zeros(0, np.float32)  # samples not given out yet: the tail, or the seam being mixed
        self.seam = False  # the held tail is being crossfaded with the start of a new piece
        self.mixed = 0  # samples of the seam mixed so far
        self.emitted = 0  # samples given out so far

    def new_piece(self) -> None:
        self.seam, self.mixed, self.held = len(self.held) > 0, 0, self.held.copy()

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """-> the samples that can go out now (everything but what is held)."""
        if self.seam:
            n = len(self.held)
            k = min(n - self.mixed, len(pcm))
            fade = np.arange(self.mixed, self.mixed + k, dtype=np.float32) / n
            part = slice(self.mixed, self.mixed + k)
            self.held[part] = self.held[part] * (1 - fade) + pcm[:k] * fade
            self.mixed, pcm = self.mixed + k, pcm[k:]
            if self.mixed < n:
                return np.zeros(0, np.float32)
            self.seam = False
        pcm = np.concatenate([self.held, pcm])
        cut = max(0, len(pcm) - CROSSFADE)
        self.held = pcm[cut:]
        self.emitted += cut
        return pcm[:cut]

    def finish(self) -> np.ndarray:
        tail, self.held = self.held, np.zeros(0, np.float32)
        self.emitted += len(tail)
        return tail


def speak_script(
    speak_piece: Callable[[list[int], torch.Tensor | None], Iterator],
    cfg: DiaConfig,
    rate: int,
    pieces: list[str],
    stream_audio: bool,
    prompt: torch.Tensor | None,
    ref_text: str | None,
) -> Iterator:
    """The request's generator for several pieces, each spoken by speak_piece(text ids, reference codes): Steps
    (with piece numbers), AudioChunks when streaming, then one SpeechResult with the joined audio, every piece's
    codes in order, and a caption per piece."""
    t0 = time.perf_counter()
    joiner, out, segments, codes = Joiner(), [], [], []
    timings = {"steps": 0, "text_tokens": 0, "dac_s": 0.0, "pieces": len(pieces)}
    anchor = (prompt, ref_text) if prompt is not None else None  # the voice to come back to (see below)
    for k, piece in enumerate(pieces):
        ids = encode_text(piece if prompt is None else join_reference(ref_text, piece), cfg)
        inner = speak_piece(ids, prompt)
        joiner.new_piece()
        start = joiner.emitted / rate  # the new piece starts where the held tail (its seam) starts
        result = None
        for event in inner:
            if isinstance(event, Step):
                yield replace(event, piece=k, pieces=len(pieces))
            elif isinstance(event, AudioChunk):
                out.append(joiner.push(event.pcm))
                if len(out[-1]):
                    yield AudioChunk(out[-1], rate)
            elif isinstance(event, SpeechResult):
                result = event
            else:
                yield event  # StepInput for the driver
        assert result is not None
        if not stream_audio:
            out.append(joiner.push(result.pcm))
        end = (joiner.emitted + len(joiner.held)) / rate
        segments.append(SpeechSegment(k, start, end, piece))
        codes.append(result.codes)
        for key in ("steps", "text_tokens", "dac_s"):
            timings[key] += result.timings[key]
        # the next piece's reference: this piece, unless it is too long to leave the next one room (a piece that
        # ran to the end of the rows), then the last voice that fits
        if len(result.codes) <= cfg.audio_length // 2:
            prompt, ref_text = torch.from_numpy(result.codes), piece
            anchor = anchor or (prompt, ref_text)
        elif anchor is not None:
            prompt, ref_text = anchor
    tail = joiner.finish()
    if stream_audio and len(tail):
        yield AudioChunk(tail, rate)
    out.append(tail)
    timings["decode_s"] = time.perf_counter() - t0 - timings["dac_s"]
    yield SpeechResult(np.concatenate(out), rate, np.concatenate(codes), timings=timings, segments=segments)


def join_reference(ref_text: str | None, text: str) -> str:
    """A reference's transcript and the text to speak, joined by a space, as nari's and transformers' examples do."""
    ref_text = ref_text or ""
    return (ref_text if ref_text[-1:].isspace() else ref_text + " ") + text
