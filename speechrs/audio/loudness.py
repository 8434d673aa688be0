"""ITU-R BS.1770-4 integrated loudness and mistral.rs's output stage: gain to -14 LUFS, then tanh."""

import math

import numpy as np

TARGET_LUFS = -14.0
MIN_RMS = 2e-3  # quieter than this (near silence) is left as is, as mistral.rs does


def _k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads (high shelf, then RLB high-pass) for any sample rate (pyloudnorm's derivation)."""
    # stage 1: high shelf, +4 dB above ~1.5 kHz
    G, Q, fc = 3.99984385397, 0.7071752369554193, 1681.9744509555319
    K, Vh, Vb = math.tan(math.pi * fc / rate), 10 ** (G / 20), (10 ** (G / 20)) ** 0.499666774155
    a0 = 1 + K / Q + K * K
    shelf = (
        np.array([(Vh + Vb * K / Q + K * K) / a0, 2 * (K * K - Vh) / a0, (Vh - Vb * K / Q + K * K) / a0]),
        np.array([1.0, 2 * (K * K - 1) / a0, (1 - K / Q + K * K) / a0]),
    )
    # stage 2: high-pass at ~38 Hz
    Q, fc = 0.5003270373238773, 38.13547087613982
    K = math.tan(math.pi * fc / rate)
    a0 = 1 + K / Q + K * K
    highpass = (np.array([1.0, -2.0, 1.0]), np.array([1.0, 2 * (K * K - 1) / a0, (1 - K / Q + K * K) / a0]))
    return [shelf, highpass]


def biquad(b: np.ndarray, a: np.ndarray, x: np.ndarray, block: int = 256) -> np.ndarray:
    """scipy.signal.lfilter(b, a, x) for one biquad (a[0] == 1), zero initial state, in float64, to rounding.

    scipy.signal is slow to import (scipy.stats comes with it; docs/performance.md, "Per-call and load costs"),
    which a one-shot `speechrs speak` paid at its end. Here the recursion runs a block at a time in matrix form:
    the biquad's state (transposed direct form II) s' = A s + B x, y = C s + b0 x, so over a block of L samples
    starting in state s, y = T x + Obs s and the next state is A^L s + R x, T the lower-triangular Toeplitz matrix
    of the impulse response, Obs the rows C A^n, R the columns A^(L-1-k) B. Two matmuls over all blocks, then the
    state carried from block to block (2 numbers)."""
    b0, b1, b2 = (float(v) for v in b)
    a1, a2 = float(a[1]), float(a[2])
    A = np.array([[-a1, 1.0], [-a2, 0.0]])
    B = np.array([b1 - a1 * b0, b2 - a2 * b0])
    powers = [np.eye(2)]
    for _ in range(block):
        powers.append(A @ powers[-1])
    Obs = np.array([p[0] for p in powers[:block]])  # (L, 2): C A^n, C = [1, 0]
    h = np.concatenate([[b0], Obs[:-1] @ B])  # impulse response h[0..L-1]
    n = np.arange(block)
    T = np.where(n[:, None] >= n[None, :], h[(n[:, None] - n[None, :]) % block], 0.0)  # (L, L)
    R = np.array([powers[block - 1 - k] @ B for k in range(block)]).T  # (2, L)
    length = len(x)
    padded = np.zeros(-(-length // block) * block)
    padded[:length] = x
    X = padded.reshape(-1, block)
    (p00, p01), (p10, p11) = powers[block]
    states = np.empty((len(X), 2))
    s0 = s1 = 0.0
    for j, (r0, r1) in enumerate((X @ R.T).tolist()):  # each block's state, from the one before
        states[j] = s0, s1
        s0, s1 = p00 * s0 + p01 * s1 + r0, p10 * s0 + p11 * s1 + r1
    return (X @ T.T + states @ Obs.T).reshape(-1)[:length]


def integrated_loudness(pcm: np.ndarray, rate: int) -> float:
    """LUFS of a mono signal: 400 ms blocks, 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU."""
    x = pcm.astype(np.float64)
    for b, a in _k_weighting(rate):
        x = biquad(b, a, x)
    block, hop = int(0.4 * rate), int(0.1 * rate)
    if len(x) < block:
        x = np.pad(x, (0, block - len(x)))
    starts = np.arange(0, len(x) - block + 1, hop)
    power = np.array([np.mean(x[s : s + block] ** 2) for s in starts])
    loud = -0.691 + 10 * np.log10(np.maximum(power, 1e-20))
    gated = power[loud > -70.0]
    if gated.size == 0:
        return -math.inf
    relative = -0.691 + 10 * np.log10(gated.mean()) - 10.0
    gated = power[(loud > -70.0) & (loud > relative)]
    return -0.691 + 10 * math.log10(gated.mean()) if gated.size else -math.inf


def normalize(pcm: np.ndarray, rate: int, target: float = TARGET_LUFS) -> np.ndarray:
    """Gain to `target` LUFS unless near-silent, then tanh as a soft limiter (mistral.rs normalize_loudness)."""
    if np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) >= MIN_RMS:
        loudness = integrated_loudness(pcm, rate)
        if math.isfinite(loudness):
            pcm = pcm * 10 ** ((target - loudness) / 20)
    return np.tanh(pcm).astype(np.float32)
