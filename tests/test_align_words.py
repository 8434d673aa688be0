"""Words timed from a CTC emission (align/words.py), with a test double for the acoustic model only: log-probs that
put each character on frames known in advance. The alignment and the mapping back onto the words are the real
code."""

import numpy as np
import pytest

from speechrs.align.text import DELIMITER, spoken_words
from speechrs.align.words import time_words

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"
TOKENS = {"<pad>": 0, DELIMITER: 1, **{c: i + 2 for i, c in enumerate(LETTERS)}}
FRAME_S = 0.02


def emission(spoken: list[str], gaps: list[int], per_char: int = 2) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Log-probs (T, V) whose best path reads each spoken word's characters for `per_char` frames each, after
    `gaps[i]` frames of silence (blanks and one delimiter), and each word's true (first frame, end frame)."""
    labels: list[int] = []
    truth = []
    for i, (word, gap) in enumerate(zip(spoken, gaps, strict=True)):
        # silence between words, where a wav2vec2 model emits the word delimiter once
        labels += [0] * (gap // 2) + ([TOKENS[DELIMITER]] if i else [0]) + [0] * (gap - gap // 2 - 1)
        first = len(labels)
        for part_index, part in enumerate(word.split(DELIMITER)):
            if part_index:
                labels.append(TOKENS[DELIMITER])  # between the words of a number spoken as several
            for k, char in enumerate(part):
                if k and part[k - 1] == char:
                    labels.append(0)  # CTC parts a repeated letter with a blank ("HELLO")
                labels += [TOKENS[char]] * per_char
        truth.append((first, len(labels)))
    labels += [0] * 5
    probs = np.full((len(labels), len(TOKENS)), 0.01 / (len(TOKENS) - 1))
    probs[np.arange(len(labels)), labels] = 0.99
    return np.log(probs).astype(np.float32), truth


def test_every_word_lands_on_its_own_frames_numbers_included():
    transcript = "Hello, world: 2026 is here."
    spoken = [w.spoken for w in spoken_words(transcript, set(TOKENS), "en")]
    assert spoken == ["HELLO", "WORLD", "TWENTY|TWENTY|SIX", "IS", "HERE"]
    log_probs, truth = emission(spoken, gaps=[10, 25, 15, 30, 8])
    words = time_words(log_probs, transcript, TOKENS, 0, "en", FRAME_S, start_s=100.0, end_s=200.0)
    assert [w.word for w in words] == transcript.split()
    for word, (first, end) in zip(words, truth, strict=True):
        assert word.aligned and word.score is not None and word.score > 0.9
        assert word.start == pytest.approx(100.0 + first * FRAME_S) and word.end == pytest.approx(100.0 + end * FRAME_S)
    assert all(a.end <= b.start for a, b in zip(words, words[1:], strict=False))  # in order, not overlapping


def test_a_word_with_nothing_to_align_is_interpolated_between_its_neighbours_not_dropped():
    transcript = "one — two 日本 three"
    spoken = [w.spoken for w in spoken_words(transcript, set(TOKENS), "en")]
    assert spoken == ["ONE", "", "TWO", "", "THREE"]
    log_probs, truth = emission([s for s in spoken if s], gaps=[5, 20, 20])
    words = time_words(log_probs, transcript, TOKENS, 0, "en", FRAME_S, start_s=0.0, end_s=len(log_probs) * FRAME_S)
    assert [w.aligned for w in words] == [True, False, True, False, True]
    dash, kanji = words[1], words[3]
    assert words[0].end == pytest.approx(dash.start) and dash.end == pytest.approx(words[2].start)
    assert words[2].end == pytest.approx(kanji.start) and kanji.end == pytest.approx(words[4].start)
    assert dash.score is None and dash.start < dash.end


def test_too_few_frames_interpolates_every_word_inside_the_stretch():
    log_probs = np.log(np.full((4, len(TOKENS)), 1 / len(TOKENS), dtype=np.float32))  # far too short for the text
    words = time_words(log_probs, "a rather long sentence", TOKENS, 0, "en", FRAME_S, start_s=3.0, end_s=5.0)
    assert [w.aligned for w in words] == [False] * 4
    assert words[0].start == 3.0 and words[-1].end == pytest.approx(5.0)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(words, words[1:], strict=False))


def test_a_vocabulary_without_a_word_delimiter_is_refused():
    tokens = {k: v for k, v in TOKENS.items() if k != DELIMITER}
    log_probs = np.zeros((10, len(TOKENS)), dtype=np.float32)
    with pytest.raises(ValueError, match="no word delimiter"):
        time_words(log_probs, "hi", tokens, 0, "en", FRAME_S, 0.0, 1.0)
