"""Shared leaf functions: RoPE tables and rotation, attention over a static KV cache.

Axes: B batch, T query positions, S key positions, H heads, K kv heads, E head dim.
"""
import torch
import torch.nn.functional as F
from torch import nn


def rope_table(head_dim: int, theta: float, max_len: int, device=None) -> torch.Tensor:
    """Unit rotations e^(i * pos * freq) of shape (max_len, head_dim/2), complex64, angles in float32 as
    Llama/Mistral compute them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.arange(max_len, dtype=torch.int64, device=device).float()[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope_interleaved(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) as complex numbers: Mistral's native layout.

    x: (B, H, T, E); rot: (T, E/2) complex. One complex multiply instead of six real ops.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, E/2)
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Static preallocated cache (B, K, max_len, E), written at explicit positions (gpt-fast style)."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, K, T, E) at [start, start+T) and return views of everything written so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: position {end} > capacity {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention of q (B, H, T, E) at positions [start, start+T) over k/v (B, K, S, E), S = start+T.

    K may divide H (GQA). A single query needs no mask; a prefill from 0 is plain causal.
    """
    n_q, n_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if n_q == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if start == 0 and n_q == n_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    q_pos = torch.arange(start, start + n_q, device=q.device)[:, None]
    mask = torch.arange(n_k, device=q.device)[None, :] <= q_pos  # (T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class RMSNorm(nn.Module):
    """Computed in float32 and cast back before the gain, as Mistral and Llama do."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x)


def rope_half_table(head_dim: int, min_timescale: float, max_timescale: float, positions: torch.Tensor):
    """cos/sin (T, E) for half-split RoPE: angle_i = pos / (min * (max/min)^(2i/E)), repeated over both halves."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (min_timescale * (max_timescale / min_timescale) ** exponent)
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the halves [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] (Dia, Llama-HF). x: (B, H, T, E)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).type_as(x)
