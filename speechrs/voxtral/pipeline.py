"""A Voxtral request as a generator of events (tokens, then a summary) and decoder steps (request.py): run alone
by iterating it, or batched with others by the engine's scheduler through `VoxtralPipeline.step`."""

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from speechrs.audio import decode as audio_io
from speechrs.audio.vad import SplitOptions
from speechrs.errors import AudioError, InvalidRequestError
from speechrs.layers import RequestRows
from speechrs.request import PAUSE, Pause, Request, StepInput
from speechrs.sampling import make_generator, sample_token
from speechrs.voxtral import transcript
from speechrs.voxtral.checkpoint import load_voxtral
from speechrs.voxtral.events import Audio, Done, GenerationOptions, Token, Usage
from speechrs.voxtral.model import Voxtral
from speechrs.voxtral.tekken import AudioPart, Part, StreamDecoder, Tekken, chat_prompt, transcription_prompt

CHAT_MAX_TOKENS = 1024  # default completion budget for chat; transcription scales with the audio
INITIAL_CACHE_TOKENS = 1024  # KV cache room beyond the prompt to start with; it doubles when needed
# A longer prompt is prefilled this many tokens (about 80 s of audio) at a time, other requests stepping between
# pieces, so a long one-prompt transcript does not stall every running stream; a 30 s chunk's prompt is one piece.
# The pieces give one pass's logits to float rounding (tests/test_batching.py).
PREFILL_TOKENS = 1024


class VoxtralPipeline:
    family = "voxtral"

    def __init__(self, model: Voxtral, tokenizer: Tekken):
        if tokenizer.audio is None:
            raise AudioError("tekken.json has no audio section; this is not a Voxtral tokenizer")
        self.model, self.tokenizer, self.framing = model, tokenizer, tokenizer.audio
        self.device = model.tok_embeddings.weight.device
        self.audio_token_id = tokenizer.special_id("[AUDIO]")
        self.max_audio_s: float | None = None  # a server's per-audio duration limit

    @classmethod
    def load(
        cls, directory: Path, layout: str, dtype=None, device="cpu", quantize: str | None = None
    ) -> "VoxtralPipeline":
        return cls(load_voxtral(directory, layout, dtype, device, quantize), Tekken(directory / "tekken.json"))

    def transcribe(
        self,
        audio,
        language: str | None = None,
        opts: GenerationOptions = GenerationOptions(),
        timestamps: bool = False,
        split: SplitOptions = SplitOptions(),
    ) -> Iterator[Token | Done]:
        """One prompt for the whole audio (transformers' and mistral-common's way) when it fits in the context and
        no timestamps are asked for; otherwise segment by segment (transcript.py), with Progress and Segment
        events and `Done.segments`."""
        opts.validate()
        stream = audio_io.open_stream(audio, self.framing.sampling_rate, self.max_audio_s)  # reads the header only
        if timestamps or not self._fits_one_prompt(stream.duration_s):
            tok = self.tokenizer
            steps = transcript.segmented(self, stream, lambda n: transcription_prompt(tok, n, language), opts, split)
            return Request(self, steps)
        mel, n_tokens, seconds = self._prepare_audio(audio, stream.duration_s)
        ids = transcription_prompt(self.tokenizer, n_tokens, language)
        return Request(self, self.generate(ids, [mel], seconds, opts, default_max=max(64, n_tokens)))

    def translate(
        self,
        audio,
        to_language: str = "en",
        opts: GenerationOptions = GenerationOptions(),
        timestamps: bool = False,
        split: SplitOptions = SplitOptions(),
    ) -> Iterator[Token | Done]:
        """Speech in any language -> text in `to_language` (a code or name), through Voxtral's chat prompt: the
        transcription prompt cannot translate. Segmented as transcribe() decides."""
        opts.validate()
        instruction = transcript.translation_instruction(transcript.target_language(to_language))
        stream = audio_io.open_stream(audio, self.framing.sampling_rate, self.max_audio_s)
        if timestamps or not self._fits_one_prompt(stream.duration_s):
            tok = self.tokenizer

            def prompt(n: int) -> list[int]:
                return chat_prompt(tok, [("user", [AudioPart(n), instruction])])

            return Request(self, transcript.segmented(self, stream, prompt, opts, split))
        return self.chat([("user", [Audio(audio), instruction])], opts)

    def _fits_one_prompt(self, seconds: float) -> bool:
        """Whether the audio's tokens, the prompt around them and a transcript as long (one token per audio token)
        fit in the model's context: 2 x 375 tokens per 30 s against 32k, about 21 minutes for Voxtral-Mini."""
        return 2 * self._audio_tokens(seconds) + 32 <= self.model.cfg.max_seq_len

    def _audio_tokens(self, seconds: float) -> int:
        f = self.framing
        return f.n_audio_tokens(-(-round(seconds * f.sampling_rate) // f.chunk_samples) * f.chunk_samples)

    def chat(
        self, messages: Sequence[tuple[str, list | str]], opts: GenerationOptions = GenerationOptions()
    ) -> Iterator[Token | Done]:
        """messages: (role, content) with content a str or a list of str and Audio parts, in order."""
        opts.validate()
        mels, seconds = [], 0.0
        parsed: list[tuple[str, list[Part] | str]] = []
        for role, content in messages:
            parts = [content] if isinstance(content, str) else list(content)
            out: list[Part] = []
            for part in parts:
                if isinstance(part, Audio):
                    mel, n_tokens, s = self._prepare_audio(part.source)
                    mels.append(mel)
                    seconds += s
                    out.append(AudioPart(n_tokens))
                elif isinstance(part, str):
                    out.append(part)
                else:
                    raise InvalidRequestError(f"unsupported content part {type(part).__name__}")
            parsed.append((role, out))
        ids = chat_prompt(self.tokenizer, parsed)
        return Request(self, self.generate(ids, mels, seconds, opts, default_max=CHAT_MAX_TOKENS))

    @torch.inference_mode()
    def step(self, inputs: list[StepInput]) -> None:
        """One decoder step for several requests, each at its own position with its own cache: their last tokens
        (1, 1) each -> each input's logits (1, 1, V)."""
        x = self.model.tok_embeddings(torch.cat([i.x for i in inputs]))  # (B, 1, D)
        logits = self.model.forward_rows(x, [i.segment for i in inputs])
        for b, i in enumerate(inputs):
            i.logits = logits[b : b + 1]

    def _prepare_audio(self, source, seconds: float | None = None) -> tuple[torch.Tensor, int, float]:
        """-> mel chunks (N, M, 3000), number of [AUDIO] tokens, duration in seconds. Audio whose tokens alone
        overflow the context is refused from its header, before hours of it are decoded."""
        if seconds is None:  # the header, read once: transcribe() has read it already
            seconds = audio_io.open_stream(source, self.framing.sampling_rate, self.max_audio_s).duration_s
        if self._audio_tokens(seconds) >= self.model.cfg.max_seq_len:
            raise AudioError(
                f"{seconds:.0f} s of audio is {self._audio_tokens(seconds)} tokens, more than the model's context of "
                f"{self.model.cfg.max_seq_len} tokens; send shorter audio"
            )
        pcm = audio_io.load(source, self.framing.sampling_rate, max_seconds=self.max_audio_s)  # before resampling
        return *self.mel_chunks(pcm), len(pcm) / self.framing.sampling_rate

    def mel_chunks(self, pcm) -> tuple[torch.Tensor, int]:
        """16 kHz samples -> mel chunks (N, M, 3000) of 30 s (the last padded), number of [AUDIO] tokens."""
        f = self.framing
        padded = audio_io.pad_to_multiple(pcm, f.chunk_samples)
        mel = audio_io.log_mel(padded, f.num_mel_bins, f.window_size, f.hop_length, f.sampling_rate)
        frames_per_chunk = self.model.cfg.encoder.max_source_positions * 2
        mel_chunks = mel.reshape(f.num_mel_bins, -1, frames_per_chunk).transpose(0, 1)  # (N, M, 3000)
        return mel_chunks, f.n_audio_tokens(len(padded))

    def generate(
        self, ids: list[int], mels: list[torch.Tensor], seconds: float, opts: GenerationOptions, default_max: int
    ) -> Iterator[Token | Done | StepInput | Pause]:
        model, tok = self.model, self.tokenizer
        limit = model.cfg.max_seq_len
        if len(ids) >= limit:
            raise AudioError(
                f"prompt of {len(ids)} tokens ({seconds:.0f} s of audio) exceeds the model's "
                f"context of {limit} tokens; send shorter audio"
            )
        room = limit - len(ids)
        if opts.max_tokens is not None and opts.max_tokens > room:  # OpenAI: a 400 that states the maximum
            raise InvalidRequestError(
                f"max_tokens is {opts.max_tokens}; with this {len(ids)}-token prompt the model can produce at most "
                f"{room} (its context is {limit} tokens)",
                "max_tokens",
            )
        max_tokens = min(opts.max_tokens or default_max, room)
        usage = Usage(prompt_tokens=len(ids), audio_seconds=seconds)
        t0 = time.perf_counter()
        audio_embeds, chunks = None, torch.cat(mels) if mels else None
        if chunks is not None:  # 30 s at a time, pausing between (request.Pause): other requests step meanwhile
            pieces = []
            for i in range(len(chunks)):
                if i:
                    yield PAUSE
                with torch.inference_mode():  # not across the yields: the generator resumes in its driver's mode
                    pieces.append(model.encode_audio(chunks[i : i + 1].to(self.device)))
            audio_embeds = torch.cat(pieces)  # (A, D)
            if audio_embeds.shape[0] != ids.count(self.audio_token_id):
                raise AudioError(
                    f"{audio_embeds.shape[0]} audio embeddings for {ids.count(self.audio_token_id)} [AUDIO] tokens"
                )
        with torch.inference_mode():
            t1 = time.perf_counter()
            usage.encode_s = t1 - t0
            # this request's own cache; it grows if generation goes on
            caches = model.new_caches(1, len(ids) + min(max_tokens, INITIAL_CACHE_TOKENS))
            ids_t = torch.tensor([ids], device=self.device)
            embeds = model.embed(ids_t, audio_embeds, self.audio_token_id)
        for start in range(0, len(ids), PREFILL_TOKENS):  # a long prompt in pieces, pausing between (PREFILL_TOKENS)
            if start:
                yield PAUSE
            with torch.inference_mode():
                logits = model.forward_rows(embeds[:, start : start + PREFILL_TOKENS], [RequestRows(start, caches)])
        generator = make_generator(opts.seed, self.device)
        stream = StreamDecoder(tok)
        generated: list[int] = []
        finish = "length"
        pos = len(ids)
        logprob = 0.0
        for step in range(max_tokens):
            next_id = sample_token(logits[0, -1], opts.temperature, opts.top_p, generator)
            logprob += float(torch.log_softmax(logits[0, -1].float(), -1)[next_id])
            if step == 0:
                usage.prefill_s = time.perf_counter() - t1
            if next_id == tok.eos:
                finish = "stop"
                break
            generated.append(next_id)
            yield Token(next_id, stream.push(next_id))
            if step + 1 == max_tokens:
                break
            pending = StepInput(torch.tensor([[next_id]], device=self.device), RequestRows(pos, caches))
            yield pending  # the driver runs the decoder on it, alone or beside other requests
            assert pending.logits is not None, "a StepInput is resumed once its logits are set"
            logits = pending.logits
            pos += 1
        tail = stream.flush()
        if tail:
            yield Token(-1, tail)
        usage.completion_tokens = len(generated) + (finish == "stop")  # </s> is generated too
        usage.decode_s = time.perf_counter() - t1 - usage.prefill_s
        yield Done(tok.decode(generated), finish, usage, generated, logprob / max(1, usage.completion_tokens))
