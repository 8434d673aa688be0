"""Segmented transcripts: real speech with known pauses (espeak-ng), split by the real VAD, transcribed by the tiny
model; segment times checked against where the speech and the pauses are, subtitles parsed by real libraries."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import noise

from speechrs import subtitles
from speechrs.api import VoxtralModel
from speechrs.audio.decode import load, open_stream
from speechrs.audio.vad import SplitOptions
from speechrs.errors import AudioTooLongError, InvalidRequestError
from speechrs.voxtral.events import Done, GenerationOptions, Token
from speechrs.voxtral.transcript import Progress, Segment

SHORT = GenerationOptions(max_tokens=6)


def check_segments(segments, truth, duration, max_s):
    """Every boundary between segments lies in a pause, every sentence lies inside one segment, nothing is
    past the end of the audio, and no segment is longer than max_s."""
    assert segments and segments[0].start >= 0 and segments[-1].end <= duration + 1e-6
    for s in segments:
        assert 0 < s.end - s.start <= max_s + 1e-6
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end <= b.start
        pauses = [(e, s) for (_, e), (s, _) in zip(truth, truth[1:], strict=False)]
        assert any(pe - 0.05 <= a.end and b.start <= ps + 0.05 for pe, ps in pauses), (a.end, b.start)
    for start, end in truth:  # each sentence is inside one segment (0.1 s: the detector's 32 ms frames)
        assert any(s.start <= start + 0.1 and end - 0.1 <= s.end for s in segments), (start, end)


@pytest.mark.parametrize("max_s", [30.0, 8.0])
def test_segments_fall_in_the_pauses_and_cover_the_speech(native_pipeline, paused_speech, max_s):
    path, truth, duration = paused_speech
    events = list(native_pipeline.transcribe(str(path), "en", SHORT, timestamps=True, split=SplitOptions(max_s)))
    done = events[-1]
    assert isinstance(done, Done) and done.segments is not None
    check_segments(done.segments, truth, duration, max_s)
    # packed up to 30 s; with 8 s one sentence (3-3.5 s) each, as two and their pause are more
    assert len(done.segments) == 2 if max_s == 30 else len(done.segments) == len(truth)
    assert [e for e in events if isinstance(e, Segment)] == done.segments  # each also streamed as it ended
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.text  # deltas add up to the text
    assert done.text == " ".join(s.text for s in done.segments if s.text)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[0].done_s == 0 and progress[-1].done_s == pytest.approx(duration)
    for s in done.segments:
        assert s.tokens and s.avg_logprob < 0 and 0 <= s.no_speech_prob < 0.5 and s.temperature == 0


def test_a_segment_is_transcribed_as_the_same_audio_alone(native_pipeline, paused_speech):
    """A segment's tokens are those of its audio cut out and transcribed on its own: nothing leaks between."""
    path, _, _ = paused_speech
    done = list(native_pipeline.transcribe(str(path), "en", SHORT, timestamps=True, split=SplitOptions(8.0)))[-1]
    pcm16 = load(str(path), 16000)
    second = done.segments[1]
    alone = pcm16[round(second.start * 16000) : round(second.end * 16000)]
    again = list(native_pipeline.transcribe((alone, 16000), "en", SHORT))[-1]
    assert again.tokens == second.tokens


def test_silence_has_no_segments_and_noise_is_still_transcribed_without_timestamps(native_pipeline):
    done = list(native_pipeline.transcribe((np.zeros(16000 * 5, np.float32), 16000), timestamps=True))[-1]
    assert done.segments == [] and done.text == ""
    done = list(native_pipeline.transcribe((noise(3.0), 16000), opts=SHORT))[-1]  # fits one prompt: as before
    assert done.segments is None and done.tokens


def test_splitter_cuts_speech_longer_than_a_segment():
    """One unbroken region of 70 s (the detector never sees a pause) is cut into pieces of at most 30 s."""
    from speechrs.audio.vad import FRAME, Splitter

    splitter = Splitter(SplitOptions())
    probs = np.full(int(70 / (FRAME / 16000)), 0.9, np.float32)
    probs[800] = 0.6  # the least speech-like frame in the last quarter of the first span: the cut goes there
    pieces = splitter.push(probs) + splitter.finish()
    assert pieces[0] == (0, 800) and all(0 < e - s <= splitter.max_frames for s, e in pieces)
    assert pieces[-1][1] == len(probs) and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))


def test_subtitles_parse_with_real_libraries(native_pipeline, paused_speech):
    import srt
    import webvtt

    path, truth, duration = paused_speech
    done = list(native_pipeline.transcribe(str(path), "en", SHORT, timestamps=True, split=SplitOptions(8.0)))[-1]
    cues = [s for s in done.segments if s.text]
    parsed = list(srt.parse(subtitles.srt(done.segments)))
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in parsed] == [
        (pytest.approx(s.start, abs=1e-3), pytest.approx(s.end, abs=1e-3)) for s in cues
    ]
    assert [c.content for c in parsed] == [s.text.strip() for s in cues]
    captions = webvtt.from_string(subtitles.vtt(done.segments))

    def seconds(clock: str) -> float:
        h, m, rest = clock.split(":")
        return 3600 * int(h) + 60 * int(m) + float(rest)

    assert [(seconds(c.start), seconds(c.end)) for c in captions] == [
        (pytest.approx(s.start, abs=1e-3), pytest.approx(s.end, abs=1e-3)) for s in cues
    ]
    # text that would break a cue (blank lines, "-->") is kept to what a player shows
    tricky = [Segment(0, 0.0, 1.5, "a\n\nb --> c", [], 0.0, 0.0, 0.0, 0.0)]
    assert list(srt.parse(subtitles.srt(tricky)))[0].content == "a\nb -> c"
    assert webvtt.from_string(subtitles.vtt(tricky))[0].text == "a\nb -> c"


def test_translation_uses_the_chat_prompt_per_segment(native_pipeline, paused_speech):
    """Each translated segment is what a chat request with that segment's audio and the instruction gives."""
    from speechrs.voxtral.events import Audio
    from speechrs.voxtral.transcript import translation_instruction

    path, truth, duration = paused_speech
    done = list(native_pipeline.translate(str(path), "fr", SHORT, timestamps=True))[-1]
    check_segments(done.segments, truth, duration, 30.0)
    pcm16 = load(str(path), 16000)
    first = done.segments[0]
    alone = (pcm16[round(first.start * 16000) : round(first.end * 16000)], 16000)
    chat = list(native_pipeline.chat([("user", [Audio(alone), translation_instruction("French")])], SHORT))[-1]
    assert chat.tokens == first.tokens
    with pytest.raises(InvalidRequestError, match="unknown target language"):
        native_pipeline.translate(str(path), "elvish")
    short = list(native_pipeline.translate((noise(2.0), 16000), "de", SHORT))[-1]
    assert short.segments is None and short.tokens  # fits one prompt: one chat request


def test_long_audio_is_refused_from_the_header_before_decoding(native_pipeline, paused_speech):
    native_pipeline.max_audio_s = 10.0
    try:
        with pytest.raises(AudioTooLongError, match="at most 10 s"):
            native_pipeline.transcribe(str(paused_speech[0]), timestamps=True)
    finally:
        native_pipeline.max_audio_s = None


def test_api_transcribe_and_translate_with_segments(native_dir, paused_speech):
    import speechrs

    model = speechrs.load(str(native_dir), device="cpu")
    assert isinstance(model, VoxtralModel)
    path, truth, duration = paused_speech
    result = model.transcribe(str(path), "en", timestamps=True, max_segment_s=8, max_tokens=6)
    check_segments(result.segments, truth, duration, 8.0)
    assert result.srt().startswith("1\n00:00:0") and result.vtt().startswith("WEBVTT")
    assert model.transcribe(str(path), "en", max_tokens=4).segments is None  # 46 s fits one prompt
    assert model.translate(str(path), "fr", timestamps=True, max_tokens=4).segments
    with pytest.raises(InvalidRequestError, match="max_segment_s"):
        model.transcribe(str(path), timestamps=True, max_segment_s=60)


def test_block_decoding_gives_the_samples_of_a_whole_decode(paused_speech):
    path = paused_speech[0]
    stream = open_stream(str(path), 16000)
    assert np.array_equal(np.concatenate(list(stream.blocks())), load(str(path), 16000))
    assert stream.duration_s == pytest.approx(paused_speech[2])


# the peak resident set from VmHWM, which exec resets (ru_maxrss would carry the forking test process's peak)
LONG_RUN = """
import sys
import speechrs
model = speechrs.load(sys.argv[1], device="cpu")
result = model.transcribe(sys.argv[2], "en", timestamps=True, max_tokens=2)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(hwm.split()[1]) // 1024, len(result.segments), result.segments[-1].end)
"""


def test_fifty_minutes_complete_with_bounded_memory(native_dir, paused_speech, tmp_path):
    """50 minutes at 44.1 kHz: decoded whole it would be 530 MB of float32 before resampling, and its mel 150 MB.
    The peak memory of the run stays within 150 MB of the same run on 30 s."""
    pcm, _ = sf.read(paused_speech[0], dtype="float32")
    minute = np.tile(pcm, int(np.ceil(60 * 22050 / len(pcm))))[: 60 * 22050]
    peaks = {}
    for minutes in (0.5, 50):
        path = tmp_path / f"long{minutes}.flac"
        with sf.SoundFile(path, "w", 44100, 1, format="FLAC") as f:  # written a minute at a time as well
            for _ in range(int(np.ceil(minutes))):
                f.write(np.repeat(minute, 2)[: int(min(minutes, 1) * 60 * 44100)])
        run = subprocess.run(
            [sys.executable, "-c", LONG_RUN, str(native_dir), str(path)], capture_output=True, text=True, check=True
        )
        peak_mib, n_segments, last_end = run.stdout.split()
        peaks[minutes] = int(peak_mib)
        assert float(last_end) <= minutes * 60 + 1e-6
        if minutes == 50:
            assert int(n_segments) >= 100  # 30 s or less each
    assert peaks[50] - peaks[0.5] < 150, peaks


def test_plain_torch_vad_equals_silero_torchscript(paused_speech):
    """vad.VoiceActivity (silero.py, batched convolutions) against silero's own TorchScript model, frame by frame as
    the package runs it; and the safetensors fallback weights against it."""
    import warnings

    import torch

    from speechrs.audio.silero import SileroVAD, weights_path
    from speechrs.audio.vad import VoiceActivity

    pcm = load(str(paused_speech[0]), 16000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(weights_path().with_name("silero_vad.jit")))
    scripted.reset_states()
    frames = torch.from_numpy(np.pad(pcm, (0, -len(pcm) % 512))).view(-1, 512)
    with torch.inference_mode():
        expected = np.array([float(scripted(f[None], 16000)) for f in frames])
    vad = VoiceActivity()
    ours = np.concatenate([vad.push(pcm[i : i + 7000], last=i + 7000 >= len(pcm)) for i in range(0, len(pcm), 7000)])
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    fallback = VoiceActivity()
    fallback.model = SileroVAD.load()
    other = fallback.push(pcm, last=True)
    assert np.mean((other > 0.5) == (expected > 0.5)) > 0.97  # another release of the weights: nearly the same
