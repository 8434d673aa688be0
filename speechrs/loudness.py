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


def integrated_loudness(pcm: np.ndarray, rate: int) -> float:
    """LUFS of a mono signal: 400 ms blocks, 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU."""
    from scipy.signal import lfilter

    x = pcm.astype(np.float64)
    for b, a in _k_weighting(rate):
        x = lfilter(b, a, x)
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
