"""Reference voices for Dia voice cloning: audio -> DAC codes, with the most recent encodings kept.

A server is often asked for many lines in the same voice, and a DAC encoder pass is slow on a CPU
(docs/architecture.md), so each reference is encoded once. Entries are keyed by a hash of the 44.1 kHz samples.
"""

import hashlib

import numpy as np
import torch

from speechrs.audio import decode as audio
from speechrs.errors import AudioError

CACHED_VOICES = 16
MIN_SECONDS = 0.5  # shorter references give the decoder almost nothing to imitate


def encode_reference(pipeline, ref_audio, max_seconds: float | None = None) -> torch.Tensor:
    """ref_audio (anything audio.load takes) -> codes (L, C), L = ceil(samples / 512) at 44.1 kHz. Audio longer
    than max_seconds is refused from its decoded length, before it is resampled or encoded."""
    from speechrs.dia.dac_encoder import encode

    rate = pipeline.codec.cfg.sample_rate
    pcm = audio.load(ref_audio, rate, max_seconds)
    if len(pcm) < MIN_SECONDS * rate:
        raise AudioError(f"ref_audio is {len(pcm) / rate:.2f} s; give at least {MIN_SECONDS} s (5-10 s works best)")
    cache = pipeline.voices
    key = hashlib.sha256(np.ascontiguousarray(pcm, dtype=np.float32).tobytes()).hexdigest()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    codes = encode(pipeline.codec, torch.from_numpy(pcm)).cpu()
    cache[key] = codes
    while len(cache) > CACHED_VOICES:
        cache.popitem(last=False)
    return codes
