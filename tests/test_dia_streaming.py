"""Streamed Dia audio (speechrs/dia/streaming.py): early, in order, and equal to the whole-clip decode."""

import numpy as np
import pytest

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.pipeline import AudioChunk, DiaPipeline, SpeakOptions, SpeechResult, Step
from speechrs.errors import InvalidRequestError

TEXT = "[S1] Hello there. [S2] Hi! (laughs)"


@pytest.fixture(scope="module")
def pipeline(dia_dirs, dac):
    return DiaPipeline(load_dia(dia_dirs[1], None), dac)


def test_streamed_pieces_equal_the_whole_clip_and_come_early(pipeline):
    opts = SpeakOptions(max_tokens=240, temperature=0, normalize=False)  # greedy: both runs write the same codes
    whole = list(pipeline.speak(TEXT, opts))[-1]
    events = list(pipeline.speak(TEXT, opts, stream_audio=True))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    result = events[-1]
    assert isinstance(result, SpeechResult) and np.array_equal(result.codes, whole.codes)
    assert len(whole.codes) > 16 + 32 + 64  # the greedy tiny model speaks long enough for several pieces
    assert sum(len(c.pcm) for c in chunks) == len(whole.pcm) == len(whole.codes) * 512
    # 16 frames pushed give what the DAC's reach (~10 frames) leaves final; then each push gives its own frames
    assert 0 < len(chunks[0].pcm) < 16 * 512 and [len(c.pcm) for c in chunks[1:3]] == [32 * 512, 64 * 512]
    np.testing.assert_allclose(np.concatenate([c.pcm for c in chunks]), whole.pcm, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(result.pcm, np.concatenate([c.pcm for c in chunks]))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    steps = [e for e in events[:first_audio] if isinstance(e, Step)]
    assert steps[-1].frames == 16 and steps[-1].step == 16 + 15  # the first piece's frames, 15 steps behind
    frames = [e.frames for e in events if isinstance(e, Step)]
    assert frames == sorted(frames) and frames[-1] == len(whole.codes)


def test_a_clip_shorter_than_the_first_piece_still_streams(pipeline):
    events = list(pipeline.speak(TEXT, SpeakOptions(max_tokens=20, temperature=0), stream_audio=True))
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    result = events[-1]
    assert len(result.codes) <= 20 - 16 and sum(len(c.pcm) for c in chunks) == len(result.codes) * 512
    whole = list(pipeline.speak(TEXT, SpeakOptions(max_tokens=20, temperature=0, normalize=False)))[-1]
    np.testing.assert_allclose(result.pcm, whole.pcm, atol=2e-5, rtol=0)


def test_streaming_refuses_loudness_normalisation(pipeline):
    with pytest.raises(InvalidRequestError, match="cannot be loudness-normalised"):
        pipeline.speak(TEXT, SpeakOptions(normalize=True), stream_audio=True)


def test_a_cloned_voice_streams_the_same_samples(pipeline):
    from test_dac_encoder import _speechlike

    ref = dict(ref_audio=(_speechlike(0.8).numpy(), 44100), ref_text="[S1] This is how I sound.")
    opts = SpeakOptions(max_tokens=90, temperature=0, normalize=False)
    whole = list(pipeline.speak(TEXT, opts, **ref))[-1]
    events = list(pipeline.speak(TEXT, opts, stream_audio=True, **ref))
    assert np.array_equal(events[-1].codes, whole.codes) and len(whole.codes) > 0
    streamed = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    np.testing.assert_allclose(streamed, whole.pcm, atol=2e-5, rtol=0)
