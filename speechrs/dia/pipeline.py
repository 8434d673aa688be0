"""A Dia request: text -> delayed codes (CFG, EOS countdown) -> codes -> DAC -> PCM, as a generator of events and
decoder steps (request.py): run alone by iterating it, or batched with others through `DiaPipeline.step`.

Delayed layout: row 0 is all BOS; channel c at row t holds frame t - 1 - delay[c] (BOS while t <= delay[c]).
Step t reads row t and writes row t + 1. After channel 0 ends at row s (by itself, or forced at row
max_tokens - max_delay), channel c is forced to EOS at row s + delay[c] and to PAD after it; the last row
written is s + max_delay (transformers' DiaEOSDelayPatternLogitsProcessor; nari stops one row earlier).
"""

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from speechrs.audio import loudness
from speechrs.dia.checkpoint import load_dia
from speechrs.dia.config import HF_0626, NARI_V01
from speechrs.dia.dac import DAC, load_dac
from speechrs.dia.delay import delay, frames
from speechrs.dia.events import AudioChunk, SpeakOptions, SpeakSettings, SpeechResult, SpeechSegment, Step
from speechrs.dia.model import Dia, DiaRequestRows
from speechrs.dia.script import PIECE_BYTES, check_script, encode_text, join_reference, speak_script, split_script
from speechrs.dia.streaming import speak_streamed
from speechrs.dia.tempo import with_speed
from speechrs.errors import AudioTooLongError, InvalidRequestError
from speechrs.request import Request, StepInput
from speechrs.sampling import dia_pick, make_generator

if TYPE_CHECKING:
    from speechrs.dia.voice_store import VoiceStore

MIN_SPEECH_S = 0.5  # a reference must leave room for at least this much new speech (a short word)
# Per-generation sampling defaults. v0.1: mistral.rs SpeechGenerationConfig::default. 0626: the settings of
# nari-labs/dia's hf.py example and transformers' Dia docs, not generate()'s own defaults.
DEFAULTS = {
    NARI_V01: SpeakOptions(temperature=1.3, top_p=0.95, top_k=35, cfg_scale=3.0),
    HF_0626: SpeakOptions(temperature=1.8, top_p=0.90, top_k=45, cfg_scale=3.0),
}


def _audible(steps: Iterator) -> Iterator:
    """A request's events; a result with no audio (the model ended at once) is an error, not a success."""
    for event in steps:
        if isinstance(event, SpeechResult) and len(event.pcm) == 0:
            raise InvalidRequestError(
                "Dia ended before making any audio for this text; try other text, another seed, or more max_tokens"
            )
        yield event


def _captioned(steps: Iterator, text: str) -> Iterator:
    """A one-piece request's events, its result given its one caption."""
    for event in steps:
        if isinstance(event, SpeechResult):
            event.segments = [SpeechSegment(0, 0.0, event.duration_s, text)]
        yield event


def check_reference(voice: str | None, ref_audio, ref_text: str | None) -> None:
    """A request names a saved voice or gives ref_audio with ref_text, not both (a 400 before any slow work)."""
    if voice is not None and (ref_audio is not None or ref_text is not None):
        raise InvalidRequestError("give either a named voice or ref_audio with ref_text, not both", "voice")


class DiaPipeline:
    family = "dia"

    def __init__(self, model: Dia, dac: DAC | None):
        self.model, self.dac, self.cfg = model, dac, model.cfg
        self.device = model.decoder.embeddings.embed.weight.device
        self.defaults = DEFAULTS[self.cfg.generation]
        self.voices: OrderedDict = OrderedDict()  # recent reference encodings (voices.py)
        self.max_input_chars: int | None = None  # a server's limit on a request's text (--max-input-chars)

    @classmethod
    def load(
        cls, directory: Path, dac_directory: Path | None, dtype=None, device="cpu", quantize: str | None = None
    ) -> "DiaPipeline":
        dac = load_dac(dac_directory, device) if dac_directory else None
        return cls(load_dia(directory, dtype, device, quantize=quantize), dac)

    @property
    def codec(self) -> DAC:
        """The DAC, for the requests that make audio; a pipeline loaded without one serves codes only."""
        if self.dac is None:
            raise InvalidRequestError("no DAC decoder loaded; pass a DAC checkpoint (--dac)")
        return self.dac

    def options(self, opts: SpeakOptions, stream_audio: bool = False) -> SpeakSettings:
        """Fill unset fields from this generation's defaults and check ranges."""
        d = self.defaults

        def pick(value, default):
            return default if value is None else value

        if opts.normalize and stream_audio:
            raise InvalidRequestError(
                "streamed audio cannot be loudness-normalised (that needs the whole clip); "
                "leave normalize unset or false when streaming"
            )
        opts.check(self.cfg.audio_length, self.cfg.max_delay + 1, self.cfg.audio_vocab)
        return SpeakSettings(
            temperature=pick(opts.temperature, d.temperature),
            top_p=pick(opts.top_p, d.top_p),
            top_k=pick(opts.top_k, d.top_k),
            cfg_scale=pick(opts.cfg_scale, d.cfg_scale),
            normalize=pick(opts.normalize, not stream_audio),
            max_tokens=opts.max_tokens,
            seed=opts.seed,
            speed=pick(opts.speed, 1.0),
        )

    def speak_as(
        self,
        text: str,
        opts: SpeakOptions = SpeakOptions(),
        stream_audio: bool = False,
        voice: str | None = None,
        voices: "VoiceStore | None" = None,
        ref_audio=None,
        ref_text: str | None = None,
    ) -> Iterator[Step | AudioChunk | SpeechResult]:
        """speak() in the voice a request names: a saved voice of `voices` (its codes encoded once and cached) or
        ref_audio with ref_text, not both (check_reference)."""
        check_reference(voice, ref_audio, ref_text)
        if voice is None:
            return self.speak(text, opts, stream_audio, ref_audio, ref_text)
        assert voices is not None, "a named voice needs the voice store"
        codes, transcript = voices.reference(voice, self)
        return self.speak(text, opts, stream_audio, codes, transcript, reference=f"voice '{voice}'")

    def speak(
        self,
        text: str,
        opts: SpeakOptions = SpeakOptions(),
        stream_audio: bool = False,
        ref_audio=None,
        ref_text: str | None = None,
        reference: str = "ref_audio",
    ) -> Iterator[Step | AudioChunk | SpeechResult]:
        """Steps as they happen, then one SpeechResult. With stream_audio, AudioChunks as well, as soon as the
        DAC can decode them (streaming.py); the result then holds their concatenation. ref_audio (anything
        audio.load takes) with ref_text, its transcript, clones that voice: the reference is DAC-encoded and
        prefilled, its transcript goes before `text` (as nari's and transformers' examples do), and only the new
        speech comes back; `reference` names it in errors (a saved voice's name). Errors in the request are raised
        before any step; a generation that makes no audio raises at its end, never gives an empty result."""
        check_script(text)
        settings = self.options(opts, stream_audio)
        if self.dac is None:  # before any work
            raise InvalidRequestError("no DAC decoder loaded; pass a DAC checkpoint (--dac)")
        if self.max_input_chars is not None and len(text) > self.max_input_chars:
            raise InvalidRequestError(
                f"input is {len(text)} characters; this server takes at most {self.max_input_chars}", "input"
            )
        budget = min(PIECE_BYTES, (self.cfg.text_length - 2) // 2)  # a piece and its reference's text must fit
        pieces = split_script(text, budget) if len(text.encode()) > budget else [text]
        text_ids, prompt = encode_text(pieces[0], self.cfg), None  # text errors before the reference is encoded
        if ref_audio is not None or ref_text is not None:
            text_ids, prompt = self._reference(pieces[0], ref_audio, ref_text, settings, reference)
        if len(pieces) > 1:
            rate = self.codec.cfg.sample_rate
            steps = speak_script(
                self._piece(settings, stream_audio), self.cfg, rate, pieces, stream_audio, prompt, ref_text
            )
        elif stream_audio:
            steps = _captioned(self._piece(settings, True)(text_ids, prompt), text)
        else:
            steps = _captioned(self.speak_piece(text_ids, settings, prompt), text)
        return Request(self, with_speed(_audible(steps), settings.speed))

    @torch.inference_mode()
    def step(self, inputs: list[StepInput]) -> None:
        """One decoder step for several requests, each with its own step count, caches and text: their CFG pairs'
        last rows (2, 1, C) each -> each input's logits (2, 1, C, V)."""
        logits = self.model.forward_rows(torch.cat([i.x for i in inputs]), [i.segment for i in inputs])  # type: ignore[misc]
        for b, i in enumerate(inputs):
            i.logits = logits[2 * b : 2 * b + 2]

    def _reference(
        self, text: str, ref_audio, ref_text: str | None, opts: SpeakSettings, reference: str = "ref_audio"
    ) -> tuple[list[int], torch.Tensor]:
        """-> (the ids of the transcript and the text, joined by a space; the reference's codes (L, C)), checked,
        the cheap checks before the reference is encoded."""
        from speechrs.dia.voices import encode_reference

        if ref_audio is None or ref_text is None or not ref_text.strip():
            raise InvalidRequestError(
                "voice cloning takes both ref_audio and ref_text (the transcript of "
                "ref_audio, with its [S1]/[S2] tags)",
                "ref_text" if ref_audio else "ref_audio",
            )
        text_ids = encode_text(join_reference(ref_text, text), self.cfg)
        frame_s = self.codec.cfg.hop_length / self.codec.cfg.sample_rate
        # rows the reference may take: the rest must hold max_tokens steps, or at least MIN_SPEECH_S of new speech
        least = self.cfg.max_delay + 1 + math.ceil(MIN_SPEECH_S / frame_s)
        room = self.cfg.audio_length - max(opts.max_tokens or 0, least)
        try:  # the length is checked from the decoded samples, before the reference is resampled or encoded
            if isinstance(ref_audio, torch.Tensor):  # codes (L, C) encoded before: a named voice's (voice_store.py)
                codes = ref_audio
            else:
                codes = encode_reference(self, ref_audio, max_seconds=max(room, 0) * frame_s)
        except AudioTooLongError as e:
            too_long = e.seconds
        else:
            if len(codes) <= room:  # (resampling can add a sample at the very edge of the room)
                return text_ids, codes
            too_long = len(codes) * frame_s
        raise InvalidRequestError(
            f"{reference} is {too_long:.1f} s; Dia has room for a reference of {max(room, 0) * frame_s:.1f} s here, "
            f"leaving at least {MIN_SPEECH_S} s for the new speech (a shorter reference, or fewer max_tokens)",
            "voice" if reference.startswith("voice") else "ref_audio",
        )

    def generate_codes(
        self, text_ids: list[int], opts: SpeakSettings, prompt_TxC: torch.Tensor | None = None
    ) -> Request:
        """Steps, then the delayed rows (R, C) written, BOS row included (the last step's rows)."""
        return Request(self, self._codes(text_ids, opts, prompt_TxC))

    def _codes(
        self, text_ids: list[int], opts: SpeakSettings, prompt_TxC: torch.Tensor | None = None
    ) -> Iterator[Step | torch.Tensor | StepInput]:
        last = None
        for item in self.generate_rows(text_ids, opts, prompt_TxC):
            if isinstance(item, StepInput):
                yield item  # for the driver
                continue
            step, last = item
            yield step
        assert last is not None, "generate_rows yields at least one step"
        yield last

    def generate_rows(
        self, text_ids: list[int], opts: SpeakSettings, prompt_TxC: torch.Tensor | None = None
    ) -> Iterator[tuple[Step, torch.Tensor] | StepInput]:
        """(Step, delayed rows written so far) after each decoder step; the rows are a view, valid until the next
        step. Complete frames never change: a frame is complete once its last channel (delay max_delay) is
        written, by which time channel 0 has told whether it is a frame at all (EOS) max_delay steps before.

        prompt_TxC: undelayed codes of L reference frames (voice cloning). Rows 0..L are then the delayed prompt,
        fed in one forward pass, and channel c keeps the prompt's codes up to row L + delay[c] (transformers'
        delay mask; with no prompt that is BOS up to row delay[c]). Steps and frames count what follows."""
        cfg, model = self.cfg, self.model
        C = cfg.channels
        prompt = prompt_TxC if prompt_TxC is not None else torch.zeros(0, C, dtype=torch.long)
        L = len(prompt)
        known = delay(prompt.long(), list(cfg.delay_pattern), cfg.bos, cfg.pad)  # PAD: to be generated
        max_steps = opts.max_tokens or cfg.audio_length - L
        with torch.inference_mode():  # not across the yields: the generator resumes in its driver's mode
            cond = torch.tensor([text_ids], device=self.device)
            # this request's own text K/V (rows [cond, uncond], uncond all zeros) and cache: the first pass reads the
            # whole known prefix, later ones a row
            segment = DiaRequestRows(0, model.new_caches(2, L + max_steps + 1), model.text_cache(cond))
            logits = model.forward_rows(known[: L + 1].to(self.device).expand(2, -1, C), [segment])
        rows = torch.full((L + max_steps + 1, C), cfg.bos, dtype=torch.long)
        rows[: L + 1] = known[: L + 1]
        delays = torch.tensor(cfg.delay_pattern)
        generator = make_generator(opts.seed, self.device)
        end_row: int | None = None  # row where channel 0 ended
        r = L + 1  # the row this step writes
        while True:
            with torch.inference_mode():
                codes = dia_pick(
                    logits[0, -1],
                    logits[1, -1],
                    cfg_scale=opts.cfg_scale,
                    temperature=opts.temperature,
                    top_p=opts.top_p,
                    top_k=opts.top_k,
                    eos=cfg.eos,
                    sample_from_cond=cfg.generation == HF_0626,
                    generator=generator,
                ).cpu()
            if r < len(known):
                codes = torch.where(known[r] != cfg.pad, known[r], codes)
            # every reference counts the countdown inside max_tokens: EOS is forced max_delay steps before the end
            if end_row is None and (codes[0] == cfg.eos or r == L + max_steps - cfg.max_delay):
                end_row = r
            if end_row is not None:  # the EOS countdown: EOS at end_row + delay[c], PAD after it
                after = r - end_row
                codes = torch.where(delays == after, cfg.eos, torch.where(delays < after, cfg.pad, codes))
            rows[r] = codes
            frames = r - cfg.max_delay if end_row is None else min(r - cfg.max_delay, end_row - 1)
            yield Step(r - L, max_steps, max(0, frames - L)), rows[: r + 1]
            if end_row is not None and r - end_row >= cfg.max_delay:
                break
            segment.start = r
            pending = StepInput(rows[r : r + 1].to(self.device).expand(2, -1, C), segment)
            yield pending  # the driver runs the decoder on it, alone or beside other requests
            assert pending.logits is not None, "a StepInput is resumed once its logits are set"
            logits = pending.logits
            r += 1

    def _piece(self, opts: SpeakSettings, stream_audio: bool) -> Callable[[list[int], torch.Tensor | None], Iterator]:
        """How one piece of text is spoken: streamed (AudioChunks as frames complete) or decoded whole."""
        if stream_audio:
            codec, cfg, device = self.codec, self.cfg, self.device
            return lambda ids, prompt: speak_streamed(
                self.generate_rows(ids, opts, prompt), codec, cfg, device, len(ids), prompt
            )
        return lambda ids, prompt: self.speak_piece(ids, opts, prompt)

    def speak_piece(
        self, text_ids: list[int], opts: SpeakSettings, prompt: torch.Tensor | None = None
    ) -> Iterator[Step | SpeechResult | StepInput]:
        t0 = time.perf_counter()
        delayed = torch.zeros(0)
        for event in self._codes(text_ids, opts, prompt):
            if isinstance(event, Step | StepInput):
                yield event
            else:
                delayed = event
        t1 = time.perf_counter()
        n_frames = len(delayed) - 1 - self.cfg.max_delay - 1  # rows 1 .. end_row - 1 carry frames
        L = 0 if prompt is None else len(prompt)
        codes = frames(delayed, L, max(n_frames, L), self.cfg)  # only what follows the reference
        pcm = self.decode(codes, opts.normalize)
        yield SpeechResult(
            pcm,
            self.codec.cfg.sample_rate,
            codes.numpy(),
            timings={
                "steps": len(delayed) - 1 - L,
                "text_tokens": len(text_ids),
                "decode_s": t1 - t0,
                "dac_s": time.perf_counter() - t1,
            },
        )

    @torch.inference_mode()
    def decode(self, codes_TxC: torch.Tensor, normalize: bool = True) -> np.ndarray:
        """Undelayed codes (T, C) -> float32 PCM, T * 512 samples."""
        if codes_TxC.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        wave = self.codec.decode_pre_tanh(codes_TxC.T[None].to(self.device))[0].float().cpu().numpy()
        if normalize:
            return loudness.normalize(wave, self.codec.cfg.sample_rate)
        return np.tanh(wave).astype(np.float32)  # descript's own final tanh
