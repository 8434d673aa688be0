"""A wav2vec2 CTC acoustic model in pure torch, inference only, following transformers' `Wav2Vec2ForCTC`.

Raw 16 kHz audio -> conv feature encoder -> feature projection -> positional conv embedding -> transformer encoder
(post-norm "base" or pre-norm "stable layer norm" layout) -> `lm_head` logits over the CTC vocabulary. Module names
are transformers' without the `wav2vec2.` prefix, and the positional conv's weight norm is folded into one weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# transformers' ACT2FN entries these checkpoints use: "gelu" is the exact (erf) GELU
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The keys of transformers' `Wav2Vec2Config` this model uses; defaults are transformers' (wav2vec2-base)."""

    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) > 0:
            raise ValueError(
                "conv_dim, conv_stride and conv_kernel must have one equal, non-zero length; got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)} and {len(self.conv_kernel)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm is '{self.feat_extract_norm}'; expected 'group' or 'layer'")
        for key in ("hidden_act", "feat_extract_activation"):
            if getattr(self, key) not in ACTIVATIONS:
                raise ValueError(
                    f"{key} '{getattr(self, key)}' is not supported; expected one of {sorted(ACTIVATIONS)}"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{self.num_conv_pos_embedding_groups}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}")


def frame_stride(config: Wav2Vec2Config) -> int:
    """Samples between the starts of consecutive frames: the product of the conv strides."""
    return math.prod(config.conv_stride)


def receptive_field(config: Wav2Vec2Config) -> int:
    """Samples one frame sees: frame t is computed from samples [t * stride, t * stride + receptive_field)."""
    field = 1
    for kernel, stride in zip(reversed(config.conv_kernel), reversed(config.conv_stride), strict=True):
        field = (field - 1) * stride + kernel
    return field


def num_frames(config: Wav2Vec2Config, samples: int) -> int:
    """Frames the conv encoder makes of `samples` samples (0 when it is shorter than one receptive field)."""
    n = samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        if n < kernel:
            return 0
        n = (n - kernel) // stride + 1
    return n


def normalize_audio(audio: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance over the last axis, as `Wav2Vec2FeatureExtractor(do_normalize=True)`.

    (x - mean) / sqrt(var + 1e-7), population variance; computed in float64 and returned in the input's dtype.
    """
    x = audio.double()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + 1e-7)).to(audio.dtype)


class ConvLayer(nn.Module):
    """Conv1d, an optional norm ("group": per-channel GroupNorm; "layer": LayerNorm over channels), activation."""

    def __init__(self, config: Wav2Vec2Config, index: int, norm: str | None):
        super().__init__()
        c_in = config.conv_dim[index - 1] if index > 0 else 1
        c_out = config.conv_dim[index]
        self.conv = nn.Conv1d(
            c_in, c_out, config.conv_kernel[index], stride=config.conv_stride[index], bias=config.conv_bias
        )
        self.norm = norm
        # transformers builds both norms with their default eps, not config.layer_norm_eps
        if norm == "group":
            self.layer_norm: nn.Module = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out)
        self.activation = ACTIVATIONS[config.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    """The conv stack: (B, samples) -> (B, channels, frames)."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        if config.feat_extract_norm == "group":
            norms: list[str | None] = ["group"] + [None] * (len(config.conv_dim) - 1)
        else:
            norms = ["layer"] * len(config.conv_dim)
        self.conv_layers = nn.ModuleList(ConvLayer(config, i, norm) for i, norm in enumerate(norms))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time ("same" padding, the last frame dropped for an even kernel), then the activation.

    The checkpoint's weight norm (over dim=2) is folded into `conv.weight` at load.
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        k = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.remove = 1 if k % 2 == 0 else 0
        self.activation = ACTIVATIONS[config.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.transpose(1, 2))
        if self.remove:
            x = x[:, :, : -self.remove]
        return self.activation(x).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        h = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = h // self.heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(h, h)
        self.k_proj = nn.Linear(h, h)
        self.v_proj = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.activation(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-norm (`Wav2Vec2EncoderLayer`) or pre-norm (`Wav2Vec2EncoderLayerStableLayerNorm`)."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.attention = Attention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional conv added, then the layers; the LayerNorm comes first (post-norm) or last (pre-norm layout)."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv_embed(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x) if self.pre_norm else x


class Wav2Vec2CTC(nn.Module):
    """`Wav2Vec2ForCTC` for inference: normalised 16 kHz audio (B, samples) -> logits (B, frames, vocab)."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        """`input_values`: (B, samples) of equal lengths, already normalised when the checkpoint asks for it."""
        if input_values.dim() != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {tuple(input_values.shape)}")
        if num_frames(self.config, input_values.shape[1]) < 1:
            raise ValueError(
                f"{input_values.shape[1]} samples make no frame; the model needs at least "
                f"{receptive_field(self.config)}"
            )
        x = self.feature_extractor(input_values).transpose(1, 2)
        x = self.encoder(self.feature_projection(x))
        return self.lm_head(x)
