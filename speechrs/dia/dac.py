"""DAC 44 kHz decoder: residual-VQ `from_codes` and the upsampling decoder, pure torch.

Canonical names are descript-audio-codec's (decoder.model.1.block.0.alpha ...) with weight norm folded
(w = g * v / ||v||, norm over every dim but 0). Three layouts load: descript's originals with weight_g/weight_v
(EricB/dac_44khz model.safetensors, or a descript weights .pth) and transformers' DacModel names
(descript/dac_44khz). Axes: B batch, Q codebooks, T frames, N samples (= T * 512).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from speechrs.dia.dac_stream import StreamingDecoder, as_channels_last
from speechrs.errors import ModelNotFoundError, UnsupportedModelError
from speechrs.layers import checkpoint_embedding
from speechrs.weights import load_into, read_safetensors, release_unused


@dataclass(frozen=True)
class DacConfig:
    latent_dim: int = 1024
    decoder_dim: int = 1536
    rates: tuple[int, ...] = (8, 8, 4, 2)
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    sample_rate: int = 44100

    @property
    def hop_length(self) -> int:
        return math.prod(self.rates)  # 512 samples per frame

    @classmethod
    def from_hf(cls, cfg: dict) -> "DacConfig":
        return cls(
            latent_dim=cfg.get("hidden_size", 1024),
            decoder_dim=cfg.get("decoder_hidden_size", 1536),
            rates=tuple(cfg.get("upsampling_ratios", (8, 8, 4, 2))),
            n_codebooks=cfg.get("n_codebooks", 9),
            codebook_size=cfg.get("codebook_size", 1024),
            codebook_dim=cfg.get("codebook_dim", 8),
            sample_rate=cfg.get("sampling_rate", 44100),
        )


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x + sin(alpha x)^2 / (alpha + 1e-9), with one temporary instead of four (or none: written into `out`,
        x's shape): at 44.1 kHz the activations, not the weights, are what a DAC decode holds in memory. Same
        operations in the same order as descript's."""
        alpha = self.alpha if x.dim() == 3 else self.alpha[..., None]  # (1, C, 1) or, over (B, C, 1, N), (1, C, 1, 1)
        t = torch.mul(alpha, x, out=out).sin_().square_()
        return t.mul_((alpha + 1e-9).reciprocal()).add_(x)

    def apply_(self, x_BxCx1xN: torch.Tensor, block: int = 2**16) -> torch.Tensor:
        """forward() in place on (B, C, 1, N), `block` elements at a time: no activation-sized temporary, and each
        block's temporary stays in cache. The same bits (x + t is t + x)."""
        alpha = self.alpha[..., None]
        inv = (alpha + 1e-9).reciprocal()
        step = max(1, block // (x_BxCx1xN.shape[0] * x_BxCx1xN.shape[1]))
        for i in range(0, x_BxCx1xN.shape[-1], step):
            xb = x_BxCx1xN[..., i : i + step]
            xb.add_((alpha * xb).sin_().square_().mul_(inv))
        return x_BxCx1xN


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(dim),
            nn.Conv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Snake(dim),
            nn.Conv1d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        trim = (x.shape[-1] - y.shape[-1]) // 2  # descript crops the skip path when lengths differ
        return y.add_(x[..., trim:-trim] if trim > 0 else x)  # y is this unit's own fresh tensor


class DecoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(in_dim),
            nn.ConvTranspose1d(in_dim, out_dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(out_dim, 1),
            ResidualUnit(out_dim, 3),
            ResidualUnit(out_dim, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.rates) + 1)]  # 1536 768 384 192 96
        layers = [nn.Conv1d(cfg.latent_dim, dims[0], 7, padding=3)]
        layers += [DecoderBlock(dims[i], dims[i + 1], s) for i, s in enumerate(cfg.rates)]
        layers += [Snake(dims[-1]), nn.Conv1d(dims[-1], 1, 7, padding=3)]  # descript's Tanh follows (decode())
        self.model = nn.Sequential(*layers)


class Quantizer(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        self.in_proj = nn.Conv1d(cfg.latent_dim, cfg.codebook_dim, 1)  # encoder side (dac_encoder.py)
        self.out_proj = nn.Conv1d(cfg.codebook_dim, cfg.latent_dim, 1)
        self.codebook = checkpoint_embedding(cfg.codebook_size, cfg.codebook_dim)


class ResidualVQ(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        self.quantizers = nn.ModuleList(Quantizer(cfg) for _ in range(cfg.n_codebooks))

    def from_codes(self, codes_BxQxT: torch.Tensor) -> torch.Tensor:
        """Sum over codebooks of out_proj(codebook[codes]) -> latents (B, latent, T)."""

        def latent(i: int, q: nn.Module) -> torch.Tensor:
            return q.out_proj(q.codebook(codes_BxQxT[:, i]).transpose(1, 2))

        z = latent(0, self.quantizers[0])
        for i, q in enumerate(self.quantizers[1:], start=1):
            z = z + latent(i, q)
        return z


class DAC(nn.Module):
    def __init__(self, cfg: DacConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = ResidualVQ(cfg)
        self.decoder = Decoder(cfg)
        self.source: Path | None = None  # the checkpoint directory, where dac_encoder.py finds the encoder
        self.encoder: nn.Module | None = None  # loaded on first use (voice cloning)

    def decode_pre_tanh(self, codes_BxQxT: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """codes (B, Q, T) -> waveform before the final tanh, (B, T * hop).

        Decoded `chunk` frames at a time on a stream (dac_stream.py), equal to one pass to float rounding, so memory
        stays that of about `chunk` frames whatever the length; 64 is the fastest chunk (docs/architecture.md)."""
        T = codes_BxQxT.shape[-1]
        stream = StreamingDecoder(self, codes_BxQxT.shape[0])
        starts = range(0, T, chunk) or [0]  # no frames: the stream's end alone, no samples
        pieces = [stream.push(codes_BxQxT[..., i : i + chunk], end=i + chunk >= T) for i in starts]
        return torch.cat(pieces, dim=-1)

    def decode(self, codes_BxQxT: torch.Tensor) -> torch.Tensor:
        """codes (B, Q, T) -> waveform in [-1, 1], (B, T * hop): descript's decode, transformers' DacModel.decode."""
        return torch.tanh(self.decode_pre_tanh(codes_BxQxT))


_RES_PARTS = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}  # ResidualUnit.block indices
# Per half of the codec: the name of descript's Sequential, and where each part of a strided block sits in it
# (the encoder's residual units come before its strided conv, the decoder's after its transposed conv).
_HF_HALVES = {
    "encoder": ("block", {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}),
    "decoder": ("model", {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}),
}


def hf_to_canonical(name: str, n_blocks: int) -> str:
    """transformers' DacModel names -> descript's Sequential indices (encoder.block.i..., decoder.model.i...):
    conv1 is item 0, block j is item j + 1, snake1 and conv2 follow the blocks."""
    m = re.fullmatch(r"(encoder|decoder)\.(.*)", name)
    if m is None:
        return name  # quantizer.* names are the same in both
    half, rest = m[1], m[2]
    seq, parts = _HF_HALVES[half]
    if top := re.fullmatch(r"(conv1|snake1|conv2)\.(.*)", rest):
        index = {"conv1": 0, "snake1": n_blocks + 1, "conv2": n_blocks + 2}[top[1]]
        return f"{half}.{seq}.{index}.{top[2]}"
    block = re.fullmatch(r"block\.(\d+)\.(\w+)\.(.*)", rest)
    if block is None or block[2] not in parts:
        raise UnsupportedModelError(f"unexpected DAC tensor {name}")
    prefix = f"{half}.{seq}.{int(block[1]) + 1}.block.{parts[block[2]]}"
    if block[2].startswith("res_unit"):
        unit = re.fullmatch(r"(snake1|conv1|snake2|conv2)\.(.*)", block[3])
        if unit is None:
            raise UnsupportedModelError(f"unexpected DAC tensor {name}")
        return f"{prefix}.block.{_RES_PARTS[unit[1]]}.{unit[2]}"
    return f"{prefix}.{block[3]}"


def fold_weight_norm(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{x.weight_g, x.weight_v} (or x.parametrizations.weight.original0/1) -> x.weight = g * v / ||v||."""
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        m = re.fullmatch(r"(.*)\.(?:weight_(g|v)|parametrizations\.weight\.original([01]))", name)
        if m is None:
            out[name] = t
        else:
            kind = m[2] or {"0": "g", "1": "v"}[m[3]]
            pairs.setdefault(m[1], {})[kind] = t
    for prefix, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise UnsupportedModelError(f"weight norm of {prefix} lacks weight_{({'g', 'v'} - set(gv)).pop()}")
        v = gv["v"].double()  # float64: the folded weight is then the float32 nearest to g * v / ||v||
        norm = v.norm(dim=tuple(range(1, v.ndim)), keepdim=True)
        out[f"{prefix}.weight"] = (gv["g"].double() * v / norm).to(gv["v"].dtype)
    return out


def read_any(directory: Path, mappings: list) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors of a DAC checkpoint directory (model.safetensors or a descript .pth) and its config dict."""
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").exists() else {}
    if (directory / "model.safetensors").exists():
        return dict(read_safetensors(directory / "model.safetensors", mappings)), config
    pths = sorted(directory.glob("*.pth"))
    if pths:
        state = torch.load(pths[0], map_location="cpu", weights_only=True)
        return state.get("state_dict", state), {**config, **(state.get("metadata", {}).get("kwargs", {}))}
    raise ModelNotFoundError(f"{directory} holds no DAC weights (model.safetensors or a descript .pth)")


def load_dac(directory: Path, device="cpu") -> DAC:
    """Load any of the three layouts; DAC always runs in float32 (as mistral.rs and nari do)."""
    mappings: list = []
    raw, config = read_any(directory, mappings)
    cfg = (
        DacConfig.from_hf(config)
        if "upsampling_ratios" in config
        else DacConfig(
            latent_dim=config.get("latent_dim", 1024),
            decoder_dim=config.get("decoder_dim", 1536),
            rates=tuple(config.get("decoder_rates", (8, 8, 4, 2))),
            n_codebooks=config.get("n_codebooks", 9),
            codebook_size=config.get("codebook_size", 1024),
            codebook_dim=config.get("codebook_dim", 8),
        )
    )
    hf_names = any(n.startswith("decoder.conv1.") for n in raw)
    tensors = fold_weight_norm(raw)
    renamed = {}
    for name, t in tensors.items():
        new = hf_to_canonical(name, len(cfg.rates)) if hf_names else name
        if not new.startswith("encoder."):  # the encoder waits for voice cloning (dac_encoder.py)
            renamed[new] = t
    with torch.device("meta"):
        model = DAC(cfg)
    load_into(model, iter(renamed.items()), torch.float32, device)
    del raw, tensors, renamed
    as_channels_last(model)  # copies the convolutions' weights: after it, the file's pages of those are unused too
    release_unused(mappings, model)  # unused file pages: the encoder's, weight norm's g/v, the copied weights'
    model.source = directory
    return model.eval()
