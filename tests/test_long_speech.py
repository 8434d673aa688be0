"""Scripts of any length (speechrs/dia/script.py): split where speech pauses, each piece in the voices of the one
before (its codes and text are the next piece's reference), joined without clicks, captioned."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from speechrs import subtitles
from speechrs.dia.checkpoint import load_dia
from speechrs.dia.delay import frames as undelayed_frames
from speechrs.dia.pipeline import AudioChunk, DiaPipeline, SpeakOptions, SpeechResult, Step, encode_text
from speechrs.dia.script import CROSSFADE, PIECE_BYTES, Joiner, split_script
from speechrs.errors import InvalidRequestError

TURN = "[S{}] This is turn number {}. It has two sentences, the second one a little longer than the first."
SCRIPT = " ".join(TURN.format(1 + i % 2, i) for i in range(32))  # 3,000+ bytes, alternating speakers
FAST = SpeakOptions(max_tokens=24, seed=5)  # 8 frames a piece on the tiny random model: short, many pieces


@pytest.fixture(scope="module")
def pipeline(dia_dirs, dac):
    return DiaPipeline(load_dia(dia_dirs[0], None), dac)


def test_split_prefers_turns_then_sentences_and_loses_no_word():
    assert len(SCRIPT.encode()) > 3000
    pieces = split_script(SCRIPT, PIECE_BYTES)
    assert all(len(p.encode()) <= PIECE_BYTES for p in pieces) and len(pieces) > 1
    assert all(p.startswith(("[S1]", "[S2]")) for p in pieces)
    assert pieces[0] == TURN.format(1, 0) + " " + TURN.format(2, 1)  # two whole turns fit: cut between turns
    assert " ".join(pieces).split() == SCRIPT.split()
    long_turn = "[S2] " + " ".join(f"Sentence {i} goes on for a while." for i in range(20))
    cut = split_script(long_turn, 120)
    assert len(cut) > 1 and all(p.startswith("[S2] Sentence") for p in cut)  # each piece keeps its speaker
    assert all(p.endswith(".") for p in cut)  # cut between sentences
    assert [w for p in cut for w in p.split() if w != "[S2]"] == long_turn.split()[1:]
    with pytest.raises(InvalidRequestError, match="does not fit"):
        split_script("[S1] " + "x" * 300, 120)


def test_joiner_crossfades_at_the_seam_and_keeps_every_sample():
    a, b = np.ones(5000, np.float32), -np.ones(3000, np.float32)
    j = Joiner()
    out = [j.push(a)]
    j.new_piece()
    out += [j.push(b[:100]), j.push(b[100:]), j.finish()]
    joined = np.concatenate(out)
    assert len(joined) == len(a) + len(b) - CROSSFADE  # the seam overlaps
    seam = joined[len(a) - CROSSFADE : len(a)]
    assert seam[0] == 1 and np.all(np.diff(seam) < 0) and seam[-1] > -1  # a ramp, no jump
    assert np.all(joined[: len(a) - CROSSFADE] == 1) and np.all(joined[len(a) :] == -1)


def test_a_long_script_is_one_file_of_pieces_each_conditioned_on_the_last(pipeline):
    result = list(pipeline.speak(SCRIPT, FAST))[-1]
    assert isinstance(result, SpeechResult)
    pieces = split_script(SCRIPT, PIECE_BYTES)
    n = len(pieces)
    assert result.timings["pieces"] == n > 1 and len(result.segments) == n
    frames = len(result.codes) // n
    assert len(result.codes) == n * frames and frames > 0
    assert len(result.pcm) == n * frames * 512 - (n - 1) * CROSSFADE
    # piece 2 is what Dia gives with piece 1's codes and text as its reference: the same codes
    settings = pipeline.options(FAST)
    ids = encode_text(pieces[0] + " " + pieces[1], pipeline.cfg)
    rows = list(pipeline.generate_codes(ids, settings, torch.from_numpy(result.codes[:frames])))[-1]
    alone = undelayed_frames(rows, frames, 2 * frames, pipeline.cfg)
    assert np.array_equal(alone.numpy(), result.codes[frames : 2 * frames])
    again = list(pipeline.speak(SCRIPT, FAST))[-1]
    assert np.array_equal(again.pcm, result.pcm)  # the same seed, the same bytes


def test_captions_are_ordered_cover_the_audio_and_parse(pipeline):
    import srt
    import webvtt

    result = list(pipeline.speak(SCRIPT[:1200], FAST))[-1]
    segments = result.segments
    assert segments[0].start == 0 and segments[-1].end == pytest.approx(result.duration_s)
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.start < b.start < a.end <= b.end  # consecutive, overlapping by the crossfade only
        assert a.end - b.start == pytest.approx(CROSSFADE / 44100)
    assert [s.text for s in segments] == split_script(SCRIPT[:1200], PIECE_BYTES)
    parsed = list(srt.parse(subtitles.srt(segments)))
    assert [c.content for c in parsed] == [s.text for s in segments]
    assert len(webvtt.from_string(subtitles.vtt(segments))) == len(segments)
    short = list(pipeline.speak("[S1] Hi.", FAST))[-1]  # one piece: one caption
    assert [(s.start, s.end, s.text) for s in short.segments] == [(0.0, short.duration_s, "[S1] Hi.")]


def test_streaming_runs_across_pieces(pipeline):
    opts = SpeakOptions(max_tokens=24, seed=5, normalize=False)
    whole = list(pipeline.speak(SCRIPT[:1000], opts))[-1]
    events = list(pipeline.speak(SCRIPT[:1000], opts, stream_audio=True))
    chunks = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    steps = [e for e in events if isinstance(e, Step)]
    assert {s.piece for s in steps} == set(range(len(whole.segments))) and steps[-1].pieces == len(whole.segments)
    np.testing.assert_allclose(chunks, whole.pcm, atol=2e-5, rtol=0)  # the DAC in pieces, as for one piece
    assert np.array_equal(events[-1].pcm, chunks)


def test_the_input_limit_is_a_clear_error(pipeline):
    pipeline.max_input_chars = 1000
    try:
        with pytest.raises(InvalidRequestError, match="at most 1000"):
            pipeline.speak(SCRIPT, FAST)
    finally:
        pipeline.max_input_chars = None


def test_cli_writes_one_file_and_captions(dia_dirs, dac_dirs, tmp_path):
    from test_cli import invoke

    script = tmp_path / "script.txt"
    script.write_text(SCRIPT[:800])
    out, captions = tmp_path / "long.wav", tmp_path / "long.vtt"
    args = ["--file", script, "-m", dia_dirs[0], "--dac", dac_dirs[0], "--seed", "5", "--max-tokens", "24"]
    result = invoke("speak", *args, "-o", out, "--captions", captions)
    assert result.exit_code == 0, result.stderr
    pcm, rate = sf.read(io.BytesIO(out.read_bytes()))
    n = len(split_script(SCRIPT[:800], PIECE_BYTES))
    assert rate == 44100 and f"in {n} pieces" in result.stderr
    assert captions.read_text().startswith("WEBVTT") and captions.read_text().count(" --> ") == n
    bad = invoke("speak", *args, "-o", out, "--captions", tmp_path / "c.txt")
    assert bad.exit_code == 1 and "--captions takes a .srt or .vtt file" in bad.stderr


def test_server_streams_a_long_script_with_captions_and_limits_its_length(server, engine):
    import json

    from http_server import error_of, post

    text = SCRIPT[:700]
    status, _, body = post(server, "/v1/audio/speech", {"input": text, "stream_format": "sse", **FAST.__dict__})
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: {")]
    assert status == 200 and events[-1]["type"] == "speech.audio.done"
    pieces = split_script(text, PIECE_BYTES)
    assert [s["text"] for s in events[-1]["segments"]] == pieces and len(pieces) > 1
    dia = next(m for m in engine.models if m.family == "dia").dia
    dia.max_input_chars = 500
    try:
        status, err = error_of(post(server, "/v1/audio/speech", {"input": text}))
        assert status == 400 and err["param"] == "input" and "at most 500" in err["message"]
    finally:
        dia.max_input_chars = None
