"""The word aligner's core: the wav2vec2 CTC model against transformers' `Wav2Vec2ForCTC` on tiny seeded checkpoints
(tests/tiny_align.py), its checkpoint loading, and the CTC forced alignment against a brute-force search."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from speechrs.align.checkpoint import fold_weight_norm, load_checkpoint
from speechrs.align.ctc import TokenSpan, forced_align, repeats, token_spans, word_spans
from speechrs.align.model import Wav2Vec2Config, frame_stride, normalize_audio, num_frames, receptive_field
from speechrs.errors import ModelNotFoundError, UnsupportedModelError

VARIANTS = ("base", "large")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models run in milliseconds on one thread; two threads on a busy machine wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def align_dirs(tmp_path_factory):
    """variant -> directory of a tiny seeded Wav2Vec2ForCTC (written with transformers)."""
    pytest.importorskip("transformers", reason="tests/tiny_align.py writes the checkpoints with transformers")
    import tiny_align

    return tiny_align.write_align(tmp_path_factory.mktemp("align"))


@pytest.fixture(scope="module")
def loaded(align_dirs):
    return {v: load_checkpoint(align_dirs[v]) for v in VARIANTS}


def _audio(samples: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Seeded noise with an offset and a non-unit scale, so the normalisation has work to do."""
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, samples, generator=gen) + 0.05


def _reference(directory, attn: str):
    from transformers import Wav2Vec2ForCTC

    return Wav2Vec2ForCTC.from_pretrained(str(directory), attn_implementation=attn).eval()


def _extract(audio: torch.Tensor) -> torch.Tensor:
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    out = fe(list(audio.numpy()), sampling_rate=16000, return_tensors="np")
    return torch.from_numpy(np.asarray(out["input_values"]))


# ---------------------------------------------------------------- the model against transformers


@pytest.mark.reference
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(align_dirs, loaded, variant):
    """Logits equal Wav2Vec2ForCTC's, each side fed its own normalisation of the same audio (batch 1 and 2).

    Tolerance: max |diff| <= 1e-4 * max |reference| in float32. Measured: at most 7.4e-7 of max |reference| (about
    3.4-3.6) in both variants, with transformers' SDPA or eager attention, batch 1 or 2; it comes from the inputs'
    normalisations (test below): given the very same input, the logits equalled SDPA's bit for bit.
    """
    model = loaded[variant].model
    audio = _audio(4000, seed=7, batch=2)
    ours_in = normalize_audio(audio)
    for attn in ("sdpa", "eager"):
        reference = _reference(align_dirs[variant], attn)
        with torch.inference_mode():
            for x, x_ref in ((ours_in[:1], _extract(audio[:1])), (ours_in, _extract(audio))):
                expected, got = reference(x_ref).logits, model(x)
                assert got.shape == expected.shape == (x.shape[0], num_frames(model.config, 4000), 32)
                scale = float(expected.abs().max())
                assert scale > 1.0  # a live random model, not one whose logits are all near zero
                assert float((got - expected).abs().max()) <= 1e-4 * scale, (variant, attn)


@pytest.mark.reference
def test_frame_count_matches_transformers(align_dirs, loaded):
    reference = _reference(align_dirs["base"], "sdpa")
    model = loaded["base"].model
    for samples in (40, 41, 59, 60, 61, 99, 100, 999, 1001, 3333, 4001):
        expected = int(reference._get_feat_extract_output_lengths(samples))
        assert num_frames(model.config, samples) == expected, samples
        with torch.inference_mode():
            assert model(normalize_audio(_audio(samples, seed=samples))).shape[1] == expected
            assert reference(_audio(samples, seed=samples)).logits.shape[1] == expected
    assert num_frames(model.config, 39) == 0
    with pytest.raises(ValueError, match="at least 40"):
        model(torch.zeros(1, 39))


@pytest.mark.reference
def test_frame_geometry_of_the_standard_config():
    from transformers import Wav2Vec2Config as Reference

    config = Wav2Vec2Config()
    assert frame_stride(config) == Reference().inputs_to_logits_ratio == 320
    assert receptive_field(config) == 400  # 25 ms windows every 20 ms
    assert num_frames(config, 16000) == 49
    tiny = Wav2Vec2Config(conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3))
    assert (frame_stride(tiny), receptive_field(tiny)) == (20, 40)


@pytest.mark.reference
def test_normalisation_matches_the_feature_extractor():
    """The extractor normalises in float32 with numpy, ours in float64 then rounds: measured max |diff| 2.4e-7."""
    for samples, seed in ((4000, 0), (1234, 1), (16000, 2)):
        audio = _audio(samples, seed, batch=2)
        got, expected = normalize_audio(audio), _extract(audio)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        assert abs(float(got[0].mean())) < 1e-5 and abs(float(got[0].std(unbiased=False)) - 1) < 1e-4


# ---------------------------------------------------------------- checkpoint loading


def test_both_layouts_load_and_the_vocab_is_read(align_dirs, loaded):
    assert (align_dirs["base"] / "model.safetensors").exists() and not (
        align_dirs["base"] / "pytorch_model.bin"
    ).exists()
    assert (align_dirs["large"] / "pytorch_model.bin").exists() and not (
        align_dirs["large"] / "model.safetensors"
    ).exists()
    for variant in VARIANTS:
        ckpt = loaded[variant]
        assert ckpt.vocab.blank_id == 0 and ckpt.vocab.token_to_id["<pad>"] == 0
        assert ckpt.vocab.delimiter_id == 4 and ckpt.vocab.id_to_token[4] == "|"
        assert ckpt.do_normalize and ckpt.sample_rate == 16000
        assert not ckpt.model.training
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert loaded["base"].model.config.feat_extract_norm == "group"
    assert loaded["large"].model.config.do_stable_layer_norm and loaded["large"].model.config.conv_bias


def test_folded_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(8, 8, 5, groups=2), name="weight", dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(1.7)
    g, v = conv.parametrizations.weight.original0.detach(), conv.parametrizations.weight.original1.detach()
    assert g.shape == (1, 1, 5)
    torch.testing.assert_close(fold_weight_norm(g, v), conv.weight.detach(), atol=0, rtol=0)


def _copy_without_weights(src, dst):
    dst.mkdir()
    for name in ("config.json", "vocab.json"):
        shutil.copy(src / name, dst / name)
    return dst


def test_old_weight_norm_names_load_alike(align_dirs, loaded, tmp_path):
    """weight_g / weight_v (torch.nn.utils.weight_norm checkpoints) fold to the same weight as original0/1."""
    state = load_file(align_dirs["base"] / "model.safetensors")
    renames = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    old = {}
    for name, tensor in state.items():
        for new, legacy in renames.items():
            name = name.replace(new, legacy)
        old[name] = tensor
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in old and old.keys() != state.keys()
    directory = _copy_without_weights(align_dirs["base"], tmp_path / "old")
    save_file(old, directory / "model.safetensors")
    x = normalize_audio(_audio(3000, seed=3))
    with torch.inference_mode():
        assert torch.equal(load_checkpoint(directory).model(x), loaded["base"].model(x))


def test_a_config_of_another_model_type_is_refused(align_dirs, tmp_path):
    directory = _copy_without_weights(align_dirs["base"], tmp_path / "hubert")
    shutil.copy(align_dirs["base"] / "model.safetensors", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "hubert"}))
    with pytest.raises(UnsupportedModelError, match="model_type 'hubert'"):
        load_checkpoint(directory)


def test_a_directory_without_weights_config_or_vocab_is_refused(align_dirs, tmp_path):
    directory = _copy_without_weights(align_dirs["base"], tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_checkpoint(directory)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_checkpoint(tmp_path / "nowhere")
    (directory / "vocab.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no vocab.json"):
        load_checkpoint(directory)


def test_malformed_config_values_are_named(align_dirs, tmp_path):
    config = json.loads((align_dirs["base"] / "config.json").read_text())
    cases = {
        "conv_stride": ({"conv_stride": "5,2,2"}, "'conv_stride' is '5,2,2'"),
        "lengths": ({"conv_stride": [5, 2]}, "one equal, non-zero length"),
        "act": ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
        "adapter": ({"add_adapter": True}, "adapters"),
    }
    for name, (change, fragment) in cases.items():
        directory = _copy_without_weights(align_dirs["base"], tmp_path / name)
        (directory / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UnsupportedModelError, match=fragment):
            load_checkpoint(directory)


def test_a_missing_or_unexpected_tensor_is_named(align_dirs, tmp_path):
    state = load_file(align_dirs["base"] / "model.safetensors")
    dropped = "wav2vec2.encoder.layers.1.attention.k_proj.bias"
    cases = {
        "missing": ({k: t for k, t in state.items() if k != dropped}, "missing 1: .'encoder.layers.1.attention.k_proj"),
        "unexpected": ({**state, "wav2vec2.encoder.layers.2.attention.q_proj.weight": torch.zeros(2)}, "layers.2"),
        "no_g": ({k: t for k, t in state.items() if not k.endswith("original0")}, "weight_g"),
    }
    for name, (tensors, fragment) in cases.items():
        directory = _copy_without_weights(align_dirs["base"], tmp_path / name)
        save_file(tensors, directory / "model.safetensors")
        with pytest.raises(UnsupportedModelError, match=fragment):
            load_checkpoint(directory)


# ---------------------------------------------------------------- CTC forced alignment


def _collapse(path, blank: int) -> list[int]:
    out, prev = [], None
    for label in path:
        if label != blank and label != prev:
            out.append(int(label))
        prev = label
    return out


def _brute_force(log_probs: np.ndarray, targets: list[int], blank: int) -> float:
    """The best summed log-probability over every label sequence (V^T of them) that collapses to the targets."""
    n_frames, vocab = log_probs.shape
    paths = np.array(list(itertools.product(range(vocab), repeat=n_frames)))  # (V^T, T)
    emitted = (paths != blank) & np.concatenate([np.ones((len(paths), 1), bool), paths[:, 1:] != paths[:, :-1]], 1)
    ok = emitted.sum(1) == len(targets)
    ok[ok] = (paths[ok][emitted[ok]].reshape(-1, len(targets)) == np.array(targets)).all(1)
    if not ok.any():
        return -np.inf
    scores = log_probs[np.arange(n_frames), paths[ok]].astype(np.float64).sum(1)
    return float(scores.max())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return (x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)).astype(
        np.float32
    )


def test_viterbi_equals_brute_force_over_all_paths():
    rng = np.random.default_rng(0)
    checked = 0
    for case in range(400):
        vocab = 4
        blank = int(rng.integers(vocab))
        tokens = [i for i in range(vocab) if i != blank]
        n_targets = int(rng.integers(1, 4))
        # every other case draws from two tokens only, so repeats (a a, a b a) come up often
        pool = tokens[:2] if case % 2 else tokens
        targets = [int(t) for t in rng.choice(pool, n_targets)]
        n_frames = int(rng.integers(1, 8))
        log_probs = _log_softmax(2.0 * rng.standard_normal((n_frames, vocab)))
        if n_frames < n_targets + repeats(np.array(targets)):
            with pytest.raises(ValueError, match="cannot hold"):
                forced_align(log_probs, targets, blank)
            assert _brute_force(log_probs, targets, blank) == -np.inf
            continue
        path, score = forced_align(log_probs, targets, blank)
        best = _brute_force(log_probs, targets, blank)
        assert abs(score - best) <= 1e-5, (case, score, best)
        assert path.shape == (n_frames,) and _collapse(path, blank) == targets
        assert abs(float(log_probs[np.arange(n_frames), path].astype(np.float64).sum()) - best) <= 1e-5
        checked += 1
    assert checked > 250


def test_too_short_and_malformed_inputs_raise():
    log_probs = _log_softmax(np.zeros((3, 4)))
    assert forced_align(log_probs, [1, 1], 0)[0].tolist() == [1, 0, 1]  # a repeat needs a blank between
    with pytest.raises(ValueError, match="2 frames cannot hold 2 targets with 1 adjacent repeats"):
        forced_align(log_probs[:2], [1, 1], 0)
    forced_align(log_probs, [1, 2, 3], 0)
    assert forced_align(log_probs, [], 0)[0].tolist() == [0, 0, 0]  # no targets: all blank
    with pytest.raises(ValueError, match="cannot hold"):
        forced_align(log_probs, [1, 2, 2], 0)
    with pytest.raises(ValueError, match="blank"):
        forced_align(log_probs, [1, 0], 0)
    with pytest.raises(ValueError, match="below the vocabulary"):
        forced_align(log_probs, [4], 0)


def test_token_and_word_spans_of_a_planted_path():
    """An emission that prefers a known path: the alignment finds it, and its tokens and words come out."""
    blank, bar = 0, 4
    planted = [0, 5, 5, 0, 6, 6, 6, 0, 6, 4, 0, 7, 7, 0, 0]  # tokens 5 6 6 | 7: "aBB|c" with a repeat
    targets = [5, 6, 6, 4, 7]
    logits = np.full((len(planted), 8), -4.0)
    logits[np.arange(len(planted)), planted] = 4.0
    log_probs = _log_softmax(logits)
    path, _ = forced_align(log_probs, targets, blank)
    assert path.tolist() == planted
    spans = token_spans(path, targets, log_probs, blank)
    assert [(s.token, s.start, s.end) for s in spans] == [(5, 1, 3), (6, 4, 7), (6, 8, 9), (4, 9, 10), (7, 11, 13)]
    assert all(abs(s.score - float(np.exp(log_probs[0, 0]))) < 1e-6 for s in spans)
    words = word_spans(spans, bar)
    assert [(w.start, w.end, w.first, w.last) for w in words] == [(1, 9, 0, 3), (11, 13, 4, 5)]
    with pytest.raises(ValueError, match="collapse"):
        token_spans(path, [5, 6, 4, 7], log_probs, blank)


def test_word_spans_skip_empty_words_and_weight_scores_by_frames():
    spans = [TokenSpan(4, 0, 1, 0.5), TokenSpan(5, 1, 2, 0.2), TokenSpan(6, 2, 5, 0.6), TokenSpan(4, 5, 6, 0.9)]
    spans += [TokenSpan(4, 6, 7, 0.9), TokenSpan(7, 8, 9, 0.4)]
    words = word_spans(spans, 4)
    assert [(w.start, w.end, w.first, w.last) for w in words] == [(1, 5, 1, 3), (8, 9, 5, 6)]
    assert abs(words[0].score - (0.2 + 3 * 0.6) / 4) < 1e-12 and words[1].score == 0.4


def test_alignment_of_the_tiny_models_emission(loaded):
    """End to end on the model's output: a path exists, collapses to the targets and spans every token in order."""
    ckpt = loaded["large"]
    with torch.inference_mode():
        logits = ckpt.model(normalize_audio(_audio(4000, seed=11)))[0]
    log_probs = torch.log_softmax(logits, dim=-1).numpy()
    ids = ckpt.vocab.token_to_id
    targets = [ids[c] for c in "HELLO|WORLD"]
    path, score = forced_align(log_probs, targets, ckpt.vocab.blank_id)
    assert _collapse(path, ckpt.vocab.blank_id) == targets and np.isfinite(score)
    spans = token_spans(path, targets, log_probs, ckpt.vocab.blank_id)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
    assert len(word_spans(spans, ckpt.vocab.delimiter_id)) == 2


def test_forced_align_equals_torchaudio():
    functional = pytest.importorskip("torchaudio.functional", reason="torchaudio is not installed (not a dependency)")
    rng = np.random.default_rng(1)
    for _ in range(50):
        n_frames, vocab = int(rng.integers(5, 60)), 6
        targets = [int(t) for t in rng.integers(1, vocab, int(rng.integers(1, 6)))]
        if n_frames < len(targets) + repeats(np.array(targets)):
            continue
        log_probs = _log_softmax(rng.standard_normal((n_frames, vocab)))
        path, score = forced_align(log_probs, targets, 0)
        expected, _ = functional.forced_align(
            torch.from_numpy(log_probs)[None], torch.tensor([targets], dtype=torch.int32), blank=0
        )
        assert path.tolist() == expected[0].tolist()
        assert abs(score - float(log_probs[np.arange(n_frames), expected[0].numpy()].astype(np.float64).sum())) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_aligner_times_every_word_of_a_stretch_inside_it(loaded, variant):
    """The loaded tiny model's emission, its log-softmax and time_words together: whatever the (random) model hears,
    every word comes back in order, inside the stretch, non-overlapping; and too short a stretch interpolates."""
    from speechrs.align.aligner import Aligner

    aligner = Aligner(loaded[variant])
    pcm = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    words = aligner.words(pcm, "a bad cab", "en", start_s=12.0)
    assert [w.word for w in words] == ["a", "bad", "cab"]
    assert words[0].start >= 12.0 and words[-1].end <= 13.0 + 1e-9
    assert all(w.start <= w.end for w in words) and all(
        a.end <= b.start for a, b in zip(words, words[1:], strict=False)
    )
    short = aligner.words(pcm[:100], "a bad cab", "en", start_s=1.0)
    assert [w.aligned for w in short] == [False] * 3 and short[-1].end == pytest.approx(1.0 + 100 / 16000)
