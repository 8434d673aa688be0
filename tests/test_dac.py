import math
import os

import numpy as np
import pytest
import torch

from speechrs.audio import loudness
from speechrs.dia.dac import fold_weight_norm, load_dac


@pytest.fixture(scope="module")
def codes():
    return torch.randint(0, 1024, (1, 9, 24), generator=torch.Generator().manual_seed(0))


def test_both_dac_layouts_decode_alike_and_samples_are_frames_times_512(dac, dac_dirs, codes):
    other = load_dac(dac_dirs[1])
    with torch.inference_mode():
        a, b = dac.decode(codes), other.decode(codes)
    assert a.shape == (1, 24 * 512)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert float(a.std()) > 0.05 and float(a.abs().max()) < 1.0  # a live, unsaturated random decoder


def test_folded_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(6, 4, 3))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(1.7)
    state = {k: v.detach() for k, v in conv.state_dict().items()}
    folded = fold_weight_norm({f"c.{k}": v for k, v in state.items()})
    torch.testing.assert_close(folded["c.weight"], conv.weight.detach(), atol=1e-6, rtol=1e-6)
    assert set(folded) == {"c.weight", "c.bias"}


@pytest.mark.reference
def test_dac_decode_matches_transformers_dacmodel(dac, dac_dirs, codes):
    from transformers import DacModel

    reference = DacModel.from_pretrained(str(dac_dirs[1])).eval()
    with torch.inference_mode():
        expected = reference.decode(audio_codes=codes).audio_values
        for ours in (dac, load_dac(dac_dirs[1])):
            torch.testing.assert_close(ours.decode(codes), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("length", [0, 1, 255, 256, 257, 3 * 44100 + 17])
def test_the_biquads_equal_scipys_lfilter(length):
    """loudness.biquad replaces scipy.signal.lfilter (slow to import): the K-weighting stages at two rates, to
    float64 rounding (scipy is installed beside librosa)."""
    from scipy.signal import lfilter

    x = np.random.default_rng(length).standard_normal(length)
    for b, a in loudness._k_weighting(44100) + loudness._k_weighting(16000):
        expected, got = lfilter(b, a, x), loudness.biquad(b, a, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, float(np.abs(expected).max(initial=0))))


def test_bs1770_reference_tone_and_normalisation():
    rate = 44100
    t = np.arange(rate * 3) / rate
    tone = np.sin(2 * np.pi * 997 * t)
    assert abs(loudness.integrated_loudness(tone, rate) - (-3.01)) < 0.05  # BS.1770: 0 dBFS 997 Hz -> -3.01 LKFS
    quiet = 0.05 * tone
    gain = 10 ** ((loudness.TARGET_LUFS - loudness.integrated_loudness(quiet, rate)) / 20)
    assert abs(loudness.integrated_loudness(quiet * gain, rate) - loudness.TARGET_LUFS) < 0.01
    out = loudness.normalize(quiet.astype(np.float32), rate)
    np.testing.assert_allclose(out, np.tanh(quiet * gain), atol=1e-6)
    silent = np.zeros(rate, np.float32)
    assert np.array_equal(loudness.normalize(silent, rate), silent) and math.isinf(
        loudness.integrated_loudness(silent, rate)
    )


def test_descript_pth_loads_like_its_safetensors(dac, dac_dirs, codes, tmp_path):
    """descript-audio-codec's weights.pth: {"state_dict": ..., "metadata": {"kwargs": ...}} with weight_g/v."""
    from safetensors.torch import load_file

    pth = tmp_path / "dac-pth"
    pth.mkdir()
    torch.save(
        {
            "state_dict": load_file(dac_dirs[0] / "model.safetensors"),
            "metadata": {
                "kwargs": {
                    "latent_dim": 1024,
                    "decoder_dim": 1536,
                    "decoder_rates": [8, 8, 4, 2],
                    "n_codebooks": 9,
                    "codebook_size": 1024,
                    "codebook_dim": 8,
                }
            },
        },
        pth / "weights.pth",
    )
    with torch.inference_mode():
        torch.testing.assert_close(load_dac(pth).decode(codes), dac.decode(codes), atol=0, rtol=0)


def test_missing_dac_weights_are_named(tmp_path):
    from speechrs.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="holds no DAC weights"):
        load_dac(tmp_path)


def test_chunked_decode_equals_one_pass(dac):
    codes = torch.randint(0, 1024, (2, 9, 100), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = dac.decode_pre_tanh(codes, chunk=1000)
        pieces = dac.decode_pre_tanh(codes, chunk=24)  # 5 chunks on a stream (dac_stream.py)
    assert pieces.shape == whole.shape == (2, 100 * 512)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("sizes", "max_samples"),
    [([100], 8192), ([16, 32, 52], 8192), ([1, 2, 3, 0, 10, 84], 8192), ([5, 95, 0], 8192), ([40, 60], 700)],
)
def test_a_stream_of_frames_decodes_as_one_pass_whatever_its_pieces(dac, sizes, max_samples):
    """Each push returns the samples that no longer depend on later frames; the end gives the rest. The samples
    out so far never run ahead of the frames in, and lag them by the decoder's reach (about 10 frames). Within a
    push, activations longer than max_samples go on in pieces: the same samples."""
    from speechrs.dia.dac_stream import StreamingDecoder

    codes = torch.randint(0, 1024, (1, 9, 100), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():  # the decoder's own modules, one pass in conv1d (the stream: conv2d, channels-last)
        whole = dac.decoder.model(dac.quantizer.from_codes(codes)).squeeze(1)
    stream, outs, pushed = StreamingDecoder(dac, max_samples=max_samples), [], 0
    for n in sizes:
        outs.append(stream.push(codes[..., pushed : pushed + n]))
        pushed += n
        out = sum(o.shape[-1] for o in outs)
        assert out <= pushed * 512 and (pushed < 12 or out >= (pushed - 12) * 512)
    outs.append(stream.push(codes[..., :0], end=True))
    torch.testing.assert_close(torch.cat(outs, dim=-1), whole, atol=1e-5, rtol=0)
    assert StreamingDecoder(dac).push(codes[..., :0], end=True).shape == (1, 0)  # an empty stream


def _resident_kib(path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        lines = smaps.readlines()
    for line in lines:
        if line[:1] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads /proc/self/smaps (Linux)")
def test_a_loaded_dac_keeps_none_of_its_checkpoint_s_pages_resident(dac_dirs):
    """Every weight the DAC keeps is a copy (folded, or channels-last), so no page of the mapped checkpoint may stay
    resident beside its copy."""
    path = dac_dirs[1] / "model.safetensors"
    dac = load_dac(dac_dirs[1])
    assert _resident_kib(path) < path.stat().st_size / 1024 / 20
    assert dac.decoder is not None


def test_snake_in_place_and_into_a_buffer_gives_forward_s_bits():
    """The stream applies Snake in place over blocks of samples (apply_) or writes it into the next convolution's
    input (out=): both must give the same bits as forward()."""
    from speechrs.dia.dac import Snake

    snake = Snake(6).requires_grad_(False)
    with torch.no_grad():
        snake.alpha.copy_(torch.rand(1, 6, 1, generator=torch.Generator().manual_seed(3)) * 2)
    x = (torch.randn(2, 6, 1, 50, generator=torch.Generator().manual_seed(4)) * 3).contiguous(
        memory_format=torch.channels_last
    )
    expected = snake(x)
    buffer = torch.empty(2, 6, 1, 60).contiguous(memory_format=torch.channels_last)
    assert torch.equal(snake(x, out=buffer[..., 10:]), expected) and torch.equal(buffer[..., 10:], expected)
    y = x.clone()
    assert snake.apply_(y, block=2 * 6 * 7) is y  # 7 samples a block: 8 blocks, the last one short
    assert torch.equal(y, expected)
