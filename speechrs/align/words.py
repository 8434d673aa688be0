"""Every word of a transcript with its start and end: the CTC emission of a stretch of audio force-aligned to the
words' spoken forms (text.py, ctc.py), the frames mapped back onto the words as written. A word the aligner cannot
place (nothing to spell, or no room in the frames) gets times interpolated between its neighbours and says so
(`aligned` False); none is dropped. Words stay inside the stretch, in order, without overlapping."""

from dataclasses import dataclass

import numpy as np

from speechrs.align.ctc import forced_align, token_spans, word_spans
from speechrs.align.text import DELIMITER, AlignWord, spoken_words


@dataclass(frozen=True)
class TimedWord:
    word: str  # as written in the transcript
    start: float  # seconds of the original audio
    end: float
    score: float | None  # mean probability of its frames; None when interpolated
    aligned: bool


def targets(words: list[AlignWord], token_to_id: dict[str, int]) -> tuple[list[int], list[int]]:
    """The token ids of the words that have a spoken form, joined by the delimiter, and those words' indices."""
    if DELIMITER not in token_to_id:
        raise ValueError(f"the aligner's vocabulary has no word delimiter '{DELIMITER}'")
    ids: list[int] = []
    placed = []
    for i, word in enumerate(words):
        if not word.spoken:
            continue
        if ids:
            ids.append(token_to_id[DELIMITER])
        ids += [token_to_id[c] for c in word.spoken]  # spell() keeps only the vocabulary's characters
        placed.append(i)
    return ids, placed


def _interpolate(times: list[tuple[float, float] | None], start: float, end: float) -> list[tuple[float, float]]:
    """Fill each run of untimed words evenly into the gap between its timed neighbours (or the stretch's ends)."""
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(times):
        known = times[i]
        if known is not None:
            out.append(known)
            i += 1
            continue
        j = i
        while j < len(times) and times[j] is None:
            j += 1
        left = out[-1][1] if out else start
        right = times[j][0] if j < len(times) else end  # type: ignore[index]
        step = max(right - left, 0.0) / (j - i)
        out += [(left + k * step, left + (k + 1) * step) for k in range(j - i)]
        i = j
    return out


def time_words(
    log_probs: np.ndarray,
    transcript: str,
    token_to_id: dict[str, int],
    blank: int,
    language: str | None,
    frame_s: float,
    start_s: float,
    end_s: float,
) -> list[TimedWord]:
    """`log_probs` (T, V): the aligner's log-softmax over a stretch of audio that starts at `start_s` and ends at
    `end_s` in the original audio, one frame every `frame_s` seconds. Every word of `transcript` comes back timed."""
    vocab = set(token_to_id)
    words = spoken_words(transcript, vocab, language)
    ids, placed = targets(words, token_to_id)
    times: list[tuple[float, float] | None] = [None] * len(words)
    scores: list[float | None] = [None] * len(words)
    if ids:
        try:
            path, _ = forced_align(log_probs, ids, blank)
        except ValueError:  # fewer frames than the words need: every word interpolated
            path = None
        if path is not None:
            spans = word_spans(token_spans(path, ids, log_probs, blank), token_to_id[DELIMITER])
            parts = [word.spoken.count(DELIMITER) + 1 for word in (words[i] for i in placed)]
            k = 0
            for index, n in zip(placed, parts, strict=True):  # a word spoken as several ("twenty twenty-six")
                first, last = spans[k], spans[k + n - 1]
                frames = sum(s.end - s.start for s in spans[k : k + n])
                score = sum(s.score * (s.end - s.start) for s in spans[k : k + n]) / frames
                a, b = start_s + first.start * frame_s, start_s + last.end * frame_s
                times[index], scores[index] = (min(a, end_s), min(b, end_s)), score
                k += n
    filled = _interpolate(times, start_s, end_s)
    return [
        TimedWord(word.text, a, b, scores[i], times[i] is not None)
        for i, (word, (a, b)) in enumerate(zip(words, filled, strict=True))
    ]
