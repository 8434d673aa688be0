"""Named voices for Dia: a reference clip and its transcript saved under a name, with the clip's DAC codes cached
beside it, so a voice is encoded once (a DAC encoder pass is slow on a CPU: docs/architecture.md).

    <voices dir>/<name>/clip.<ext>    the reference file exactly as it was added (arrays: a float WAV)
    <voices dir>/<name>/voice.json    {"text": "[S1] ...", "seconds": 6.2}
    <voices dir>/<name>/codes.npz     the codes (L, C) and the fingerprint of the DAC that made them

The directory: --voices-dir, else $SPEECHRS_VOICES_DIR, else $XDG_DATA_HOME/speechrs/voices (~/.local/share/...).
"""

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechrs import settings
from speechrs.audio import decode as audio
from speechrs.errors import AudioError, InvalidRequestError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RATE = 44100  # the DAC's
# OpenAI's built-in voice names: a client that sends one (its default) gets Dia's own voices, unless a voice of
# that name was added
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
OPENAI_VOICES |= {"marin", "cedar"}


def default_dir() -> Path:
    return settings.voices_dir()


@dataclass(frozen=True)
class Voice:
    name: str
    text: str  # the clip's transcript, with [S1]/[S2]
    seconds: float
    directory: Path

    @property
    def clip(self) -> Path:
        found = sorted(self.directory.glob("clip.*"))
        return found[0] if found else self.directory / "clip.wav"


class VoiceStore:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()

    def add(self, name: str, clip, text: str) -> Voice:
        """clip: a path, encoded bytes or (array, rate). Kept as given, so the voice speaks exactly as passing the
        clip itself would; replaces a voice of the same name."""
        if not NAME.fullmatch(name):
            raise InvalidRequestError(f"voice name '{name[:70]}' must be 1-64 letters, digits, '_', '-' or '.'")
        if not text.strip():
            raise InvalidRequestError("a voice needs its clip's transcript, with [S1]/[S2] tags (--text)")
        pcm = audio.load(clip, RATE)
        seconds = len(pcm) / RATE
        if not 0.5 <= seconds <= 20:
            raise AudioError(f"the clip is {seconds:.1f} s; a voice takes 0.5-20 s (5-10 s works best)")
        target = self.directory / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if isinstance(clip, tuple):  # an array: lossless
            import soundfile as sf

            sf.write(target / "clip.wav", np.asarray(clip[0], dtype=np.float32), int(clip[1]), subtype="FLOAT")
        elif isinstance(clip, bytes):
            (target / "clip.audio").write_bytes(clip)
        else:
            shutil.copyfile(clip, target / f"clip{Path(str(clip)).suffix.lower() or '.audio'}")
        (target / "voice.json").write_text(json.dumps({"text": text, "seconds": round(seconds, 3)}, ensure_ascii=False))
        return self.get(name)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if (p / "voice.json").is_file())

    def list(self) -> list[Voice]:
        voices = []
        for name in self.names():
            try:
                voices.append(self.get(name))
            except AudioError:  # a damaged voice is listed by `names` but not usable: skip it here
                continue
        return voices

    def get(self, name: str) -> Voice:
        directory = self.directory / name
        if not NAME.fullmatch(name) or not (directory / "voice.json").is_file():
            known = ", ".join(self.names()) or "none yet (speechrs voices add NAME clip.wav --text ...)"
            raise InvalidRequestError(f"no voice named '{name[:70]}'; the voices are: {known}", "voice")
        try:
            meta = json.loads((directory / "voice.json").read_text(encoding="utf-8"))
            return Voice(name, str(meta["text"]), float(meta["seconds"]), directory)
        except (OSError, ValueError, KeyError, TypeError):
            raise AudioError(
                f"voice '{name}' is damaged ({directory / 'voice.json'}); remove and add it again"
            ) from None

    def remove(self, name: str) -> None:
        """Delete voice `name`, a damaged one included (its files need not parse to be removed)."""
        if name not in self.names():
            self.get(name)  # the "no voice named ..." error, with the list
        shutil.rmtree(self.directory / name)

    def reference(self, name: str, pipeline) -> tuple[torch.Tensor, str]:
        """The voice's codes (L, C) for `pipeline`'s DAC, from the cache beside it or encoded and cached now, and
        its transcript."""
        from speechrs.dia.voices import encode_reference

        voice = self.get(name)
        fingerprint = _dac_fingerprint(pipeline)
        cache = voice.directory / "codes.npz"
        try:
            with np.load(cache) as saved:
                if str(saved["dac"]) == fingerprint:
                    return torch.from_numpy(saved["codes"]), voice.text
        except (OSError, ValueError, KeyError):
            pass  # no cache yet, another DAC's, or unreadable: encode again
        if not voice.clip.is_file():
            raise AudioError(f"voice '{name}' has lost its clip ({voice.clip}); remove and add it again")
        codes = encode_reference(pipeline, voice.clip.read_bytes())
        tmp = voice.directory / "codes.tmp.npz"
        np.savez(tmp, codes=codes.numpy(), dac=fingerprint)
        tmp.replace(cache)  # whole or not at all, should two requests encode it at once
        return codes, voice.text


def _dac_fingerprint(pipeline) -> str:
    """Which DAC the codes belong to: a hash of its quantizer's first codebook (codes differ between DACs)."""
    first = next(t for n, t in pipeline.codec.state_dict().items() if "codebook" in n)
    return hashlib.sha256(first.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
