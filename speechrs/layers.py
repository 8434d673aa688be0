"""Shared leaf functions: RoPE tables and rotation, attention over a static KV cache.

Axes: B batch, T query positions, S key positions, H heads, K kv heads, E head dim.
"""
import torch
import torch.nn.functional as F
from torch import nn


def rope_table(head_dim: int, theta: float, max_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (max_len, head_dim/2), computed in float32 as Llama/Mistral do."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.arange(max_len, dtype=torch.int64, device=device).float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]): Mistral's native layout. x: (B, H, T, E); cos/sin: (T, E/2)."""
    x_pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, T, E/2, 2)
    x0, x1 = x_pairs[..., 0], x_pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


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
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.type_as(x)
