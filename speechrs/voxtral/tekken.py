"""tekken.json: Mistral's tiktoken-style BPE, its special tokens and audio framing, and Voxtral prompts.

Ids follow mistral-common: special tokens take ids [0, n_special); BPE rank r has id r + n_special.
Prompts follow mistral-common's InstructTokenizerV7 (encode_transcription, encode_instruct).
"""

import base64
import codecs
import json
import math
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import tiktoken

from speechrs.errors import InvalidRequestError, UnsupportedModelError


@dataclass(frozen=True)
class AudioFraming:
    """tekken.json `audio`: how many samples and mel frames make one [AUDIO] token."""

    sampling_rate: int = 16000
    frame_rate: float = 12.5  # audio tokens per second
    num_mel_bins: int = 128
    hop_length: int = 160
    window_size: int = 400
    chunk_length_s: float = 30.0

    @property
    def chunk_samples(self) -> int:
        return int(self.chunk_length_s * self.sampling_rate)  # 480000

    @property
    def mel_frames_per_token(self) -> int:
        return int(self.sampling_rate // self.frame_rate) // self.hop_length  # 1280 / 160 = 8

    def n_audio_tokens(self, n_padded_samples: int) -> int:
        """mistral-common AudioEncoder: frames = len/hop if exact else ceil(len/hop - 1); tokens = ceil(frames/8)."""
        frames = n_padded_samples / self.hop_length
        frames = int(frames) if n_padded_samples % self.hop_length == 0 else math.ceil(frames - 1)
        return math.ceil(frames / self.mel_frames_per_token)


class Tekken:
    def __init__(self, path: Path):
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            config = data["config"]
            self.n_special = config["default_num_special_tokens"]
            vocab_size = config["default_vocab_size"]
            pattern = config["pattern"]
            vocab = data["vocab"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise UnsupportedModelError(f"cannot read tekken tokenizer {path}: {e!r}") from e
        specials = data.get("special_tokens")
        if not specials:
            raise UnsupportedModelError(f"{path} has no special_tokens list; Voxtral needs a v7+ tekken.json")
        self.special_names = {t["rank"]: t["token_str"] for t in specials}
        self._special_ids = {t["token_str"]: t["rank"] for t in specials}
        n_inner = vocab_size - self.n_special
        ranks = {base64.b64decode(t["token_bytes"]): t["rank"] for t in vocab[:n_inner]}
        self._bpe = tiktoken.Encoding(name=Path(path).stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        self.vocab_size = vocab_size
        audio = data.get("audio")
        self.audio = None
        if audio:
            enc = audio.get("audio_encoding_config", {})
            self.audio = AudioFraming(
                sampling_rate=audio["sampling_rate"],
                frame_rate=audio["frame_rate"],
                num_mel_bins=enc.get("num_mel_bins", 128),
                hop_length=enc.get("hop_length", 160),
                window_size=enc.get("window_size", 400),
                chunk_length_s=audio.get("chunk_length_s") or 30.0,
            )
        self.bos, self.eos = self.special_id("<s>"), self.special_id("</s>")
        self.inst, self.end_inst = self.special_id("[INST]"), self.special_id("[/INST]")

    def special_id(self, name: str) -> int:
        if name not in self._special_ids:
            raise UnsupportedModelError(f"tekken.json has no special token {name}")
        return self._special_ids[name]

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids; text that looks like a special token is encoded as text, never as the token."""
        return [r + self.n_special for r in self._bpe.encode_ordinary(text)]

    def is_special(self, token_id: int) -> bool:
        return token_id < self.n_special

    def decode(self, ids: list[int]) -> str:
        """Skip special tokens; decode each run of ordinary tokens as mistral-common does (errors='replace')."""
        parts = []
        for special, run in groupby(ids, self.is_special):
            if not special:
                parts.append(self._bpe.decode([t - self.n_special for t in run]))
        return "".join(parts)

    def token_bytes(self, token_id: int) -> bytes:
        return b"" if self.is_special(token_id) else self._bpe.decode_single_token_bytes(token_id - self.n_special)


class StreamDecoder:
    """Turns ids into text deltas that never split a UTF-8 character; joined, they equal Tekken.decode."""

    def __init__(self, tok: Tekken):
        self.tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self.tok.is_special(token_id):
            return self.flush()  # mistral-common decodes each run between specials on its own
        return self._utf8.decode(self.tok.token_bytes(token_id))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


# ---- prompts (mistral-common InstructTokenizerV7) ----


def audio_block(tok: Tekken, n_tokens: int) -> list[int]:
    return [tok.special_id("[BEGIN_AUDIO]")] + [tok.special_id("[AUDIO]")] * n_tokens


def transcription_prompt(tok: Tekken, n_audio_tokens: int, language: str | None) -> list[int]:
    """<s>[INST][BEGIN_AUDIO][AUDIO]xN[/INST]lang:xx[TRANSCRIBE] (lang optional, no space)."""
    ids = [tok.bos, tok.inst, *audio_block(tok, n_audio_tokens), tok.end_inst]
    if language:
        ids += tok.encode(f"lang:{language}")
    return ids + [tok.special_id("[TRANSCRIBE]")]


@dataclass(frozen=True)
class AudioPart:
    n_tokens: int


Part = str | AudioPart  # a user message is a list of parts in order; an assistant message is a str


def chat_prompt(tok: Tekken, messages: list[tuple[str, list[Part] | str]]) -> list[int]:
    """<s>[INST]{user parts}[/INST]{assistant}</s>[INST]...[/INST], after mistral-common's normalisation:
    consecutive messages of one role merge, adjacent texts join with a blank line, empty texts drop."""
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    for role, _ in messages:
        if role == "system":
            raise InvalidRequestError(
                "system messages are not supported by Voxtral (its tokenizer rejects them "
                "when audio is present); put the instruction in the user message"
            )
        if role not in ("user", "assistant"):
            raise InvalidRequestError(f"unsupported message role '{role}'; use user or assistant")
    merged = []
    for role, group in groupby(messages, key=lambda m: m[0]):
        merged.append((role, _join_texts([p for _, content in group for p in _as_parts(content)])))
    if merged[-1][0] != "user":
        raise InvalidRequestError("the last message must be from the user")
    ids = [tok.bos]
    for role, parts in merged:
        if role == "user":
            ids.append(tok.inst)
            for part in parts:
                ids += audio_block(tok, part.n_tokens) if isinstance(part, AudioPart) else tok.encode(part)
            ids.append(tok.end_inst)
        else:
            if any(isinstance(p, AudioPart) for p in parts):
                raise InvalidRequestError("assistant messages cannot contain audio")
            text = "".join(p for p in parts if isinstance(p, str)).rstrip(" ")
            if not text:
                raise InvalidRequestError("assistant messages must have text content")
            ids += tok.encode(text) + [tok.eos]
    return ids


def _as_parts(content) -> list[Part]:
    return [content] if isinstance(content, str) else list(content)


def _join_texts(parts: list[Part]) -> list[Part]:
    """Coalesce adjacent texts with a blank line; v7 uses '\\n\\n' within and across messages alike."""
    out: list[Part] = []
    pending: list[str] = []
    for part in parts:
        if isinstance(part, AudioPart):
            if pending:
                out.append("\n\n".join(pending))
                pending = []
            out.append(part)
        elif part:
            pending.append(part)
    if pending:
        out.append("\n\n".join(pending))
    return out
