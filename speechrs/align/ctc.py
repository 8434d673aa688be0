"""CTC forced alignment: the best frame-level path of a CTC emission that collapses to a given token sequence
(Viterbi over the trellis, as `torchaudio.functional.forced_align`), then token and word spans in frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenSpan:
    """One target token's frames [start, end) on the best path, and the mean probability of its frames."""

    token: int
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class WordSpan:
    """One word's frames [start, end), its tokens' spans [first, last) and the mean probability of its frames."""

    start: int
    end: int
    first: int
    last: int
    score: float


def repeats(targets: np.ndarray) -> int:
    """Adjacent equal targets: each needs a blank frame between its two tokens."""
    return int(np.count_nonzero(targets[1:] == targets[:-1]))


def forced_align(log_probs: np.ndarray, targets, blank: int) -> tuple[np.ndarray, float]:
    """The best CTC path of `log_probs` (T, V) that collapses to `targets` (L,) and its summed log-probability.

    Returns the path as one label a frame (T,) int64: `blank` or a target token. The trellis has 2L+1 states
    (blank, t1, blank, t2, ..., tL, blank); a state is reached by staying, from the state before it, or by
    skipping the blank before it when its token differs from the previous target's. Ties are broken as
    torchaudio's: a skip only when strictly better than both others, the previous state only when strictly better
    than staying, and the path ends on the last blank unless the last token is strictly better. Scores add in
    float64. Raises ValueError when T < L + repeats (no path exists) or the inputs are malformed.
    """
    log_probs = np.asarray(log_probs)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be (frames, vocab), got shape {log_probs.shape}")
    n_frames, vocab = log_probs.shape
    if not 0 <= blank < vocab:
        raise ValueError(f"blank {blank} is outside the vocabulary of {vocab}")
    if np.any(targets == blank):
        raise ValueError(f"targets contain the blank id {blank}")
    if np.any((targets < 0) | (targets >= vocab)):
        raise ValueError(f"targets must be ids below the vocabulary size {vocab}")
    n_targets = len(targets)
    if n_frames < n_targets + repeats(targets) or n_frames == 0:
        raise ValueError(
            f"{n_frames} frames cannot hold {n_targets} targets with {repeats(targets)} adjacent repeats "
            f"(needs at least {max(n_targets + repeats(targets), 1)})"
        )

    n_states = 2 * n_targets + 1
    labels = np.full(n_states, blank, dtype=np.int64)
    labels[1::2] = targets
    # a skip from state s-2 into s: s holds a token (odd), it is not the first, and it differs from the previous one
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[3::2] = targets[1:] != targets[:-1]
    emit = log_probs[:, labels].astype(np.float64)  # (T, S)

    alpha = np.full(n_states, -np.inf)
    alpha[: min(2, n_states)] = emit[0, : min(2, n_states)]
    back = np.zeros((n_frames, n_states), dtype=np.int8)
    stay = np.empty(n_states)
    step = np.empty(n_states)
    skip = np.empty(n_states)
    for t in range(1, n_frames):
        stay[:] = alpha
        step[0], step[1:] = -np.inf, alpha[:-1]
        skip[:] = -np.inf
        skip[2:] = np.where(can_skip[2:], alpha[:-2], -np.inf)
        take_skip = (skip > step) & (skip > stay)
        take_step = ~take_skip & (step > stay)
        back[t] = np.where(take_skip, 2, np.where(take_step, 1, 0))
        alpha = np.where(take_skip, skip, np.where(take_step, step, stay)) + emit[t]

    state = n_states - 1 if n_states == 1 or alpha[-1] > alpha[-2] else n_states - 2
    score = float(alpha[state])
    states = np.empty(n_frames, dtype=np.int64)
    for t in range(n_frames - 1, -1, -1):
        states[t] = state
        state -= int(back[t, state])
    return labels[states], score


def token_spans(path: np.ndarray, targets, log_probs: np.ndarray, blank: int) -> list[TokenSpan]:
    """Each target's frames on `path` (from forced_align) and the mean probability of the target over them.

    The path's runs of one non-blank label are its tokens, in order (equal adjacent targets are parted by a blank).
    """
    path = np.asarray(path, dtype=np.int64).reshape(-1)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(path) != len(log_probs):
        raise ValueError(f"the path has {len(path)} frames, log_probs {len(log_probs)}")
    token = path != blank
    change = np.ones(len(path), dtype=bool)
    change[1:] = path[1:] != path[:-1]
    starts = np.flatnonzero(token & change)
    ends = np.flatnonzero(token & np.append(change[1:], True)) + 1
    if not np.array_equal(path[starts], targets):
        raise ValueError("the path does not collapse to the targets")
    probs = np.exp(np.asarray(log_probs, dtype=np.float64)[np.arange(len(path)), path])
    return [
        TokenSpan(int(path[a]), int(a), int(b), float(probs[a:b].mean()))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def word_spans(spans: list[TokenSpan], delimiter: int) -> list[WordSpan]:
    """Group token spans into words at the `delimiter` token ("|" in wav2vec2 vocabularies).

    A word runs from its first token's start to its last token's end; its score is the mean probability over its
    tokens' frames. Delimiters at either end or in a row make no empty word.
    """
    words: list[WordSpan] = []
    first = 0
    for i in range(len(spans) + 1):
        if i < len(spans) and spans[i].token != delimiter:
            continue
        if i > first:
            word = spans[first:i]
            frames = sum(s.end - s.start for s in word)
            score = sum(s.score * (s.end - s.start) for s in word) / frames
            words.append(WordSpan(word[0].start, word[-1].end, first, i, score))
        first = i + 1
    return words
