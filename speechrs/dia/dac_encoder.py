"""DAC 44 kHz encoder and residual-VQ encode, pure torch: audio -> codes, for Dia voice cloning.

descript-audio-codec's Encoder (conv, four strided blocks of three residual units, Snake, conv to the latent)
and VectorQuantize.decode_latents (nearest codebook entry by cosine, the straight-through sum kept, since its
rounding feeds the residual of the next codebook). Canonical names are descript's (encoder.block.1.block.0...);
transformers' DacModel names (encoder.block.0.res_unit1...) are renamed by dac.hf_to_canonical. The encoder is
loaded on first use from the checkpoint the decoder came from, so speech without cloning never holds it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechrs.dia.dac import DAC, ResidualUnit, Snake, fold_weight_norm, hf_to_canonical, read_any
from speechrs.errors import UnsupportedModelError
from speechrs.weights import load_into

ENCODER_STRIDES, ENCODER_DIM = (2, 4, 8, 8), 64  # descript 44 kHz: 64 -> 1024 channels, 512 samples per frame


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, 1),
            ResidualUnit(dim // 2, 3),
            ResidualUnit(dim // 2, 9),
            Snake(dim // 2),
            nn.Conv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Encoder(nn.Module):
    def __init__(self, latent_dim: int, d_model: int = ENCODER_DIM, strides: tuple = ENCODER_STRIDES):
        super().__init__()
        layers = [nn.Conv1d(1, d_model, 7, padding=3)]
        for stride in strides:
            d_model *= 2
            layers.append(EncoderBlock(d_model, stride))
        layers += [Snake(d_model), nn.Conv1d(d_model, latent_dim, 3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, wave_Bx1xN: torch.Tensor) -> torch.Tensor:
        return self.block(wave_Bx1xN)


def load_encoder(dac: DAC) -> Encoder:
    """The encoder of the checkpoint `dac` was loaded from, in float32 on its device."""
    if dac.source is None:
        raise UnsupportedModelError("this DAC was not loaded from a checkpoint, so it has no encoder to load")
    raw, _ = read_any(dac.source, [])
    hf_names = any(n.startswith("encoder.conv1.") for n in raw)
    tensors = {}
    for name, t in fold_weight_norm({k: v for k, v in raw.items() if k.startswith("encoder.")}).items():
        new = hf_to_canonical(name, len(ENCODER_STRIDES)) if hf_names else name
        tensors[new.removeprefix("encoder.")] = t
    if not tensors:
        raise UnsupportedModelError(
            f"the DAC checkpoint in {dac.source} has no encoder weights, which voice "
            "cloning needs; use one that has (descript/dac_44khz, EricB/dac_44khz)"
        )
    with torch.device("meta"):
        encoder = Encoder(dac.cfg.latent_dim)
    device = dac.quantizer.quantizers[0].codebook.weight.device
    load_into(encoder, iter(tensors.items()), torch.float32, device)
    return encoder.eval()


def nearest_codes(latents_BxDxT: torch.Tensor, codebook_VxD: torch.Tensor) -> torch.Tensor:
    """descript's decode_latents: l2-normalised latents and codebook, the closest entry per frame -> (B, T)."""
    B, _, T = latents_BxDxT.shape
    enc = F.normalize(latents_BxDxT.transpose(1, 2).reshape(B * T, -1))
    cb = F.normalize(codebook_VxD)
    dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ cb.t() + cb.pow(2).sum(1, keepdim=True).t()
    return (-dist).max(1)[1].reshape(B, T)


@torch.inference_mode()
def encode(dac: DAC, wave_N: torch.Tensor) -> torch.Tensor:
    """Mono 44.1 kHz float samples (N,) -> codes (T, Q), T = ceil(N / 512): descript's preprocess pads the right
    end to whole frames, then encoder and residual VQ."""
    if dac.encoder is None:
        dac.encoder = load_encoder(dac)
    hop = dac.cfg.hop_length
    device = dac.quantizer.quantizers[0].codebook.weight.device
    x = F.pad(wave_N.float().to(device), (0, -len(wave_N) % hop))[None, None]
    residual, codes = dac.encoder(x), []
    for q in dac.quantizer.quantizers:
        z_e = q.in_proj(residual)
        idx = nearest_codes(z_e, q.codebook.weight)
        z_q = q.codebook(idx).transpose(1, 2)
        residual = residual - q.out_proj(z_e + (z_q - z_e))  # the straight-through sum, as descript computes it
        codes.append(idx)
    return torch.stack(codes, dim=1)[0].T
