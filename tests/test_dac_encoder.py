"""DAC encoder + residual-VQ encode (speechrs/dia/dac_encoder.py) against transformers' DacModel.encode."""

import numpy as np
import pytest
import torch

from speechrs.dia.dac import load_dac
from speechrs.dia.dac_encoder import encode, nearest_codes


def _speechlike(seconds: float, seed: int = 0) -> torch.Tensor:
    """A 44.1 kHz test signal with some structure: two gliding tones and a little noise."""
    t = np.arange(int(44100 * seconds)) / 44100
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (180 + 60 * t) * t) + 0.2 * np.sin(2 * np.pi * 930 * t) * (t % 0.4 < 0.25)
    return torch.from_numpy((x + 0.02 * rng.standard_normal(len(t))).astype(np.float32))


@pytest.mark.reference
@pytest.mark.parametrize("layout", [0, 1])  # descript names with weight_g/weight_v, transformers' folded names
def test_codes_equal_transformers_dacmodel_encode(dac_dirs, layout):
    from transformers import DacModel

    wave = _speechlike(1.3)  # not a whole number of frames: the right end is padded as descript does
    ours = encode(load_dac(dac_dirs[layout]), wave)
    reference = DacModel.from_pretrained(str(dac_dirs[1])).eval()
    n = -(-len(wave) // 512) * 512
    with torch.inference_mode():
        expected = reference.encode(torch.nn.functional.pad(wave, (0, n - len(wave)))[None, None]).audio_codes
    assert ours.shape == (n // 512, 9)
    assert torch.equal(ours, expected[0].T)
    assert len(set(ours[:, 0].tolist())) > 3  # the random encoder is alive: the frames use different codes


def test_nearest_codes_is_the_highest_cosine():
    g = torch.Generator().manual_seed(0)
    latents, codebook = torch.randn(2, 8, 30, generator=g), torch.randn(1024, 8, generator=g) * 3
    cos = (
        torch.nn.functional.normalize(latents.transpose(1, 2), dim=-1)
        @ torch.nn.functional.normalize(codebook, dim=-1).T
    )
    assert torch.equal(nearest_codes(latents, codebook), cos.argmax(-1))


def test_a_dac_without_encoder_weights_says_so(dac_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    from speechrs.errors import UnsupportedModelError

    tensors = {
        k: v for k, v in load_file(str(dac_dirs[1] / "model.safetensors")).items() if not k.startswith("encoder.")
    }
    (tmp_path / "config.json").write_text((dac_dirs[1] / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="no encoder weights, which voice cloning needs"):
        encode(load_dac(tmp_path), _speechlike(0.2))
