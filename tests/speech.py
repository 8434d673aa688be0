"""Real speech with known pauses for the transcript tests and benchmark: espeak-ng sentences joined by silences."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Speech servers should give subtitles with the right times.",
    "A third sentence closes this short test recording.",
]
PAUSE_S = 2.0
RATE = 22050  # espeak-ng's


class EspeakMissing(RuntimeError):
    pass


def espeak(text: str, path: Path) -> np.ndarray:
    """The sentence spoken by espeak-ng, without its own lead-in and tail silence."""
    if shutil.which("espeak-ng") is None:
        raise EspeakMissing("espeak-ng is not installed (make test installs it with apt where it can)")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    pcm, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    loud = np.flatnonzero(np.abs(pcm) > 1e-3)
    return pcm[loud[0] : loud[-1] + 1]


def speech_with_pauses(directory: Path, repeats: int = 1, sentences=SENTENCES, pause_s: float = PAUSE_S):
    """-> (22.05 kHz samples, [(start, end)] of each spoken sentence in seconds): 0.5 s of silence, then the
    sentences (repeated) with pause_s of silence after each."""
    spoken = [espeak(s, directory / f"sentence{i}.wav") for i, s in enumerate(sentences)]
    parts, truth, t = [np.zeros(RATE // 2, np.float32)], [], RATE // 2
    for _ in range(repeats):
        for pcm in spoken:
            parts += [pcm, np.zeros(int(pause_s * RATE), np.float32)]
            truth.append((t / RATE, (t + len(pcm)) / RATE))
            t += len(pcm) + int(pause_s * RATE)
    return np.concatenate(parts), truth
