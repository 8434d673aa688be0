import json

import numpy as np
import pytest
import torch

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.config import HF_0626, NARI_V01, DiaConfig
from speechrs.dia.delay import delay, undelay
from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, SpeechResult, encode_text
from speechrs.errors import InvalidRequestError, UnsupportedModelError

TEXT = "[S1] Hello there. [S2] Hi! (laughs)"


def step0_logits(model, text=TEXT):
    ids = torch.tensor([encode_text(text, model.cfg)])
    with torch.inference_mode():
        cross = model.cross_cache(model.encoder(torch.cat([ids, torch.zeros_like(ids)])))
        model.setup_caches(2, 4)
        return model(torch.full((2, 1, model.cfg.channels), model.cfg.bos), 0, cross)


def test_delay_then_undelay_is_identity():
    codes = torch.randint(0, 1024, (37, 9))
    delays = [0, 8, 9, 10, 11, 12, 13, 14, 15]
    delayed = delay(codes, delays, bos=1026, pad=1025)
    assert delayed.shape == (37 + 16, 9) and (delayed[0] == 1026).all()
    assert (delayed[:9, 1] == 1026).all() and delayed[9, 1] == codes[0, 1]
    assert torch.equal(undelay(delayed, delays, 37), codes)


@pytest.mark.parametrize("generation", [HF_0626, NARI_V01])
def test_nari_and_hf_layouts_give_identical_logits_under_the_same_semantics(dia_dirs, generation):
    nari, hf = (load_dia(d, None, generation=generation) for d in dia_dirs)
    torch.testing.assert_close(step0_logits(nari), step0_logits(hf), atol=1e-6, rtol=0)


def test_the_generations_differ_only_by_cross_attention_rope(dia_dirs):
    v01, hf0626 = (load_dia(d, None) for d in dia_dirs)
    assert v01.cfg.cross_rope and not hf0626.cfg.cross_rope
    assert not torch.allclose(step0_logits(v01), step0_logits(hf0626), atol=1e-3)


@pytest.mark.parametrize("generation", [HF_0626, NARI_V01])
def test_text_cache_gives_the_full_cfg_pair_s_logits_without_the_zero_row_s_encoder(dia_dirs, generation):
    """The unconditional row's cross-attention is one value per layer (Dia.unconditional_values): the logits of
    a prompt's prefill (T = 3) and of the steps after it agree with the pair encoded in full, to rounding."""
    model = load_dia(dia_dirs[1], None, generation=generation)
    ids = torch.tensor([encode_text(TEXT, model.cfg)])
    codes = torch.randint(0, 1024, (1, 6, model.cfg.channels), generator=torch.Generator().manual_seed(0))
    logits = []
    with torch.inference_mode():
        zeros = model.encoder(torch.zeros(1, 37, dtype=torch.long))  # any length encodes to one vector
        # the same up to the encoder's fp32 sums over 37 positions: measured 3.3 fp32 ulps of the values' scale
        assert (zeros - zeros[:, :1]).abs().max() <= 2**-17 * zeros.abs().max()
        full = model.cross_cache(model.encoder(torch.cat([ids, torch.zeros_like(ids)])))
        half = model.text_cache(ids)
        assert half.k[0].shape[0] == 1 and full.k[0].shape[0] == 2 and half.k[0].shape[2] == ids.shape[1]
        for cross in (full, half):
            model.setup_caches(2, 8)
            prefill = model(codes[:, :3].expand(2, -1, -1), 0, cross)
            steps = [model(codes[:, t : t + 1].expand(2, -1, -1), t, cross) for t in range(3, 6)]
            logits.append(torch.cat([prefill, *steps], dim=1))
    # fp32 sums in another order (one row's encoder, not two): measured 4.6 fp32 ulps of the logits' scale
    assert (logits[1] - logits[0]).abs().max() <= 2**-17 * logits[0].abs().max()
    assert not torch.equal(logits[1][0], logits[1][1])  # the rows did differ: the text's row read its text


def test_configs_parse_to_the_same_shapes(dia_dirs):
    a, b = (DiaConfig.load(d / "config.json") for d in dia_dirs)
    assert (a.generation, b.generation) == (NARI_V01, HF_0626)
    assert {k: v for k, v in vars(a).items() if k != "generation"} == {
        k: v for k, v in vars(b).items() if k != "generation"
    }


def test_unknown_config_schema_names_the_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 1, "layers": 2}))
    with pytest.raises(UnsupportedModelError, match=r"keys=\['hidden', 'layers'\]"):
        DiaConfig.load(tmp_path / "config.json")


def test_text_bytes_and_limits(dia_dirs):
    cfg = DiaConfig.load(dia_dirs[0] / "config.json")
    assert encode_text("[S1] hé (laughs)", cfg) == [1, 32, 104, 0xC3, 0xA9, 32, *b"(laughs)"]
    with pytest.raises(InvalidRequestError, match="empty"):
        encode_text("   ", cfg)
    with pytest.raises(InvalidRequestError, match="1025 bytes; Dia takes at most 1024"):
        encode_text("a" * 1025, cfg)


@pytest.fixture(scope="module")
def pipeline(dia_dirs, dac):
    return DiaPipeline(load_dia(dia_dirs[0], None), dac)


def test_same_seed_same_audio_and_samples_are_frames_times_512(pipeline):
    def run(seed):
        return [e for e in pipeline.speak(TEXT, SpeakOptions(max_tokens=60, seed=seed))][-1]

    a, b, c = run(3), run(3), run(4)
    assert isinstance(a, SpeechResult) and a.sample_rate == 44100 and a.pcm.dtype == np.float32
    np.testing.assert_array_equal(a.pcm, b.pcm)
    assert not np.array_equal(a.codes, c.codes)
    assert a.codes.shape[1] == 9 and 0 < a.codes.shape[0] <= 60 - 16  # fewer if the model samples EOS early
    assert len(a.pcm) == a.codes.shape[0] * 512 and np.array_equal(a.codes, b.codes)
    assert np.abs(a.pcm).max() <= 1.0


def test_eos_countdown_writes_eos_on_the_delay_diagonal_then_pad(pipeline):
    opts = pipeline.options(SpeakOptions(max_tokens=40, temperature=0))
    rows = list(pipeline.generate_codes(encode_text(TEXT, pipeline.cfg), opts))[-1]
    end = 40 - 15
    assert rows.shape[0] == 41
    for c, d in enumerate(pipeline.cfg.delay_pattern):
        assert rows[end + d, c] == 1024 and (rows[end + d + 1 :, c] == 1025).all()
        assert (rows[1 : end + d, c] < 1024).sum() == end - 1  # real codes before the EOS, BOS before them
    assert (rows[:1] == 1026).all()


def test_bad_options_are_refused(pipeline):
    for bad in (dict(top_p=0), dict(top_k=0), dict(cfg_scale=0.5), dict(max_tokens=5), dict(temperature=-1)):
        with pytest.raises(InvalidRequestError):
            pipeline.speak(TEXT, SpeakOptions(**bad))


def test_generation_defaults_differ_per_checkpoint_generation(dia_dirs, dac):
    v01 = DiaPipeline(load_dia(dia_dirs[0], None), dac).options(SpeakOptions())
    new = DiaPipeline(load_dia(dia_dirs[1], None), dac).options(SpeakOptions())
    assert (v01.temperature, v01.top_p, v01.top_k, v01.cfg_scale) == (1.3, 0.95, 35, 3.0)
    assert (new.temperature, new.top_p, new.top_k, new.cfg_scale) == (1.8, 0.90, 45, 3.0)


def test_voice_cloning_errors(pipeline, clip):
    with pytest.raises(InvalidRequestError, match="takes both ref_audio and ref_text") as e:
        pipeline.speak(TEXT, ref_audio=str(clip))
    assert e.value.param == "ref_text"
    with pytest.raises(InvalidRequestError, match="takes both") as e:
        pipeline.speak(TEXT, ref_text="[S1] words")
    assert e.value.param == "ref_audio"
    with pytest.raises(InvalidRequestError, match=r"ref_audio is 5\.\d s; Dia has room for a reference of 2\.3 s"):
        pipeline.speak(TEXT, ref_audio=str(clip), ref_text="[S1] words")  # the tiny Dia holds 256 rows


def test_a_reference_must_leave_room_for_new_speech(pipeline, clip):
    """A reference that fits the rows but leaves less than MIN_SPEECH_S of new speech is refused, named as the
    request gave it; one that leaves enough is taken."""
    import soundfile as sf

    from speechrs.dia.pipeline import MIN_SPEECH_S

    pcm, rate = sf.read(str(clip), dtype="float32")
    frame_s = pipeline.codec.cfg.hop_length / pipeline.codec.cfg.sample_rate
    room_s = (pipeline.cfg.audio_length - pipeline.cfg.max_delay - 1) * frame_s  # every row but the delay's
    too_long = pcm[: int((room_s - MIN_SPEECH_S / 2) * rate)]  # fits the rows, leaves < MIN_SPEECH_S
    with pytest.raises(InvalidRequestError, match="leaving at least 0.5 s for the new speech") as e:
        pipeline.speak(TEXT, ref_audio=(too_long, rate), ref_text="[S1] words")
    assert e.value.param == "ref_audio"
    with pytest.raises(InvalidRequestError, match=r"^voice 'host' is") as e:
        codes = torch.zeros(int(len(too_long) / rate / frame_s), pipeline.cfg.channels, dtype=torch.long)
        pipeline.speak(TEXT, ref_audio=codes, ref_text="[S1] words", reference="voice 'host'")
    assert e.value.param == "voice"
    fits = pcm[: int(1.0 * rate)]
    events = list(pipeline.speak(TEXT, SpeakOptions(max_tokens=64, seed=0), ref_audio=(fits, rate), ref_text="[S1] a"))
    assert isinstance(events[-1], SpeechResult)


@pytest.mark.parametrize("text", ["", "   ", "[S1]", "[S1][S2] [S1]", "[S1]" * 400])
def test_text_with_nothing_to_say_is_refused_before_any_step(pipeline, text):
    with pytest.raises(InvalidRequestError, match="empty|only speaker tags") as e:
        pipeline.speak(text)
    assert e.value.param == "input"


def test_a_generation_without_audio_is_an_error_not_an_empty_result():
    from speechrs.dia.pipeline import _audible

    empty = SpeechResult(np.zeros(0, np.float32), 44100, np.zeros((0, 9), np.int64), timings={})
    with pytest.raises(InvalidRequestError, match="ended before making any audio"):
        list(_audible(iter([empty])))
    some = SpeechResult(np.zeros(512, np.float32), 44100, np.zeros((1, 9), np.int64), timings={})
    assert list(_audible(iter([some]))) == [some]


def test_a_reference_too_long_for_the_room_is_refused_before_it_is_encoded(pipeline, clip, monkeypatch):
    import speechrs.dia.dac_encoder as dac_encoder

    def never(*args, **kwargs):
        raise AssertionError("the reference was DAC-encoded before its length was checked")

    monkeypatch.setattr(dac_encoder, "encode", never)
    with pytest.raises(InvalidRequestError, match=r"ref_audio is 5\.\d s") as e:
        pipeline.speak(TEXT, ref_audio=str(clip), ref_text="[S1] words")  # the tiny Dia holds 256 rows, ~3 s
    assert e.value.param == "ref_audio"
