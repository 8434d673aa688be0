"""Voxtral-Mini-3B-2507 in pure torch, with Mistral's native parameter names.

Axes: B batch, T positions, D model dim, H heads, K kv heads, E head dim, M mel bins, F mel frames,
N audio chunks, A audio tokens, V vocab.
Sources: transformers models/voxtral (encoder = Whisper encoder, projector), mistral-common (names).
"""

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from speechrs.layers import (
    KVCache,
    RequestRows,
    RMSNorm,
    apply_rope_interleaved,
    attend,
    cache_dtype,
    checkpoint_embedding,
    rope_table,
    rows_per_request,
    sdpa,
)
from speechrs.linear.base import ProbedBatching
from speechrs.linear.prepare import Linears, prepare_linears
from speechrs.voxtral.config import EncoderConfig, VoxtralConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional embedding, (length, channels): [sin | cos]."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2).float())
    scaled = torch.arange(length).float()[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class EncoderAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        inner = cfg.n_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.dim, inner, bias=True)
        self.wk = nn.Linear(cfg.dim, inner, bias=False)  # Whisper's k_proj has no bias
        self.wv = nn.Linear(cfg.dim, inner, bias=True)
        self.wo = nn.Linear(inner, cfg.dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            w(x).unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )  # (N, H, F, E)
        out = sdpa(q, k, v)  # non-causal, scale E^-0.5
        return self.wo(out.transpose(1, 2).flatten(2))


class EncoderFeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=True)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = EncoderAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = EncoderFeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class EncoderTransformer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


class WhisperEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.conv_layers = nn.ModuleList(
            [
                nn.Conv1d(cfg.num_mel_bins, cfg.dim, kernel_size=3, padding=1),
                nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1),
            ]
        )
        self.transformer = EncoderTransformer(cfg)
        # not stored in either checkpoint layout's canonical form; filled by prepare()
        self.register_buffer("embed_positions", torch.empty(0), persistent=False)

    def forward(self, mel_NxMxF: torch.Tensor) -> torch.Tensor:
        """mel (N, M, 3000) -> hidden states (N, 1500, D)."""
        expected = self.cfg.max_source_positions * 2
        if mel_NxMxF.shape[-1] != expected:
            raise ValueError(f"encoder expects {expected} mel frames per chunk, got {mel_NxMxF.shape[-1]}")
        x = mel_NxMxF.to(self.conv_layers[0].weight.dtype)
        x = F.gelu(self.conv_layers[0](x))
        x = F.gelu(self.conv_layers[1](x)).transpose(1, 2)  # (N, 1500, D)
        x = x + self.embed_positions.to(x.dtype)
        for layer in self.transformer.layers:
            x = layer(x)
        return self.transformer.norm(x)


class AudioEmbeddings(nn.Module):
    """Native `mm_whisper_embeddings`: the encoder and the frame-stacking adapter."""

    def __init__(self, cfg: VoxtralConfig):
        super().__init__()
        self.downsample_factor = cfg.downsample_factor
        self.whisper_encoder = WhisperEncoder(cfg.encoder)
        self.audio_language_projection = nn.Sequential(
            nn.Linear(cfg.adapter_in_dim, cfg.dim, bias=False), nn.GELU(), nn.Linear(cfg.dim, cfg.dim, bias=False)
        )

    def forward(self, mel_NxMxF: torch.Tensor) -> torch.Tensor:
        """mel (N, M, 3000) -> audio token embeddings (N * 375, D), chunk-major."""
        hidden = self.whisper_encoder(mel_NxMxF)  # (N, 1500, De)
        stacked = hidden.reshape(-1, hidden.shape[-1] * self.downsample_factor)  # (A, 4 * De)
        return self.audio_language_projection(stacked)


class Attention(nn.Module):
    def __init__(self, cfg: VoxtralConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.wqkv = None  # [wq; wk; wv], one Linear made by Voxtral.prepare()

    def forward(self, x, parts: list[tuple[int, torch.Tensor, KVCache]]) -> torch.Tensor:
        """x (B, T, D); parts: per request, in row order, (start, its RoPE rotations, its cache for this layer)."""
        H, K, E = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.wqkv(x).split([H * E, K * E, K * E], dim=-1)  # one matmul for every request's rows
        q = q.unflatten(-1, (H, E)).transpose(1, 2)  # (B, H, T, E)
        k = k.unflatten(-1, (K, E)).transpose(1, 2)  # (B, K, T, E)
        v = v.unflatten(-1, (K, E)).transpose(1, 2)
        n = x.shape[0] // len(parts)
        outs = []
        for i, (start, rot, cache) in enumerate(parts):  # each request as alone: its positions, its cache
            rows = slice(i * n, (i + 1) * n)
            qi, ki = apply_rope_interleaved(q[rows], rot), apply_rope_interleaved(k[rows], rot)
            ki, vi = cache.update(start, ki, v[rows])
            outs.append(attend(qi, ki, vi, start))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return self.wo(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, cfg: VoxtralConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)  # up
        self.w13 = None  # [w1; w3], one Linear made by Voxtral.prepare()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: VoxtralConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, parts: list[tuple[int, torch.Tensor, KVCache]]) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), parts)
        return x + self.feed_forward(self.ffn_norm(x))


class Voxtral(ProbedBatching, nn.Module):
    # the Linears prepare() quantizes (canonical names, before fusing): what `speechrs quantize` stores as codes
    QUANTIZED = re.compile(r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])|output")

    # ...and those it quantizes to int8 whatever was asked: the audio encoder's and the adapter's, which multiply
    # 1500 / 375 rows per chunk (compute-bound: int4 would gain no speed there, only error), in half the memory
    QUANTIZED_INT8 = re.compile(
        r"mm_whisper_embeddings\.(whisper_encoder\.transformer\.layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[12])"
        r"|audio_language_projection\.[02])"
    )
    ALWAYS_INT8 = "the audio encoder"  # QUANTIZED_INT8, in the load line

    @classmethod
    def quantized_kind(cls, name: str, kind: str) -> str | None:
        """What `name` (a Linear's canonical name, before fusing) is quantized to when `kind` is asked; None if
        it stays float."""
        if cls.QUANTIZED_INT8.fullmatch(name):
            return "int8"
        return kind if cls.QUANTIZED.fullmatch(name) else None

    def __init__(self, cfg: VoxtralConfig):
        super().__init__()
        self.cfg = cfg
        self.mm_whisper_embeddings = AudioEmbeddings(cfg)
        self.tok_embeddings = checkpoint_embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.caches: list[KVCache] = []
        self._rope_len = 0

    def prepare(self, after_layer=lambda: None, quantize: str | None = None, release=None) -> None:
        """Call once the weights are real (meta -> loaded): the audio encoder's fixed positions, then the Linears
        made what this machine runs (linear/prepare.py: the decoder's and the output head `quantize`d, the audio
        encoder's and adapter's int8 with it; else packed or fused), then the batching probe."""
        enc = self.cfg.encoder
        device = self.tok_embeddings.weight.device
        audio = self.mm_whisper_embeddings
        audio.whisper_encoder.embed_positions = sinusoids(enc.max_source_positions, enc.dim).to(device)
        encoder: list[list[Linears]] = [  # QUANTIZED_INT8
            [Linears(layer.attention, alone=["wq", "wk", "wv", "wo"]), Linears(layer.feed_forward, alone=["w1", "w2"])]
            for layer in audio.whisper_encoder.transformer.layers
        ]
        encoder.append([Linears(audio.audio_language_projection, alone=["0", "2"])])
        decoder = [  # QUANTIZED
            [
                Linears(layer.attention, fused={"wqkv": ["wq", "wk", "wv"]}, alone=["wo"]),
                Linears(layer.feed_forward, fused={"w13": ["w1", "w3"]}, alone=["w2"]),
            ]
            for layer in self.layers
        ]
        prepare_linears(self, encoder, decoder, "output", quantize, self.tok_embeddings.weight, after_layer, release)
        first, p = self.layers[0], self.tok_embeddings.weight
        linears = [first.attention.wqkv, first.attention.wo, first.feed_forward.w13, first.feed_forward.w2, self.output]
        self.probe_batching(linears, 1, p.dtype, p.device)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        """One request's KV cache, a KVCache per layer for `batch` rows and max_len tokens (it grows if a request
        goes further); the RoPE table is made long enough too."""
        p = self.tok_embeddings.weight
        self._ensure_rope(max_len)
        return [
            KVCache(batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, cache_dtype(p), p.device)
            for _ in self.layers
        ]

    def setup_caches(self, batch: int, max_len: int) -> None:
        """The model's own cache, for `forward` (tests, benchmarks): pipelines hold one per request instead."""
        self.caches = self.new_caches(batch, max_len)

    def _ensure_rope(self, length: int) -> None:
        if self._rope_len < length:
            self._rope_len = max(length, 2 * self._rope_len)
            self.rope = rope_table(
                self.cfg.head_dim, self.cfg.rope_theta, self._rope_len, self.tok_embeddings.weight.device
            )

    def encode_audio(self, mel_NxMxF: torch.Tensor) -> torch.Tensor:
        return self.mm_whisper_embeddings(mel_NxMxF)

    def embed(self, ids_BxT: torch.Tensor, audio_embeds_AxD: torch.Tensor | None, audio_token_id: int):
        """Token embeddings with the audio embeddings scattered onto the [AUDIO] positions, in order."""
        x = self.tok_embeddings(ids_BxT)  # (B, T, D)
        if audio_embeds_AxD is not None:
            mask = (ids_BxT == audio_token_id).unsqueeze(-1)
            x = x.masked_scatter(mask, audio_embeds_AxD.to(x.dtype))
        return x

    def forward(self, x_BxTxD: torch.Tensor, start: int, last_only: bool = True) -> torch.Tensor:
        """Run the decoder on embeddings at positions [start, start+T) with the model's own cache (setup_caches)
        -> logits (B, 1 or T, V) in float32."""
        return self.forward_rows(x_BxTxD, [RequestRows(start, self.caches)], last_only)

    def forward_rows(self, x_BxTxD: torch.Tensor, segments: list[RequestRows], last_only: bool = True) -> torch.Tensor:
        """The decoder over several requests at once: x's rows split evenly between `segments` in order, each at
        its own positions [start, start+T) with its own cache -> logits (B, 1 or T, V) in float32."""
        T = x_BxTxD.shape[1]
        n = rows_per_request(x_BxTxD, segments)
        if len(segments) > 1 and not self.batch_invariant:  # these kernels would change a request's bits: one each
            return torch.cat(
                [self.forward_rows(x_BxTxD[i * n : (i + 1) * n], [s], last_only) for i, s in enumerate(segments)]
            )
        self._ensure_rope(max(s.start for s in segments) + T)
        rots = [self.rope[s.start : s.start + T] for s in segments]
        x = x_BxTxD
        for i, layer in enumerate(self.layers):
            x = layer(x, [(s.start, rot, s.caches[i]) for s, rot in zip(segments, rots, strict=True)])
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()
